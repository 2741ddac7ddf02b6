"""Shared parts of the binary and ternary kinds: one scale per row, each value ``level * scale``
with ``level`` in {-1, (0,) +1}, stored as the code ``level + offset``."""

from __future__ import annotations

import abc
from typing import Any

import torch

from .codes import Codes
from .base import WeightQuantizer
from .ops import StraightThrough, rows_cols, run_compiled

__all__ = ["RowLevelQuantizer"]


class RowLevelQuantizer(WeightQuantizer):
    """Base of binary and ternary. Subclasses implement ``levels_scales(w)`` -> (levels (rows, cols),
    fp16-valued scales (rows, 1)) and the level <-> code maps."""

    @property
    def row_local(self) -> bool:
        return True

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    @abc.abstractmethod
    def levels_scales(cls, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels (rows, cols) in {-1, (0,) +1}, fp16-valued scales (rows, 1)) of a 2-D weight."""

    @abc.abstractmethod
    def to_codes(self, levels: torch.Tensor) -> torch.Tensor:
        """Stored codes of levels."""

    @abc.abstractmethod
    def to_levels(self, codes: torch.Tensor) -> torch.Tensor:
        """Levels of stored codes (float32 in, float32 out: small exact integers)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(w, self._fake)

    def _fake(self, w: torch.Tensor) -> torch.Tensor:
        rows, cols = rows_cols(w.shape)
        out = run_compiled(type(self).fake_2d, self.compiled, w.float().reshape(rows, cols))
        return out.reshape(w.shape).to(w.dtype)

    @classmethod
    def fake_2d(cls, w: torch.Tensor) -> torch.Tensor:
        """Fake-quantized values of a 2-D float32 weight (a plain function: compilable)."""
        levels, scales = cls.levels_scales(w)  # (rows, cols), (rows, 1)
        return levels.mul_(scales)

    def quantize_ints(self, w):
        rows, cols = rows_cols(w.shape)
        with torch.no_grad():
            levels, scales = self.levels_scales(w.detach().float().reshape(rows, cols))
        return self.to_codes(levels).to(torch.uint8).reshape(w.shape), scales.reshape(rows), None

    def dequantize(self, ints, scales, zero_points, shape):
        rows, cols = rows_cols(shape)
        levels = self.to_levels(ints.reshape(rows, cols).float())  # small exact integers
        return (levels * scales.float().reshape(rows, 1)).reshape(shape)

    def decode_values(self, stored, params):
        return self.to_levels(stored) * params["scales"]

    def int_levels(self, codes: Codes) -> torch.Tensor:
        return self.to_levels(codes.stored.to(torch.float32)).to(torch.int64)
