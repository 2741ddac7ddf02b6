"""The int-k kind: uniform 2..8-bit weights, symmetric or asymmetric, per tensor / row / group,
optionally with a learned (LSQ) step size."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...errors import UserError, did_you_mean
from .base import IntRange, WeightQuantizer, register_quantizer, spec_of
from .codes import LAYOUTS, Codes, ScaleLayout
from .ops import MIN_STEP, StraightThrough, check_bits, fp16_values, rows_cols, scale_grad, ste

__all__ = ["IntQuantizer", "GRANULARITIES"]

GRANULARITIES = LAYOUTS


@register_quantizer
class IntQuantizer(IntRange, WeightQuantizer):
    """Uniform int-k weights, k = 2..8, symmetric or asymmetric, per tensor / row / group.

    Symmetric uses the restricted range ``-(2^(k-1)-1) .. 2^(k-1)-1`` (int8: [-127, 127]) with
    ``scale = max|w| / (2^(k-1)-1)``. Asymmetric uses ``0 .. 2^k-1`` with
    ``scale = (max - min) / (2^k - 1)`` and an integer zero point ``round(-min / scale)``; the range
    always includes 0 so that 0 (a pruned weight) is exact.

    Args:
        bits: 2..8.
        symmetric: Symmetric (int codes, no zero point) or asymmetric (uint codes + zero point).
        granularity: ``"tensor"`` (one scale), ``"row"`` (one per output row) or ``"group"``
            (one per ``group_size`` consecutive elements of a row; must divide the row length).
        group_size: Required with ``granularity="group"``, not allowed otherwise.
        learned_step: LSQ: the scale is a learnable parameter initialised from the range above (at
            :meth:`initialize`, i.e. when attached to a layer — build the optimizer after that);
            its gradient is LSQ's, scaled by ``1/sqrt(elements_per_scale * qmax)``. The weight's
            gradient is then zero where it is clipped. An asymmetric zero point stays as initialised.
            Without it the scale follows the weight's range at every step and the weight gets a
            plain straight-through gradient.
    """

    kind = "int"
    recipe_keys = ("symmetric", "granularity", "group_size", "learned_step")
    recipe_bits = (2, 8, 8)

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = True,
        granularity: str = "row",
        group_size: int | None = None,
        learned_step: bool = False,
    ):
        super().__init__()
        self.bits = check_bits(bits, 2, 8, "int quantizer")
        if granularity not in GRANULARITIES:
            raise UserError(
                f"quantizer granularity {granularity!r} is not valid{did_you_mean(granularity, GRANULARITIES)}; "
                f"valid: {', '.join(GRANULARITIES)}"
            )
        if granularity == "group":
            if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
                raise UserError(
                    f"quantizer group_size={group_size!r} is not valid for granularity 'group'; "
                    "valid: a positive integer that divides the rows' length (e.g. 64 or 128)"
                )
        elif group_size is not None:
            raise UserError(
                f"quantizer group_size={group_size!r} is only used with granularity 'group' "
                f"(granularity is {granularity!r}); remove group_size or set granularity: group"
            )
        self.symmetric = bool(symmetric)
        self.granularity = granularity
        self.group_size = group_size
        self.learned_step = bool(learned_step)
        # LSQ state, created by initialize() once the weight's shape is known: (R, G, 1)
        self.register_parameter("step", None)
        self.register_buffer("zero_point", None)

    # -- description -----------------------------------------------------------------------
    @classmethod
    def check_recipe(cls, options: dict[str, Any], given: set[str]) -> None:
        if options["granularity"] == "group" and options["group_size"] is None:
            raise ValueError("granularity 'group' needs group_size (e.g. 64 or 128)")
        if options["granularity"] != "group" and options["group_size"] is not None:
            raise ValueError(f"group_size is only used with granularity 'group' (granularity is {options['granularity']!r})")

    @classmethod
    def describe_recipe(cls, bits: int, options: dict[str, Any]) -> str:
        how = f"{'symmetric' if options['symmetric'] else 'asymmetric'} per {options['granularity']}"
        if options["granularity"] == "group":
            how += f" of {options['group_size']}"
        return f"int{bits} weights ({how}{', learned step' if options['learned_step'] else ''})"

    def spec(self) -> dict[str, Any]:
        return spec_of(self, "bits", "symmetric", "granularity", "group_size", "learned_step")

    @property
    def row_local(self) -> bool:
        return self.granularity in ("row", "group") and not self.learned_step

    def _grid(self, shape) -> tuple[int, int, int]:
        """(R, G, S): the tensor viewed as R x G groups of S elements sharing a scale."""
        rows, cols = rows_cols(shape)
        if self.granularity == "tensor":
            return 1, 1, rows * cols
        if self.granularity == "row":
            return rows, 1, cols
        self.check_shape(shape)
        return rows, cols // self.group_size, self.group_size

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("scales",) if self.symmetric else ("scales", "zero_points")

    def scale_layout(self, shape) -> ScaleLayout:
        return ScaleLayout(self.granularity, self.group_size)

    def check_shape(self, shape, where: str = "") -> None:
        if self.granularity == "group":
            _, cols = rows_cols(shape)
            if cols % self.group_size:
                at = f"{where}: " if where else ""
                raise UserError(
                    f"{at}group_size={self.group_size} does not divide the row length {cols} of a weight "
                    f"of shape {tuple(shape)}; valid: a divisor of {cols}"
                )

    def _scales_layout(self, t: torch.Tensor, shape) -> torch.Tensor:
        """(R, G, 1) -> (1,) | (rows,) | (rows, groups)."""
        if self.granularity == "tensor":
            return t.reshape(1)
        if self.granularity == "row":
            return t.reshape(-1)
        return t.reshape(t.shape[0], t.shape[1])

    # -- range ------------------------------------------------------------------------------
    def _range_scale_zp(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale (R, G, 1) and zero point from the data range of grouped ``g`` (R, G, S); no grad."""
        g = g.detach()
        if self.symmetric:
            scale = g.abs().amax(dim=2, keepdim=True) / self.qmax
            return fp16_values(scale).clamp_min(MIN_STEP), None
        lo = g.amin(dim=2, keepdim=True).clamp_max(0.0)
        hi = g.amax(dim=2, keepdim=True).clamp_min(0.0)
        scale = fp16_values((hi - lo) / self.qmax).clamp_min(MIN_STEP)
        zp = torch.round(-lo / scale).clamp(0, self.qmax)
        return scale, zp

    def initialize(self, w: torch.Tensor) -> None:
        """Create the LSQ step (and zero point) from ``w``'s range; keeps them if shapes match."""
        if not self.learned_step:
            return
        r, g, s = self._grid(w.shape)
        if self.step is not None and tuple(self.step.shape) == (r, g, 1):
            return
        scale, zp = self._range_scale_zp(w.detach().float().reshape(r, g, s))
        if zp is None:
            # round the step up to the next fp16 value where fp16 rounding went down, so that the
            # largest weight is not clipped (and keeps its gradient) at the start
            exact = (w.detach().float().reshape(r, g, s).abs().amax(dim=2, keepdim=True) / self.qmax)
            up = torch.nextafter(scale.half(), torch.tensor(float("inf"), dtype=torch.half, device=scale.device)).float()
            scale = torch.where(scale < exact, up, scale)
        self.step = nn.Parameter(scale.clone())
        self.zero_point = zp.clone() if zp is not None else None

    def freeze(self) -> None:
        if self.step is not None:
            self.step.requires_grad_(False)

    def _scale_zp(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scale used by forward (fp16-valued; carries LSQ gradient when learned)."""
        if not self.learned_step:
            return self._range_scale_zp(g)
        if self.step is None:
            self.initialize(g)  # standalone use; attach to a layer first when training
        r, gr, s = g.shape
        grad_scale = 1.0 / math.sqrt(s * self.qmax)
        step = scale_grad(self.step.abs(), grad_scale)
        # fp16 values; never below the smallest fp16 step (straight-through on the clamp)
        step = ste(step.detach().half().float().clamp_min(MIN_STEP), step)
        return step, self.zero_point

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # A fresh learned-step quantizer has no tensors yet: create them with the checkpoint's shapes.
        if self.learned_step:
            key = prefix + "step"
            if key in state_dict and self.step is None:
                self.step = nn.Parameter(torch.empty_like(state_dict[key], dtype=torch.float32))
            key = prefix + "zero_point"
            if key in state_dict and self.zero_point is None:
                self.zero_point = torch.empty_like(state_dict[key], dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    # -- quantize ---------------------------------------------------------------------------
    def _codes(self, g: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
        v = g / scale
        if zp is not None:
            v = v + zp
        return torch.round(v.clamp(self.qmin, self.qmax))

    def _decode(self, codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
        if zp is not None:
            codes = codes - zp
        return codes * scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.learned_step:
            r, gr, s = self._grid(w.shape)
            g = w.float().reshape(r, gr, s)  # (R, G, S)
            scale, zp = self._scale_zp(g)  # (R, G, 1), carries the LSQ gradient
            # LSQ: round with STE inside the clamp; d/dw = 1 inside the range, 0 where clipped,
            # d/dscale = round(v) - v inside, the clamp bound outside (minus the zero point).
            v = g / scale
            if zp is not None:
                v = v + zp
            v = v.clamp(self.qmin, self.qmax)
            q = ste(torch.round(v), v)
            out = self._decode(q, scale, zp)
            return out.reshape(w.shape).to(w.dtype)
        return StraightThrough.apply(w, self._fake)

    def _fake(self, w: torch.Tensor) -> torch.Tensor:
        r, gr, s = self._grid(w.shape)
        g = w.float().reshape(r, gr, s)  # (R, G, S)
        scale, zp = self._range_scale_zp(g)  # (R, G, 1)
        return self._decode(self._codes(g, scale, zp), scale, zp).reshape(w.shape).to(w.dtype)

    def quantize_ints(self, w):
        r, gr, s = self._grid(w.shape)
        with torch.no_grad():
            g = w.detach().float().reshape(r, gr, s)
            scale, zp = self._scale_zp(g)
            codes = self._codes(g, scale, zp)
        dtype = torch.int8 if self.symmetric else torch.uint8
        zp_out = self._scales_layout(zp.detach().clone(), w.shape) if zp is not None else None
        return codes.to(dtype).reshape(w.shape), self._scales_layout(scale.detach().clone(), w.shape), zp_out

    def dequantize(self, ints, scales, zero_points, shape):
        r, gr, s = self._grid(shape)
        codes = ints.reshape(r, gr, s).float()
        scale = scales.float().reshape(r, gr, 1)
        zp = zero_points.float().reshape(r, gr, 1) if zero_points is not None else None
        return self._decode(codes, scale, zp).reshape(shape)

    def decode_values(self, stored, params):
        codes = stored + float(self.qmin)  # exact small integers
        if "zero_points" in params:
            codes = codes - params["zero_points"]
        return codes * params["scales"]

    def int_levels(self, codes: Codes) -> torch.Tensor | None:
        if not self.symmetric or self.granularity != "row":
            return None
        return codes.stored + self.qmin
