"""The dynamic activation kind: per-token symmetric quantization computed on the fly (XTC's A8)."""

from __future__ import annotations

from typing import Any

import torch

from .base import ActivationQuantizer, register_quantizer
from .ops import StraightThrough, check_bits, run_compiled

__all__ = ["DynamicActQuantizer", "dynamic_act_codes"]


def dynamic_act_codes(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric codes of ``x`` (..., hidden) as floats, and the scales (..., 1).

    ``scale = max|x| / qmax`` over the last dimension (a max: the same in any kernel); codes are
    ``round(x / scale)``, in [-qmax, qmax] without a clamp since ``|x| <= qmax * scale``. The one
    definition training (:class:`DynamicActQuantizer`) and the runtime's int8 products use.
    """
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(1e-30)
    return torch.round(xf / scale), scale


def _dynamic_act_fake(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-token fake quantization of ``x`` (..., hidden) to codes in [-qmax, qmax]."""
    codes, scale = dynamic_act_codes(x, qmax)
    return codes.mul_(scale).to(x.dtype)


def _dynamic_int8(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes, scale = dynamic_act_codes(x, qmax)
    return codes.to(torch.int8), scale


@register_quantizer
class DynamicActQuantizer(ActivationQuantizer):
    """Per-token symmetric activation quantization, computed on the fly (XTC's A8).

    For ``x`` of shape ``(..., hidden)``: ``scale = max|x| / (2^(b-1)-1)`` over the last dimension,
    codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``; so ``|x - q(x)| <= scale / 2`` element-wise. The scale
    is not rounded to fp16 (it is never stored). Gradient: straight through.
    """

    kind = "dynamic_act"

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = check_bits(bits, 2, 8, "dynamic activation quantizer")

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits}

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def code_range(self) -> tuple[int, int]:
        return -self.qmax, self.qmax

    def num_scales(self, shape) -> int:
        return 0  # computed at run time, never stored

    def storage_bits(self, shape) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., hidden)
        return StraightThrough.apply(x, self._fake)

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        return run_compiled(_dynamic_act_fake, self.compiled, x, self.qmax, dynamic=True)  # any token count

    def quantize_ints(self, x):
        with torch.no_grad():
            codes, scale = dynamic_act_codes(x.detach(), self.qmax)
        return codes.to(torch.int8), scale.squeeze(-1), None

    def dequantize(self, ints, scales, zero_points, shape):
        return (ints.float() * scales.float().unsqueeze(-1)).reshape(shape)

    @property
    def int8_exact(self) -> bool:
        return True

    def int8_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run_compiled(_dynamic_int8, True, x, self.qmax, dynamic=True)
