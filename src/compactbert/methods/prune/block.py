"""Block pruning: whole blocks of each weight matrix, scored by their norm."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ...registry import register_method
from .magnitude import UnitPruning


@register_method("block_pruning")
class BlockPruning(UnitPruning):
    """Prune whole blocks of each weight matrix, scored by the block's L2 (or L1) norm.

    Recipe keys: as ``magnitude_pruning`` (``sparsity`` is the fraction of blocks), plus
        block: ``[rows, cols]`` of a block in the ``(out_features, in_features)`` weight; default
            ``[4, 1]`` (4 output rows of one input column).
        norm: ``l2`` (default) or ``l1``.
    """

    type: Literal["block_pruning"] = "block_pruning"
    block: tuple[int, int] = (4, 1)
    norm: Literal["l2", "l1"] = "l2"

    @model_validator(mode="after")
    def _check_block(self) -> "BlockPruning":
        if self.sparsity is None:
            raise ValueError("'sparsity' is required (the final fraction of zero blocks, e.g. 0.8)")
        if min(self.block) < 1:
            raise ValueError(f"block {list(self.block)} must be two positive sizes [rows, cols]")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} is above sparsity {self.sparsity}")
        return self

    def _block(self) -> tuple[int, int]:
        return tuple(self.block)  # type: ignore[return-value]

    def _norm(self) -> str:
        return self.norm
