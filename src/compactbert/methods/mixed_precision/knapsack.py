"""The multiple-choice knapsack: one width per group, least total value, bytes within a window.

::

    minimise  sum_g sum_k  value[g, k] * x[g, k]
    subject   sum_k x[g, k] = 1                       for every group g
              lower <= sum_gk bytes[g, k] * x[g, k] <= capacity
              x[g, k] in {0, 1}

solved exactly by ``scipy.optimize.milp`` (HiGHS, zero optimality gap).

Why it is fast: thousands of groups share a few cost rows (every group of a 384 x 384 matrix costs
the same at each width). Groups with the same cost row form a *class*; integer counts
``n[c, k] = sum_{g in c} x[g, k]`` carry the knapsack constraint, and the ``x`` are continuous. For
fixed counts, the ``x`` of a class solve a transportation problem, whose constraint matrix is
totally unimodular: its basic optima are 0/1. So branch and bound only branches on the
``classes x widths`` counts (a handful of variables) and still proves the optimum of the 0/1
problem; the per-group formulation with thousands of binaries does not close its gap in minutes.

The values are shifted per group (subtracting a constant from a group's row changes no choice) and
scaled to [0, 1] first, so HiGHS's absolute tolerances cannot stop it early on tiny numbers
(quantization errors of 1e-9).
"""

from __future__ import annotations

import warnings

import numpy as np

from ...errors import UserError

__all__ = ["solve_mckp"]


def _normalised(values: np.ndarray) -> np.ndarray:
    v = values - values.min(axis=1, keepdims=True)
    top = float(v.max()) if v.size else 0.0
    return v / top if top > 0 else v


def _constraints(costs: np.ndarray, capacity: float, lower: float | None):
    """(LinearConstraint, integrality, upper bounds) of the class formulation."""
    from scipy.optimize import LinearConstraint
    from scipy.sparse import csr_matrix, hstack, identity, vstack

    g, k = costs.shape
    classes, cls = np.unique(costs, axis=0, return_inverse=True)
    cls = np.asarray(cls).ravel()
    nx, nn = g * k, len(classes) * k
    group_of = np.repeat(np.arange(g), k)
    one_each = csr_matrix((np.ones(nx), (group_of, np.arange(nx))), shape=(g, nx + nn))
    count_row = cls[group_of] * k + np.tile(np.arange(k), g)  # n[c, k] row of each x[g, k]
    link = hstack([csr_matrix((-np.ones(nx), (count_row, np.arange(nx))), shape=(nn, nx)), identity(nn, format="csr")])
    knap = csr_matrix(np.concatenate([np.zeros(nx), classes.ravel()]).reshape(1, -1))
    lo = -np.inf if lower is None else float(lower)
    constraint = LinearConstraint(
        vstack([one_each, link, knap]).tocsr(),
        np.concatenate([np.ones(g), np.zeros(nn), [lo]]),
        np.concatenate([np.ones(g), np.zeros(nn), [float(capacity)]]),
    )
    sizes = np.bincount(cls, minlength=len(classes))
    upper = np.concatenate([np.ones(nx), np.repeat(sizes, k)])
    integrality = np.concatenate([np.zeros(nx), np.ones(nn)])
    return constraint, integrality, upper


def solve_mckp(
    values: np.ndarray,
    costs: np.ndarray,
    capacity: float,
    lower: float | None = None,
    time_limit: float = 300.0,
) -> np.ndarray:
    """The column chosen for each group (``(groups,)`` ints) of the knapsack above.

    Args:
        values: ``(groups, choices)`` to minimise (e.g. a sensitivity, or minus a log-probability).
        costs: ``(groups, choices)`` bytes.
        capacity: the most bytes allowed.
        lower: the fewest bytes allowed (None: no lower bound).
        time_limit: seconds HiGHS may search; past it, the best solution found is used (with a warning).

    Raises:
        UserError: no choice fits between ``lower`` and ``capacity``.
    """
    from scipy.optimize import Bounds, milp

    values = np.asarray(values, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if values.shape != costs.shape or values.ndim != 2:
        raise ValueError(f"values {values.shape} and costs {costs.shape} must both be (groups, choices)")
    g, k = values.shape
    constraint, integrality, upper = _constraints(costs, capacity, lower)
    objective = np.concatenate([_normalised(values).ravel(), np.zeros(len(upper) - g * k)])
    res = milp(objective, constraints=constraint, integrality=integrality, bounds=Bounds(0, upper),
               options={"mip_rel_gap": 0.0, "time_limit": time_limit})
    if res.x is None:
        window = f"{lower:,.0f} to {capacity:,.0f}" if lower is not None else f"at most {capacity:,.0f}"
        raise UserError(
            f"no choice of widths fits {window} bytes (cheapest {costs.min(axis=1).sum():,.0f}, dearest "
            f"{costs.max(axis=1).sum():,.0f} bytes); choose a budget inside that range"
        )
    x = np.asarray(res.x[: g * k]).reshape(g, k)
    if res.status != 0:
        warnings.warn(f"knapsack: HiGHS stopped early ({res.message}); using the best choice found", stacklevel=2)
    elif np.abs(x - np.round(x)).max() > 1e-6:  # a non-basic optimum of a tie: any vertex of it is as good
        warnings.warn("knapsack: the optimum was not 0/1 (a tie); rounding to the largest share", stacklevel=2)
    return x.argmax(axis=1)
