"""What the mixed-precision methods share: recipe keys (candidate widths, budget, row groups,
targets), resolving the targeted matrices into a :class:`~.budget.GroupTable`, installing the
chosen widths, and reading them back from a model or its ``compression.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from ...errors import UserError
from ...nn.quant import GroupBitsQuantizer
from ...nn.surgery import compress_modules, encoder_linear_patterns, match_modules
from ..base import Method, TrainState
from .budget import Budget, GroupTable, check_widths

__all__ = [
    "GroupBudgetMethod", "chosen_widths", "widths_from_spec", "install_widths", "task_loss_mean", "mean_over_processes",
    "FIT_TOLERANCE",
]

#: How far (relative) the final size may be from the budget.
FIT_TOLERANCE = 0.02


class GroupBudgetMethod(Method):
    """Base of the methods that give each group of output rows its own width under a byte budget.

    Recipe keys:
        budget: bytes / megabytes / avg_bits over the targeted weights (see :mod:`.budget`).
        candidates: widths a group may take (0 = pruned group); default ``[0, 2, 4]``.
        row_group_size: consecutive output rows per group; must divide every targeted matrix's rows
            (6 gives MiniLM/BERT 64/128 groups per 384/768-row matrix, AQ-BERT's finest setting).
        targets: module-name patterns; default: every Linear of the encoder layers.
    """

    effects = frozenset({"quantizes_weights", "prunes"})  # 0-bit groups are pruned rows
    budget: Budget
    candidates: list[int] = Field(default_factory=lambda: [0, 2, 4])
    row_group_size: int = Field(6, ge=1)
    targets: list[str] | None = None

    @field_validator("candidates", mode="before")
    @classmethod
    def _widths_ok(cls, v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"candidates {v!r} must be a list of widths, e.g. [0, 2, 4]")
        widths = check_widths(v, "candidates")
        if max(widths) == 0:
            raise ValueError("candidates [0] has no nonzero width; add one, e.g. [0, 2, 4]")
        return list(widths)

    @field_validator("targets")
    @classmethod
    def _targets_ok(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not p.strip() for p in v)):
            raise ValueError("targets is empty or has an empty pattern; give module-name patterns or leave it out")
        return v

    @model_validator(mode="after")
    def _budget_plausible(self) -> "GroupBudgetMethod":
        lo = min(self.candidates)
        if self.budget.unit == "avg_bits" and lo > 0 and self.budget.value < lo:
            raise ValueError(
                f"budget {self.budget.describe()} is smaller than every group at its smallest width ({lo} bits "
                f"+ scales); reachable: at least {lo} avg_bits with candidates {self.candidates} (add 0 to prune groups)"
            )
        return self

    def weight_bits(self) -> int | None:
        """The narrowest nonzero candidate width."""
        return min(b for b in self.candidates if b > 0)

    # -- the targeted matrices ------------------------------------------------------------------
    def resolve(self, state: TrainState) -> tuple[dict[str, nn.Module], GroupTable, float]:
        """(compressed target layers by name, their group table, the budget in bytes).

        Checks everything before changing the model.

        Raises:
            UserError: a pattern matching nothing, a row group size that does not divide a
                matrix's rows (naming it), an unreachable budget (with the reachable range).
        """
        where = f"{self.type}.targets: "  # type: ignore[attr-defined]
        patterns = self.targets or encoder_linear_patterns(state.model)
        found = match_modules(state.model, patterns, where=where)
        shapes = {name: (int(m.weight.shape[0]), int(m.weight.shape[1])) for name, m in found.items()}
        table = GroupTable.build(shapes, self.row_group_size, self.candidates, where=f"{self.type}.row_group_size")  # type: ignore[attr-defined]
        target = table.budget_bytes(self.budget, where=f"{self.type}.budget")  # type: ignore[attr-defined]
        layers = compress_modules(state.model, patterns, where=where)
        return layers, table, target

    def describe_budget(self) -> str:
        return (f"budget {self.budget.describe()} over the targeted weights (codes + scales), groups of "
                f"{self.row_group_size} rows, widths {self.candidates}")


def install_widths(layers: dict[str, nn.Module], table: GroupTable, choice: np.ndarray) -> dict[str, list[int]]:
    """Put a :class:`GroupBitsQuantizer` with the chosen widths in every layer; return the widths."""
    bits = table.split(np.asarray(table.widths)[np.asarray(choice)].tolist())
    for name, layer in layers.items():
        q = layer.weight_quantizer
        if isinstance(q, GroupBitsQuantizer) and q.row_group_size == table.row_group_size:
            q.set_group_bits(bits[name])
        else:
            layer.weight_quantizer = GroupBitsQuantizer(table.row_group_size, bits[name])
    return bits


def chosen_widths(model: nn.Module) -> dict[str, list[int]]:
    """``{layer name: [bits of each row group]}`` of every layer with a GroupBitsQuantizer."""
    out = {}
    for name, mod in model.named_modules():
        q = getattr(mod, "weight_quantizer", None)
        if isinstance(q, GroupBitsQuantizer):
            out[name] = [int(b) for b in q.group_bits.tolist()]
    return out


def widths_from_spec(source: str | Path | dict[str, Any]) -> dict[str, list[int]]:
    """The same from a model folder, its ``compression.json`` path, or the loaded spec dict.

    Raises:
        UserError: the file is missing or not a compression spec, or a group_bits list is malformed.
    """
    spec = source
    if not isinstance(source, dict):
        path = Path(source)
        path = path / "compression.json" if path.is_dir() else path
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            raise UserError(f"{path}: cannot read the compression spec: {e}") from None
    modules = spec.get("modules") if isinstance(spec, dict) else None
    if not isinstance(modules, dict):
        raise UserError(f"{str(source)[:80]!r} is not a compression spec (no 'modules')")
    out = {}
    for name, entry in modules.items():
        q = entry.get("weight_quantizer") if isinstance(entry, dict) else None
        if isinstance(q, dict) and q.get("kind") == GroupBitsQuantizer.kind:
            bits = q.get("group_bits")
            if (not isinstance(bits, list) or not bits
                    or any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 8 for b in bits)):
                raise UserError(f"{str(source)[:80]!r}: modules.{str(name)[:80]}.weight_quantizer.group_bits is "
                                f"{str(bits)[:40]}; valid: a non-empty list of integers 0..8")
            out[name] = list(bits)
    return out


def task_loss_mean(logits: torch.Tensor, labels: torch.Tensor, task: Any) -> torch.Tensor:
    """Mean task loss of a batch: cross-entropy, or MSE for a regression task. logits: (batch, labels)."""
    if getattr(task, "is_regression", False) or logits.shape[-1] == 1:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def mean_over_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The element-wise mean of ``tensors`` over data-parallel processes (themselves with one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [p.reshape(t.shape) for p, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors)]
