"""Byte budgets for per-group mixed precision, and what each weight group costs at each width.

The storage format (:class:`~compactbert.nn.quant.groupbits.GroupBitsQuantizer`): a weight of
``rows x cols`` is split into groups of ``row_group_size`` consecutive output rows; group ``g``
(``n_g = row_group_size * cols`` weights) at ``b`` bits takes::

    n_g * b / 8 bytes of codes  +  row_group_size * 4 bytes of scales (fp16 scale + fp16 zero point
                                                                        per row), when b > 0
    0 bytes                                                              when b = 0 (pruned group)

A **budget** covers the targeted weight matrices only (codes + scales): biases, LayerNorms, the
embeddings and the classifier are outside it and stored as the rest of the recipe says. Units:

* ``bytes``;
* ``megabytes``: 10^6 bytes (SI, as ``compactbert report`` prints sizes);
* ``avg_bits``: average bits per targeted weight, scales included: ``bytes = avg_bits * n / 8``
  for ``n`` targeted weights (a uniform 4-bit model with per-row scales is slightly above 4).

Recipe spellings (all the same budget): ``budget: {avg_bits: 3}``, ``budget: "3 avg_bits"``,
``budget: {value: 3, unit: avg_bits}``.

Example:
    >>> table = GroupTable.build({"q": (12, 8), "ffn": (24, 8)}, row_group_size=6, widths=(0, 2, 4))
    >>> table.costs.shape                     # 2 + 4 groups, 3 widths
    (6, 3)
    >>> float(table.costs[0, 1])              # 48 weights at 2 bits + 6 rows x 4 bytes
    36.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from ...errors import UserError, did_you_mean

__all__ = [
    "UNITS",
    "VALID_WIDTHS",
    "SCALE_BYTES_PER_ROW",
    "Budget",
    "GroupTable",
    "check_widths",
    "group_costs",
    "expected_bytes",
    "band_penalty",
    "format_bytes",
]

UNITS = ("bytes", "megabytes", "avg_bits")
#: Widths a group may take: 0 (pruned) and the asymmetric integer widths of the packed format.
VALID_WIDTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8)
#: fp16 scale + fp16 zero point, per row of a group stored at b > 0 bits.
SCALE_BYTES_PER_ROW = 4
_MEGA = 1_000_000


def format_bytes(n: float) -> str:
    """``1234567.0`` -> ``"1,234,567 bytes (1.23 MB)"``."""
    return f"{n:,.0f} bytes ({n / _MEGA:.3g} MB)"


def check_widths(widths: Sequence[int], where: str = "candidates") -> tuple[int, ...]:
    """Validated, sorted, de-duplicated candidate widths.

    Raises:
        ValueError: an empty set or a width outside :data:`VALID_WIDTHS` (pydantic turns it into
            the recipe's one-line error).
    """
    widths = list(widths)
    if not widths:
        raise ValueError(f"{where} is empty; give at least one width from {list(VALID_WIDTHS)}, e.g. [0, 2, 4]")
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, int) or w not in VALID_WIDTHS]
    if bad:
        raise ValueError(f"{where}: unknown width(s) {bad}; valid widths: {list(VALID_WIDTHS)} (0 = pruned group)")
    return tuple(sorted(set(widths)))


class Budget(BaseModel):
    """A size budget over the targeted weights: ``value`` in ``unit`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float
    unit: Literal["bytes", "megabytes", "avg_bits"]

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            parts = raw.split()
            if len(parts) != 2:
                raise ValueError(f"budget {raw!r} is not '<number> <unit>'; e.g. '3 avg_bits' or '2.5 megabytes'")
            raw = {"value": parts[0], "unit": parts[1]}
        elif isinstance(raw, dict) and len(raw) == 1 and "value" not in raw:
            ((unit, value),) = raw.items()
            raw = {"value": value, "unit": unit}
        if not isinstance(raw, dict):
            raise ValueError(f"budget {raw!r} must be a mapping such as {{avg_bits: 3}} or a string '3 avg_bits'")
        unit = raw.get("unit")
        if unit not in UNITS:
            raise ValueError(f"budget unit {unit!r} is not known{did_you_mean(str(unit), UNITS)}; valid units: {', '.join(UNITS)}")
        try:
            value = float(raw.get("value"))
        except (TypeError, ValueError):
            raise ValueError(f"budget value {raw.get('value')!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"budget value {value!r} {unit} must be a positive number")
        return {"value": value, "unit": unit}

    @model_serializer
    def _one_key(self) -> dict[str, float]:
        return {self.unit: self.value}

    def to_bytes(self, n_weights: int) -> float:
        """The budget in bytes for ``n_weights`` targeted weights."""
        if self.unit == "bytes":
            return self.value
        if self.unit == "megabytes":
            return self.value * _MEGA
        return self.value * n_weights / 8

    def from_bytes(self, nbytes: float, n_weights: int) -> float:
        """``nbytes`` expressed in this budget's unit."""
        return nbytes * self.value / self.to_bytes(n_weights)

    def describe(self) -> str:
        return f"{self.value:g} {self.unit}"


def group_costs(rows: int, cols: int, row_group_size: int, widths: Sequence[int]) -> np.ndarray:
    """Bytes of each group of one ``rows x cols`` matrix at each width: ``(rows // r, len(widths))``."""
    n_groups = rows // row_group_size
    per = [row_group_size * cols * b / 8 + (row_group_size * SCALE_BYTES_PER_ROW if b > 0 else 0) for b in widths]
    return np.tile(np.asarray(per, dtype=np.float64), (n_groups, 1))


@dataclass
class GroupTable:
    """Every weight group of the targeted matrices, in model order, with its cost per width.

    Attributes:
        names: matrix names, in order.
        shapes: ``(rows, cols)`` of each matrix.
        offsets: index of each matrix's first group in the flat group list (len(names) + 1 entries).
        widths: the candidate widths (columns of ``costs``).
        row_group_size: rows per group.
        costs: ``(groups, widths)`` bytes.
    """

    names: list[str]
    shapes: list[tuple[int, int]]
    offsets: list[int]
    widths: tuple[int, ...]
    row_group_size: int
    costs: np.ndarray

    @classmethod
    def build(cls, shapes: dict[str, tuple[int, int]], row_group_size: int, widths: Sequence[int],
              where: str = "row_group_size") -> "GroupTable":
        """The table of ``{name: (rows, cols)}``.

        Raises:
            UserError: ``row_group_size`` does not divide a matrix's rows (the error names it).
        """
        offsets, blocks = [0], []
        for name, (rows, cols) in shapes.items():
            if rows % row_group_size:
                divisors = [d for d in range(1, rows + 1) if rows % d == 0]
                raise UserError(
                    f"{where}={row_group_size} does not divide the {rows} rows of {name} ({rows}x{cols}); "
                    f"valid: a divisor of every targeted matrix's rows, e.g. {', '.join(map(str, divisors[:8]))}"
                )
            blocks.append(group_costs(rows, cols, row_group_size, widths))
            offsets.append(offsets[-1] + rows // row_group_size)
        costs = np.concatenate(blocks) if blocks else np.zeros((0, len(widths)))
        return cls(list(shapes), [tuple(s) for s in shapes.values()], offsets, tuple(widths), row_group_size, costs)

    @property
    def n_weights(self) -> int:
        return sum(r * c for r, c in self.shapes)

    @property
    def n_groups(self) -> int:
        return self.offsets[-1]

    def reachable(self) -> tuple[float, float]:
        """(smallest, largest) bytes: every group at its cheapest, every group at its dearest width."""
        return float(self.costs.min(axis=1).sum()), float(self.costs.max(axis=1).sum())

    def budget_bytes(self, budget: Budget, where: str = "budget") -> float:
        """``budget`` in bytes for these matrices.

        Raises:
            UserError: the budget is outside :meth:`reachable` (the message gives the range in bytes
                and in avg_bits, and in megabytes for a budget in megabytes).
        """
        target = budget.to_bytes(self.n_weights)
        lo, hi = self.reachable()
        if not lo <= target <= hi:
            side = "smaller than every group at its smallest" if target < lo else "larger than every group at its largest"
            n = self.n_weights
            also = "" if budget.unit in ("bytes", "avg_bits") else (
                f" = {budget.from_bytes(lo, n):.4g} to {budget.from_bytes(hi, n):.4g} {budget.unit}")
            given = {"bytes": f"{target * 8 / n:.4g} avg_bits", "avg_bits": f"{target:,.0f} bytes"}.get(
                budget.unit, f"{target:,.0f} bytes = {target * 8 / n:.4g} avg_bits")
            raise UserError(
                f"{where} {budget.describe()} (= {given}) is {side} width; "
                f"reachable with widths {list(self.widths)} over these {n:,} weights: {lo:,.0f} to {hi:,.0f} bytes "
                f"= {lo * 8 / n:.4g} to {hi * 8 / n:.4g} avg_bits{also}"
            )
        return target

    def bytes_of(self, choice: np.ndarray) -> float:
        """Bytes when group ``g`` takes width column ``choice[g]``."""
        return float(self.costs[np.arange(self.n_groups), np.asarray(choice)].sum())

    def split(self, flat: Sequence[Any] | np.ndarray) -> dict[str, list]:
        """A flat per-group sequence cut into one list per matrix."""
        return {n: list(flat[self.offsets[i]:self.offsets[i + 1]]) for i, n in enumerate(self.names)}


def expected_bytes(probs: Sequence[torch.Tensor], costs: Sequence[torch.Tensor]) -> torch.Tensor:
    """E[C] = sum over matrices, groups g and widths b of ``p_gb * cost_gb``.

    Args:
        probs: per matrix, ``(groups, widths)`` choice probabilities.
        costs: per matrix, ``(groups, widths)`` bytes (same shapes).
    """
    return sum((p * c.to(p.dtype)).sum() for p, c in zip(probs, costs))  # type: ignore[return-value]


def band_penalty(expected: torch.Tensor, target: float, eps: float) -> torch.Tensor:
    """AQ-BERT's size loss: ``log E[C]`` above ``(1 + eps) * target``, ``-log E[C]`` below
    ``(1 - eps) * target``, 0 inside the band (a tensor, differentiable in ``expected``)."""
    if expected > (1 + eps) * target:
        return torch.log(expected)
    if expected < (1 - eps) * target:
        return -torch.log(expected)
    return expected * 0.0
