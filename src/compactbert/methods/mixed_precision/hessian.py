"""HAWQ-style allocation: one width per group of output rows from Hessian traces, under a byte budget.

Sensitivity of group ``g`` (``n_g`` weights) at width ``b``::

    Omega_g(b) = Tr(H_g) / n_g * ||W_g - Q_b(W_g)||^2        Q_0(W) = 0, Q_b: per-row asymmetric

``Tr(H_g)`` (the trace of the task loss's Hessian block of the group's weights) is estimated by
Hutchinson's method: for Rademacher ``v`` over all targeted weights, ``E[v^T H v] = Tr(H)``, and
one Hessian-vector product ``Hv`` (two ``torch.autograd.grad`` passes) gives every group's
estimate at once: ``sum_{i in g} v_i (Hv)_i``. The widths then minimise ``sum_g Omega_g(b_g)``
under the budget: the multiple-choice knapsack, solved exactly (:func:`~.knapsack.solve_mckp`).

Method :class:`HessianAllocation` (recipe ``type: hessian_allocation``): at ``attach`` every target
gets a :class:`~compactbert.nn.quant.GroupBitsQuantizer` at the widest candidate; over the first
``batches`` steps it estimates the traces on each step's training batch (before the step, on the
float weights, dropout off), then solves the knapsack and sets the widths, which stay fixed for the
rest of the run (QAT + the stage's distillation). The widths are buffers of the quantizers, so a
resumed run keeps them. Negative trace estimates (noise, or a non-convex direction) count as 0.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from pydantic import Field, PrivateAttr

from ...errors import UserError
from ...nn.quant import asym_fake_quant
from ...registry import register_method
from ..base import TrainState
from .common import FIT_TOLERANCE, GroupBudgetMethod, install_widths, mean_over_processes, task_loss_mean
from .knapsack import solve_mckp

__all__ = ["hutchinson_group_traces", "group_sensitivity", "HessianAllocation"]


def hutchinson_group_traces(
    loss: torch.Tensor,
    weights: Sequence[torch.Tensor],
    row_group_size: int,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Hutchinson estimates of the Hessian trace of every row group of every weight.

    Args:
        loss: a scalar computed from ``weights`` (its graph is kept until the last sample).
        weights: 2-D tensors requiring grad, ``(rows, cols)`` each.
        row_group_size: rows per group (divides every weight's rows).
        samples: Rademacher vectors averaged.
        generator: random source of the vectors (on the weights' device).

    Returns:
        Per weight, a ``(rows // row_group_size,)`` float64 tensor: ``mean_v sum_{i in g} v_i (Hv)_i``.
    """
    grads = torch.autograd.grad(loss, list(weights), create_graph=True)
    out = [torch.zeros(w.shape[0] // row_group_size, dtype=torch.float64, device=w.device) for w in weights]
    for s in range(samples):
        vs = [torch.randint(0, 2, w.shape, generator=generator, device=w.device).to(w.dtype) * 2 - 1 for w in weights]
        hvs = torch.autograd.grad(grads, list(weights), grad_outputs=vs, retain_graph=s < samples - 1)
        for acc, v, hv in zip(out, vs, hvs):
            per_row = (v * hv).double().sum(dim=1)  # (rows,)
            acc += per_row.reshape(-1, row_group_size).sum(dim=1) / samples
    return out


def group_sensitivity(w: torch.Tensor, traces: torch.Tensor, row_group_size: int, widths: Sequence[int]) -> np.ndarray:
    """``Omega[g, k] = max(Tr(H_g), 0) / n_g * ||W_g - Q_{widths[k]}(W_g)||^2`` for one weight:
    ``(groups, len(widths))`` float64."""
    w = w.detach().float()
    rows, cols = w.shape
    n_g = row_group_size * cols
    cols_out = []
    for b in widths:
        err = (w - asym_fake_quant(w, b)).double().pow(2).sum(dim=1)  # (rows,)
        cols_out.append(err.reshape(rows // row_group_size, row_group_size).sum(dim=1))
    sq = torch.stack(cols_out, dim=1)  # (groups, widths)
    return (traces.double().clamp_min(0.0)[:, None] / n_g * sq).cpu().numpy()


@contextmanager
def float_weights(layers: dict[str, Any]) -> Iterator[None]:
    """Inside: the layers' weight quantizers are out of their slots (float weights)."""
    saved = {name: layer.weight_quantizer for name, layer in layers.items()}
    for layer in layers.values():
        layer.weight_quantizer = None
    try:
        yield
    finally:
        for name, layer in layers.items():
            layer.weight_quantizer = saved[name]


@contextmanager
def eager_eval(model: torch.nn.Module) -> Iterator[None]:
    """Inside: eval mode (no dropout) and eager attention (SDPA kernels lack double backward)."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    was_training = model.training
    if impl not in (None, "eager"):
        cfg._attn_implementation = "eager"
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if impl not in (None, "eager"):
            cfg._attn_implementation = impl


@register_method("hessian_allocation")
class HessianAllocation(GroupBudgetMethod):
    """Hessian-trace sensitivity + exact knapsack allocation of per-group widths (module docstring).

    Recipe keys (besides budget, candidates, row_group_size, targets):
        batches: training batches the traces are averaged over (the run's first steps).
        samples: Rademacher vectors per batch.
        seed: seed of the Rademacher vectors.
    """

    type: Literal["hessian_allocation"] = "hessian_allocation"
    batches: int = Field(4, ge=1)
    samples: int = Field(2, ge=1)
    seed: int = 0

    _layers: dict[str, Any] = PrivateAttr(default_factory=dict)
    _table: Any = PrivateAttr(default=None)
    _target: float = PrivateAttr(default=0.0)
    _traces: list | None = PrivateAttr(default=None)
    _seen: int = PrivateAttr(default=0)
    _generator: Any = PrivateAttr(default=None)

    def describe(self) -> str:
        return (f"{self.type}: Hessian-trace (Hutchinson, {self.batches} batches x {self.samples} vectors) "
                f"sensitivities + exact knapsack, {self.describe_budget()}")

    def _attach(self, state: TrainState) -> None:
        layers, table, target = self.resolve(state)
        widest = max(self.candidates)
        choice = np.full(table.n_groups, self.candidates.index(widest))
        install_widths(layers, table, choice)  # until the allocation: every group at the widest width
        self._layers, self._table, self._target = layers, table, target
        self._generator = torch.Generator(device=state.device).manual_seed(self.seed)

    def _on_step(self, state: TrainState) -> None:
        last = min(self.batches, state.total_steps) - 1
        if state.step > last or state.batch is None:
            return
        self.accumulate(state.model, state.batch, state.task)
        if state.step == last:
            bits = self.allocate()
            state.extras["hessian/final_bytes"] = self._table.bytes_of(self._choice(bits))
            state.extras["hessian/budget_bytes"] = self._target

    def accumulate(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task: Any) -> None:
        """Add one batch's Hutchinson estimates (float weights, eval mode) to the running traces."""
        weights = [layer.weight for layer in self._layers.values()]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with float_weights(self._layers), eager_eval(model), torch.autocast(weights[0].device.type, enabled=False):
            loss = task_loss_mean(model(**inputs).logits, batch["labels"], task)
            traces = hutchinson_group_traces(loss, weights, self.row_group_size, self.samples, self._generator)
        traces = mean_over_processes(traces)
        if self._traces is None:
            self._traces = traces
        else:
            self._traces = [a + t for a, t in zip(self._traces, traces)]
        self._seen += 1

    def sensitivities(self) -> np.ndarray:
        """``(groups, candidates)`` Omega of every group, from the traces accumulated so far."""
        if self._traces is None:
            raise RuntimeError("hessian_allocation: no batch was seen yet")
        blocks = [
            group_sensitivity(layer.weight, tr / self._seen, self.row_group_size, self.candidates)
            for layer, tr in zip(self._layers.values(), self._traces)
        ]
        return np.concatenate(blocks)

    def allocate(self) -> dict[str, list[int]]:
        """Solve the knapsack and set every layer's widths; returns them by layer name."""
        omega, table = self.sensitivities(), self._table
        try:
            choice = solve_mckp(omega, table.costs, self._target, lower=(1 - FIT_TOLERANCE / 2) * self._target)
        except UserError:  # nothing fits the narrow window (a tiny model): the budget alone
            choice = solve_mckp(omega, table.costs, self._target)
        return install_widths(self._layers, table, choice)

    def _choice(self, bits: dict[str, list[int]]) -> np.ndarray:
        flat = [b for name in self._table.names for b in bits[name]]
        return np.asarray([self.candidates.index(b) for b in flat])

