"""The binary kind: 1-bit weights, ``sign(w) * mean|w|`` per row (XTC / BinaryBERT)."""

from __future__ import annotations

import torch

from .base import register_quantizer
from .ops import fp16_values, row_mean
from .rowscale import RowLevelQuantizer

__all__ = ["BinaryQuantizer"]


@register_quantizer
class BinaryQuantizer(RowLevelQuantizer):
    """1-bit weights: ``sign(w) * mean|w|`` per row, with ``sign(0) = +1`` (XTC / BinaryBERT).

    Codes: 1 for ``w >= 0`` (+a), 0 for ``w < 0`` (-a); a value is ``(2 * code - 1) * scale``.
    Cannot represent 0 (see ``represents_zero``).

    Example:
        >>> BinaryQuantizer()(torch.tensor([[1.0, -3.0, 0.0, 2.0]]))
        tensor([[ 1.5000, -1.5000,  1.5000,  1.5000]])
    """

    kind = "binary"
    represents_zero = False
    bits = 1
    recipe_bits = (1, 1, 1)

    @classmethod
    def levels_scales(cls, w):
        scales = fp16_values(row_mean(w.abs()))  # (rows, 1)
        # sign with sign(0) = +1: ``w + 0.0`` turns -0.0 into +0.0, copysign takes the sign bit.
        # (Float-only ops: on CPU, comparisons to bool and torch.where are 4-8x slower.)
        return torch.copysign(torch.ones((), dtype=w.dtype, device=w.device), w + 0.0), scales

    def to_codes(self, levels):
        return (levels + 1.0) * 0.5

    def to_levels(self, codes):
        return codes * 2.0 - 1.0
