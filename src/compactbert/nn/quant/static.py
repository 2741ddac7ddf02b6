"""The static activation kind: one calibrated range per tensor, frozen after calibration."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from ...errors import UserError, did_you_mean
from .base import ActivationQuantizer, IntRange, register_quantizer, spec_of
from .ops import MIN_STEP, StraightThroughClipped, check_bits, fp16_values, run_compiled

__all__ = ["StaticActQuantizer", "calibration", "static_act_fake"]


def static_act_fake(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, qmin: int,
                    qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fake-quantized ``x`` in its dtype, bool "inside the range") with one scale (and zero point):
    the one definition training and the runtime use."""
    v = x.float() / scale
    if zp is not None:
        v = v + zp
    inside = (v >= qmin) & (v <= qmax)  # no gradient where clipped
    codes = torch.round(v.clamp(qmin, qmax))
    out = (codes - zp if zp is not None else codes) * scale
    return out.to(x.dtype), inside


def _static_int8(x: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Codes (int8) with one calibrated symmetric scale, as :func:`static_act_fake` rounds them."""
    return torch.round((x.float() / scale).clamp(-qmax, qmax)).to(torch.int8)


@register_quantizer
class StaticActQuantizer(IntRange, ActivationQuantizer):
    """Activation quantization with one range per tensor, calibrated on data then frozen.

    How to calibrate: switch calibration on, run a few batches through the model, freeze::

        with calibration(model):           # every StaticActQuantizer in model observes
            for batch in batches[:16]:
                model(**batch)
        # leaving the block freezes them; forward now fake-quantizes with the observed range

    (or call ``q.start_calibration()`` ... ``q.freeze()`` on each quantizer). While calibrating,
    ``forward`` returns its input unchanged and updates the range: ``observer="minmax"`` keeps the
    running min and max; ``observer="percentile"`` averages over batches the ``percentile`` and
    ``100 - percentile`` percentiles of each batch (robust to outliers). The range lives in buffers
    (``min_val``, ``max_val``, ``num_batches``), so it is saved and loaded with the state dict.
    Using the quantizer before any batch was observed raises ``RuntimeError``.

    Symmetric: ``scale = max(|min|, |max|) / (2^(b-1)-1)``; asymmetric: ``scale = (max - min) /
    (2^b - 1)`` with an integer zero point. Scales are fp16 values. Gradient: straight through inside
    the range, zero where the input is clipped.
    """

    kind = "static_act"
    OBSERVERS: ClassVar[tuple[str, ...]] = ("minmax", "percentile")

    def __init__(self, bits: int = 8, symmetric: bool = True, observer: str = "minmax", percentile: float = 99.99):
        super().__init__()
        self.bits = check_bits(bits, 2, 8, "static activation quantizer")
        if observer not in self.OBSERVERS:
            raise UserError(
                f"activation observer {observer!r} is not valid{did_you_mean(observer, self.OBSERVERS)}; "
                f"valid: {', '.join(self.OBSERVERS)}"
            )
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50 < percentile <= 100:
            raise UserError(f"activation percentile={percentile!r} is out of range; valid: a number in (50, 100]")
        self.symmetric = bool(symmetric)
        self.observer = observer
        self.percentile = float(percentile)
        self.calibrating = False
        self.fixed: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (scale, zp) of a packed model
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("num_batches", torch.tensor(0, dtype=torch.long))

    def spec(self) -> dict[str, Any]:
        return spec_of(self, "bits", "symmetric", "observer", "percentile")

    @property
    def calibrated(self) -> bool:
        return self.fixed is not None or int(self.num_batches) > 0

    def num_scales(self, shape) -> int:
        return 1

    def scale_bits(self, shape) -> int:
        return 16 if self.symmetric else 32

    def storage_bits(self, shape) -> int:
        return self.scale_bits(shape)  # only the range is stored, never the activations

    def start_calibration(self, reset: bool = True) -> None:
        """Observe ranges on the following forward calls (input passes through unquantized)."""
        self.calibrating = True
        if reset:
            self.min_val.zero_()
            self.max_val.zero_()
            self.num_batches.zero_()

    def freeze(self) -> None:
        """Stop calibrating: forward quantizes with the observed range from now on."""
        self.calibrating = False

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the range with one batch of activations."""
        xf = x.detach().float().reshape(-1)
        if xf.numel() == 0:
            return
        n = int(self.num_batches)
        if self.observer == "minmax":
            lo, hi = xf.min(), xf.max()
            if n > 0:
                lo, hi = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)
        else:
            k_hi = max(1, min(xf.numel(), math.ceil(xf.numel() * self.percentile / 100.0)))
            k_lo = max(1, xf.numel() + 1 - k_hi)
            lo, hi = xf.kthvalue(k_lo).values, xf.kthvalue(k_hi).values
            lo = (self.min_val * n + lo) / (n + 1)
            hi = (self.max_val * n + hi) / (n + 1)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        self.num_batches += 1

    def _scale_zp(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.fixed is not None:
            return self.fixed
        if not self.calibrated:
            raise RuntimeError(
                "StaticActQuantizer used before calibration: run batches inside `calibration(model)` "
                "(or start_calibration() ... freeze()) first"
            )
        lo = self.min_val.clamp_max(0.0)
        hi = self.max_val.clamp_min(0.0)
        if self.symmetric:
            scale = torch.maximum(-lo, hi) / self.qmax
            return fp16_values(scale).clamp_min(MIN_STEP), None
        scale = fp16_values((hi - lo) / self.qmax).clamp_min(MIN_STEP)
        return scale, torch.round(-lo / scale).clamp(0, self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        return StraightThroughClipped.apply(x, self._fake)

    def _fake(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zp = self._scale_zp()
        return static_act_fake(x, scale, zp, self.qmin, self.qmax)

    def quantize_ints(self, x):
        with torch.no_grad():
            scale, zp = self._scale_zp()
            v = x.detach().float() / scale
            if zp is not None:
                v = v + zp
            codes = torch.round(v.clamp(self.qmin, self.qmax))
        dtype = torch.int8 if self.symmetric else torch.uint8
        return codes.to(dtype), scale.reshape(1).clone(), (zp.reshape(1).clone() if zp is not None else None)

    def dequantize(self, ints, scales, zero_points, shape):
        codes = ints.float()
        if zero_points is not None:
            codes = codes - zero_points.float().reshape(())
        return (codes * scales.float().reshape(())).reshape(shape)

    # -- packed --------------------------------------------------------------------------------
    def packed_params(self) -> dict[str, torch.Tensor]:
        scale, zp = self._scale_zp()
        out = {"scale": scale.detach().cpu().float().reshape(1)}
        if zp is not None:
            out["zero_point"] = zp.detach().cpu().float().reshape(1)
        return out

    @classmethod
    def from_packed(cls, spec: dict[str, Any], params: dict[str, torch.Tensor]) -> "StaticActQuantizer":
        q = cls.from_spec(spec)
        zp = params.get("zero_point")
        q.fixed = (params["scale"].reshape(()).float(), zp.reshape(()).float() if zp is not None else None)
        return q

    def runtime_key(self) -> tuple:
        scale, zp = self._scale_zp()
        return (self.kind, self.qmax, self.symmetric, float(scale), float(zp) if zp is not None else None)

    @property
    def int8_exact(self) -> bool:
        return self.symmetric

    def int8_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zp = self._scale_zp()
        if zp is not None:
            raise ValueError("asymmetric static activations have no exact int8 codes")
        return run_compiled(_static_int8, True, x, scale, self.qmax, dynamic=True), scale


@contextmanager
def calibration(model: nn.Module) -> Iterator[list[StaticActQuantizer]]:
    """Calibrate every :class:`StaticActQuantizer` in ``model`` on the batches run inside the block.

    Yields the quantizers; on exit they are frozen (``forward`` quantizes from then on).
    """
    qs = [m for m in model.modules() if isinstance(m, StaticActQuantizer)]
    for q in qs:
        q.start_calibration()
    try:
        yield qs
    finally:
        for q in qs:
            q.freeze()
