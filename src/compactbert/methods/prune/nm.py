"""N:M semi-structured sparsity (2:4 runs on sparse tensor cores)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PrivateAttr, model_validator

from ...errors import UserError
from ...nn.compressed import CompressedLinear
from ...registry import register_method
from ..base import Method, TrainState
from .masks import bool_mask, ensure_mask, reapply_masks, set_mask, target_layers
from .schedule import Point, resolve_point


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights of every ``m`` consecutive inputs of each row.

    Args:
        weight: (out_features, in_features), ``in_features`` divisible by ``m``.

    Returns:
        Bool mask of the weight's shape with exactly ``n`` ones per group (ties: the first ones).
    """
    r, c = weight.shape
    groups = weight.detach().abs().reshape(r, c // m, m)  # (rows, groups, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(r, c)


@register_method("nm_pruning")
class NMPruning(Method):
    """N:M semi-structured sparsity along the input dimension (2:4 runs on sparse tensor cores).

    Recipe keys:
        n, m: keep ``n`` of every ``m`` consecutive input weights of each output row (default 2:4).
        start: the step at which the pattern is chosen by magnitude (whole number = step, decimal =
            fraction of the stage; default 0, before the first step). The pattern is then fixed.
        targets: module-name patterns; default every Linear inside the encoder layers.
    """

    effects = frozenset({"prunes"})

    type: Literal["nm_pruning"] = "nm_pruning"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    start: Point = Field(0, ge=0)
    targets: list[str] | None = None

    _layers: dict[str, CompressedLinear] = PrivateAttr(default_factory=dict)
    _t0: int = PrivateAttr(0)
    _done: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _check_nm(self) -> "NMPruning":
        if self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m}), e.g. n: 2, m: 4")
        if isinstance(self.start, float) and self.start > 1.0:
            raise ValueError(f"start={self.start} is a fraction of the stage and must be in [0, 1]")
        return self

    def _attach(self, state: TrainState) -> None:
        self._layers = target_layers(state.model, self.targets, "nm_pruning.targets: ")
        for name, layer in self._layers.items():
            if layer.in_features % self.m:
                raise UserError(
                    f"nm_pruning: {name} has {layer.in_features} inputs, not a multiple of m={self.m}; "
                    "leave it out of targets or choose another m"
                )
            ensure_mask(layer)
        t0 = resolve_point(self.start, state.total_steps)
        self._t0 = min(t0, state.total_steps - 1) if state.total_steps > 0 else t0

    def _apply(self) -> None:
        for layer in self._layers.values():
            set_mask(layer, nm_mask(layer.weight * bool_mask(layer), self.n, self.m) & bool_mask(layer))
        self._done = True

    def _on_step(self, state: TrainState) -> None:
        # Re-choosing on a resumed run gives the same pattern: pruned weights are 0, kept ones larger.
        if not self._done and state.step >= self._t0:
            self._apply()

    def _after_step(self, state: TrainState) -> None:
        reapply_masks(self._layers.values())

    def _finalize(self, state: TrainState) -> None:
        if not self._done:
            self._apply()
        reapply_masks(self._layers.values())
