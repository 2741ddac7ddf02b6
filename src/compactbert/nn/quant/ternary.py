"""The ternary kind: 2-bit weights {-a, 0, +a} per row (TWN threshold, XTC's W2)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import register_quantizer
from .ops import fp16_values, row_mean, row_sum
from .rowscale import RowLevelQuantizer

__all__ = ["TernaryQuantizer"]


@register_quantizer
class TernaryQuantizer(RowLevelQuantizer):
    """2-bit ternary weights (TWN): per row, ``delta = 0.7 * mean|w|``; ``|w| <= delta`` -> 0, else
    ``sign(w) * a`` with ``a`` = mean of ``|w|`` over the entries with ``|w| > delta``.

    Codes: 0 (-a), 1 (0), 2 (+a); a value is ``(code - 1) * scale``. A row with no entry above the
    threshold (e.g. all zero) gets a = 0.

    Example:
        >>> TernaryQuantizer()(torch.tensor([[1.0, -3.0, 0.0, 0.2]]))  # delta = 0.7 * 1.05 = 0.735
        tensor([[ 2., -2.,  0.,  0.]])
    """

    kind = "ternary"
    bits = 2
    recipe_bits = (2, 2, 2)
    threshold: ClassVar[float] = 0.7

    @classmethod
    def levels_scales(cls, w):
        a = w.abs()  # (rows, cols)
        # big = 1.0 where |w| > delta else 0.0, as floats: a - delta > 0 exactly when a > delta.
        # (Float-only ops: on CPU, comparisons to bool and bool products are 2-4x slower; this
        # runs on every weight at every training step.)
        big = torch.sub(a, row_mean(a).mul_(cls.threshold)).relu_().sign_()
        count = big.sum(dim=1, keepdim=True).clamp_min_(1)  # exact: small integers
        scales = fp16_values((row_sum(a.mul_(big)) / count).float())  # (rows, 1)
        return torch.sign(w).mul_(big), scales  # |w| > delta >= 0 where kept, so sign is +-1 there

    def to_codes(self, levels):
        return levels + 1.0

    def to_levels(self, codes):
        return codes - 1.0
