"""Fake quantizers with straight-through gradients, and the integer codes a packer stores.

A quantizer is an ``nn.Module`` whose ``forward(x)`` returns the *fake-quantized* value of ``x``:
a float tensor that only takes the values the stored integers can represent. The backward pass is
a straight-through estimator (STE): the gradient reaches ``x`` unchanged (for a learned step size,
LSQ-style, it is zero where ``x`` was clipped, and the step gets the LSQ gradient).

Weight quantizers
    ================  =====  =========================================  ==============================
    class             bits   levels                                     scale
    ================  =====  =========================================  ==============================
    BinaryQuantizer   1      {-a, +a}, sign(0) = +1                     a = mean|w| per row
    TernaryQuantizer  2      {-a, 0, +a}, 0 where |w| <= 0.7 mean|w|    a = mean|w| above it, per row
    IntQuantizer      2..8   symmetric: -(2^(b-1)-1) .. 2^(b-1)-1       max|w| / (2^(b-1)-1)
                             asymmetric: 0 .. 2^b-1, zero point         (max - min) / (2^b - 1)
    ================  =====  =========================================  ==============================

"Row" is the first dimension of the weight: an output feature of ``nn.Linear`` (``(out, in)``),
a token of ``nn.Embedding`` (``(vocab, dim)``). Groups are ``group_size`` consecutive elements along
the last dimension inside a row.

Activation quantizers
    * :class:`DynamicActQuantizer` — per-token symmetric 8-bit, scale = max|x| / 127 over the last
      dimension, computed on the fly (XTC's "A8"). Nothing is stored.
    * :class:`StaticActQuantizer` — one calibrated range per tensor (see its docstring for how to
      calibrate), frozen afterwards.

Packing contract (what ``export`` relies on)
    ``codes, scales, zero_points = q.quantize_ints(w)`` gives the integer codes (``uint8``, or
    ``int8`` for symmetric int-k) and float32 scales; ``q.dequantize(codes, scales, zero_points,
    w.shape)`` is **bitwise equal** to ``q(w)``. Weight and static-activation scales are rounded to
    float16-representable values inside ``forward`` itself, so storing them as fp16 loses nothing:
    a packed model reproduces the training-time logits exactly. Decoding rules per ``spec()["kind"]``::

        binary:               value = (2 * code - 1) * scale           codes {0, 1}
        ternary:              value = (code - 1) * scale               codes {0, 1, 2}
        int, symmetric:       value = code * scale                     codes int8 in [-(2^(b-1)-1), 2^(b-1)-1]
        int, asymmetric:      value = (code - zero_point) * scale      codes uint8 in [0, 2^b - 1]

    ``code_range()`` gives (lowest, highest) code, so a packer stores ``code - lowest`` in ``bits``
    bits. Scale layout (``scales.shape``): ``(1,)`` per tensor, ``(rows,)`` per row,
    ``(rows, cols // group_size)`` per group; zero points have the same layout (integer-valued
    float32). ``storage_bits(shape)`` = ``numel * bits`` + 16 bits per scale (+16 per zero point).

Example::

    q = TernaryQuantizer()
    w = torch.randn(4, 8, requires_grad=True)
    wq = q(w)                                  # values in {-a_r, 0, +a_r} per row r
    codes, scales, zp = q.quantize_ints(w)     # uint8 codes in {0, 1, 2}, scales (4,)
    assert torch.equal(q.dequantize(codes, scales, zp, w.shape), wq)
"""

from __future__ import annotations

import abc
import math
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from ..errors import UserError, did_you_mean

__all__ = [
    "Quantizer",
    "BinaryQuantizer",
    "TernaryQuantizer",
    "IntQuantizer",
    "DynamicActQuantizer",
    "StaticActQuantizer",
    "quantizer_from_spec",
    "calibration",
    "dynamic_act_codes",
    "run_compiled",
    "GRANULARITIES",
]

GRANULARITIES = ("tensor", "row", "group")
_FP16_MAX = 65504.0
_MIN_STEP = 2.0**-24  # smallest positive fp16 (subnormal); a divisor never goes below it


# ----------------------------------------------------------------------------- helpers
def _fp16_values(s: torch.Tensor) -> torch.Tensor:
    """``s`` rounded to the nearest float16 value (kept in float32); straight-through gradient.

    The forward value is exactly ``fp16(s)``; the gradient w.r.t. ``s`` passes unchanged.
    """
    rounded = s.detach().clamp(-_FP16_MAX, _FP16_MAX).half().float()
    return rounded + (s - s.detach())


def _row_sum(x: torch.Tensor) -> torch.Tensor:
    """Sums over the last dimension (keepdim), accumulated in float64.

    A float32 sum depends on the order of its additions, which differs between PyTorch's eager
    kernels and the fused kernels ``torch.compile`` generates; a float64 sum of float32 values is
    exact for any realistic row, so the eager and the compiled quantizer (and the packer) agree
    bitwise. Returned in float64.
    """
    return x.sum(dim=-1, keepdim=True, dtype=torch.float64)


def _row_mean(x: torch.Tensor) -> torch.Tensor:
    """Float32 mean over the last dimension (keepdim), order-independent (see :func:`_row_sum`)."""
    return (_row_sum(x) / x.shape[-1]).float()


# ----------------------------------------------------------------------------- compiled kernels
_COMPILED: dict[Any, Any] = {}
_COMPILE_BROKEN: list[str] = []  # the first error, once compiling failed in this process


def run_compiled(fn, compiled: bool, *args, dynamic: bool = False):
    """``fn(*args)``, through ``torch.compile`` when ``compiled`` (falls back to eager for good,
    with one warning, if compiling fails, e.g. without a C++ compiler).

    Compiled, a quantizer's ~15 element-wise passes over a weight become 2-3 fused loops: a ternary
    QAT step's weight quantization runs ~2-3x faster on CPU. ``fn`` must be a plain function of
    tensors (one compiled graph per function and weight shape, or per function with ``dynamic``;
    no per-instance state). Casts to
    float16 and back are kept (``emulate_precision_casts``): the result is bitwise the eager one.
    """
    if not compiled or _COMPILE_BROKEN:
        return fn(*args)
    c = _COMPILED.get(fn)
    if c is None:  # dynamic: one graph for every shape (activations: the token count varies)
        c = _COMPILED[fn] = torch.compile(fn, dynamic=dynamic, options={"emulate_precision_casts": True})
    try:
        with torch.autocast(args[0].device.type, enabled=False):
            return c(*args)
    except Exception as e:  # noqa: BLE001 - any compiler failure: the eager result is the same
        import warnings

        _COMPILE_BROKEN.append(f"{type(e).__name__}: {e}"[:300])
        warnings.warn(f"compiled quantizers unavailable, using eager ones (same results, slower): "
                      f"{_COMPILE_BROKEN[0]}", RuntimeWarning, stacklevel=2)
        return fn(*args)


def _ste(value: torch.Tensor, x: torch.Tensor, grad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``value`` exactly in the forward pass, with d/dx = 1 (or ``grad_mask``) in backward.

    Written as ``value.detach() + (x - x.detach())`` rather than ``x + (value - x).detach()``: the
    second form can differ from ``value`` in the last bit, which would break exact packing.
    """
    passthrough = x - x.detach()  # exactly 0 forward, identity backward
    if grad_mask is not None:
        passthrough = passthrough * grad_mask
    return value.detach() + passthrough


class _StraightThrough(torch.autograd.Function):
    """``fn(x)`` in forward (no graph is recorded), the incoming gradient unchanged in backward.

    Cheaper than building the quantization graph and cancelling it with detach tricks: one node,
    no saved tensors. ``fn`` must return a tensor of ``x``'s shape and dtype.
    """

    @staticmethod
    def forward(ctx, x, fn):  # noqa: D102
        return fn(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad, None


class _StraightThroughClipped(torch.autograd.Function):
    """Like :class:`_StraightThrough`, but ``fn(x)`` returns ``(value, inside)`` and the gradient
    is zero where ``inside`` is False (the input was clipped)."""

    @staticmethod
    def forward(ctx, x, fn):  # noqa: D102
        value, inside = fn(x)
        ctx.save_for_backward(inside)
        return value

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None


def _scale_grad(s: torch.Tensor, g: float) -> torch.Tensor:
    """Forward: ``s`` exactly. Backward: the gradient times ``g`` (LSQ's step-size gradient scale)."""
    sg = s * g
    return s.detach() + (sg - sg.detach())


def _numel(shape: torch.Size | tuple[int, ...]) -> int:
    return int(math.prod(shape))


def _rows_cols(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """A weight of any rank as (rows, cols): rows = first dim, cols = the rest (1-D: one row)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], _numel(shape[1:])


def _check_bits(bits: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise UserError(f"{what} bits={bits!r} is out of range; valid: integers {lo}..{hi}")
    return bits


# ----------------------------------------------------------------------------- base
class Quantizer(nn.Module, metaclass=abc.ABCMeta):
    """Base class: a fake quantizer with a straight-through gradient.

    Subclasses set ``kind`` (the ``spec()["kind"]``), ``bits`` and implement ``forward``,
    ``quantize_ints``, ``dequantize`` and ``spec``.

    Attributes:
        bits: Bits per stored code.
        represents_zero: Whether 0.0 is one of the levels (False for binary). A pruned tensor whose
            quantizer cannot represent zero must be stored with its mask.
        row_local: True when each row's quantized value depends only on that row (per-row/group
            scales, no per-row parameters). Lets an embedding quantize only the looked-up rows.
        is_activation: True for activation quantizers (nothing of theirs is stored but a range).
    """

    kind: ClassVar[str] = ""
    represents_zero: ClassVar[bool] = True
    is_activation: ClassVar[bool] = False
    bits: int
    #: Run the fake quantization through ``torch.compile`` (binary and ternary weights; same
    #: values bitwise, faster; worth it for long runs: compiling takes seconds per weight shape).
    #: Set by the ``quantize`` method (its ``compile`` key); not part of :meth:`spec`.
    compiled: bool = False

    # -- description -----------------------------------------------------------------------
    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON-able description; ``quantizer_from_spec(q.spec())`` builds an equal quantizer."""

    @property
    def row_local(self) -> bool:
        return False

    def code_range(self) -> tuple[int, int]:
        """(lowest, highest) integer code returned by :meth:`quantize_ints`."""
        return 0, 2**self.bits - 1

    @abc.abstractmethod
    def num_scales(self, shape: torch.Size | tuple[int, ...]) -> int:
        """How many scales a tensor of ``shape`` needs."""

    def scale_bits(self, shape: torch.Size | tuple[int, ...]) -> int:
        """Bits for the fp16 scales (and zero points) of a tensor of ``shape``."""
        return 16 * self.num_scales(shape)

    def storage_bits(self, shape: torch.Size | tuple[int, ...]) -> int:
        """Bits to store a tensor of ``shape`` packed: ``numel * bits`` codes + fp16 scales."""
        return _numel(shape) * self.bits + self.scale_bits(shape)

    def check_shape(self, shape: torch.Size | tuple[int, ...], where: str = "") -> None:
        """Raise :class:`UserError` if this quantizer cannot quantize a tensor of ``shape``."""

    # -- lifecycle -------------------------------------------------------------------------
    def initialize(self, w: torch.Tensor) -> None:
        """Called when attached to a layer, with its (masked) weight: set up learned parameters."""

    def freeze(self) -> None:
        """Stop learning/calibrating: the quantizer's parameters stay fixed from now on."""

    # -- integers --------------------------------------------------------------------------
    @abc.abstractmethod
    def quantize_ints(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Integer codes of ``w`` (same shape), float32 scales, float32 zero points or None."""

    @abc.abstractmethod
    def dequantize(
        self,
        ints: torch.Tensor,
        scales: torch.Tensor,
        zero_points: torch.Tensor | None,
        shape: torch.Size | tuple[int, ...],
    ) -> torch.Tensor:
        """Float32 values of ``shape`` from :meth:`quantize_ints` output; equals ``forward(w)`` bitwise."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "kind")


# ----------------------------------------------------------------------------- binary / ternary
class _RowQuantizer(Quantizer):
    """Shared parts of binary and ternary: one scale per row; each value is ``level * scale`` with
    ``level`` in {-1, (0,) +1}, stored as the code ``level + offset``.

    Subclasses implement ``_levels_scales(w)`` -> (levels (rows, cols), fp16-valued scales (rows, 1))
    and the level <-> code maps.
    """

    @property
    def row_local(self) -> bool:
        return True

    def num_scales(self, shape) -> int:
        return _rows_cols(shape)[0]

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    @abc.abstractmethod
    def _levels_scales(cls, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels (rows, cols) in {-1, (0,) +1}, fp16-valued scales (rows, 1)) of a 2-D weight."""

    @abc.abstractmethod
    def _to_codes(self, levels: torch.Tensor) -> torch.Tensor:
        """Stored codes of levels."""

    @abc.abstractmethod
    def _to_levels(self, codes: torch.Tensor) -> torch.Tensor:
        """Levels of stored codes."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(w, self._fake)

    def _fake(self, w: torch.Tensor) -> torch.Tensor:
        rows, cols = _rows_cols(w.shape)
        out = run_compiled(type(self)._fake_2d, self.compiled, w.float().reshape(rows, cols))
        return out.reshape(w.shape).to(w.dtype)

    @classmethod
    def _fake_2d(cls, w: torch.Tensor) -> torch.Tensor:
        levels, scales = cls._levels_scales(w)  # (rows, cols), (rows, 1)
        return levels.mul_(scales)

    def quantize_ints(self, w):
        rows, cols = _rows_cols(w.shape)
        with torch.no_grad():
            levels, scales = self._levels_scales(w.detach().float().reshape(rows, cols))
        return self._to_codes(levels).to(torch.uint8).reshape(w.shape), scales.reshape(rows), None

    def dequantize(self, ints, scales, zero_points, shape):
        rows, cols = _rows_cols(shape)
        levels = self._to_levels(ints.reshape(rows, cols).float())  # small exact integers
        return (levels * scales.float().reshape(rows, 1)).reshape(shape)


class BinaryQuantizer(_RowQuantizer):
    """1-bit weights: ``sign(w) * mean|w|`` per row, with ``sign(0) = +1`` (XTC / BinaryBERT).

    Codes: 1 for ``w >= 0`` (+a), 0 for ``w < 0`` (-a). Cannot represent 0 (see ``represents_zero``).

    Example:
        >>> BinaryQuantizer()(torch.tensor([[1.0, -3.0, 0.0, 2.0]]))
        tensor([[ 1.5000, -1.5000,  1.5000,  1.5000]])
    """

    kind = "binary"
    represents_zero = False
    bits = 1

    @classmethod
    def _levels_scales(cls, w):
        scales = _fp16_values(_row_mean(w.abs()))  # (rows, 1)
        # sign with sign(0) = +1: ``w + 0.0`` turns -0.0 into +0.0, copysign takes the sign bit.
        # (Float-only ops: on CPU, comparisons to bool and torch.where are 4-8x slower.)
        return torch.copysign(torch.ones((), dtype=w.dtype), w + 0.0), scales

    def _to_codes(self, levels):
        return (levels + 1.0) * 0.5

    def _to_levels(self, codes):
        return codes * 2.0 - 1.0


class TernaryQuantizer(_RowQuantizer):
    """2-bit ternary weights (TWN): per row, ``delta = 0.7 * mean|w|``; ``|w| <= delta`` -> 0, else
    ``sign(w) * a`` with ``a`` = mean of ``|w|`` over the entries with ``|w| > delta``.

    Codes: 0 (-a), 1 (0), 2 (+a). A row with no entry above the threshold (e.g. all zero) gets a = 0.

    Example:
        >>> TernaryQuantizer()(torch.tensor([[1.0, -3.0, 0.0, 0.2]]))  # delta = 0.7 * 1.05 = 0.735
        tensor([[ 2., -2.,  0.,  0.]])
    """

    kind = "ternary"
    bits = 2
    threshold: ClassVar[float] = 0.7

    @classmethod
    def _levels_scales(cls, w):
        a = w.abs()  # (rows, cols)
        # big = 1.0 where |w| > delta else 0.0, as floats: a - delta > 0 exactly when a > delta.
        # (Float-only ops: on CPU, comparisons to bool and bool products are 2-4x slower; this
        # runs on every weight at every training step.)
        big = torch.sub(a, _row_mean(a).mul_(cls.threshold)).relu_().sign_()
        count = big.sum(dim=1, keepdim=True).clamp_min_(1)  # exact: small integers
        scales = _fp16_values((_row_sum(a.mul_(big)) / count).float())  # (rows, 1)
        return torch.sign(w).mul_(big), scales  # |w| > delta >= 0 where kept, so sign is +-1 there

    def _to_codes(self, levels):
        return levels + 1.0

    def _to_levels(self, codes):
        return codes - 1.0


# ----------------------------------------------------------------------------- int-k
class _IntRange:
    """Integer code range of a ``bits``-bit quantizer: symmetric (restricted, +-(2^(b-1)-1)) or
    asymmetric (0 .. 2^b-1)."""

    bits: int
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def code_range(self) -> tuple[int, int]:
        return self.qmin, self.qmax


class IntQuantizer(_IntRange, Quantizer):
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

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = True,
        granularity: str = "row",
        group_size: int | None = None,
        learned_step: bool = False,
    ):
        super().__init__()
        self.bits = _check_bits(bits, 2, 8, "int quantizer")
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
    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bits": self.bits,
            "symmetric": self.symmetric,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "learned_step": self.learned_step,
        }

    @property
    def row_local(self) -> bool:
        return self.granularity in ("row", "group") and not self.learned_step

    def _grid(self, shape) -> tuple[int, int, int]:
        """(R, G, S): the tensor viewed as R x G groups of S elements sharing a scale."""
        rows, cols = _rows_cols(shape)
        if self.granularity == "tensor":
            return 1, 1, rows * cols
        if self.granularity == "row":
            return rows, 1, cols
        self.check_shape(shape)
        return rows, cols // self.group_size, self.group_size

    def num_scales(self, shape) -> int:
        r, g, _ = self._grid(shape)
        return r * g

    def scale_bits(self, shape) -> int:
        return 16 * self.num_scales(shape) * (1 if self.symmetric else 2)

    def check_shape(self, shape, where: str = "") -> None:
        if self.granularity == "group":
            _, cols = _rows_cols(shape)
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
            return _fp16_values(scale).clamp_min(_MIN_STEP), None
        lo = g.amin(dim=2, keepdim=True).clamp_max(0.0)
        hi = g.amax(dim=2, keepdim=True).clamp_min(0.0)
        scale = _fp16_values((hi - lo) / self.qmax).clamp_min(_MIN_STEP)
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
            up = torch.nextafter(scale.half(), torch.tensor(float("inf"), dtype=torch.half)).float()
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
        step = _scale_grad(self.step.abs(), grad_scale)
        # fp16 values; never below the smallest fp16 step (straight-through on the clamp)
        step = _ste(step.detach().half().float().clamp_min(_MIN_STEP), step)
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
            q = _ste(torch.round(v), v)
            out = self._decode(q, scale, zp)
            return out.reshape(w.shape).to(w.dtype)
        return _StraightThrough.apply(w, self._fake)

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


# ----------------------------------------------------------------------------- activations
class DynamicActQuantizer(Quantizer):
    """Per-token symmetric activation quantization, computed on the fly (XTC's A8).

    For ``x`` of shape ``(..., hidden)``: ``scale = max|x| / (2^(b-1)-1)`` over the last dimension,
    codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``; so ``|x - q(x)| <= scale / 2`` element-wise. The scale
    is not rounded to fp16 (it is never stored). Gradient: straight through.
    """

    kind = "dynamic_act"
    is_activation = True

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = _check_bits(bits, 2, 8, "dynamic activation quantizer")

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
        return _StraightThrough.apply(x, self._fake)

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        return run_compiled(_dynamic_act_fake, self.compiled, x, self.qmax, dynamic=True)  # any token count

    def quantize_ints(self, x):
        with torch.no_grad():
            codes, scale = dynamic_act_codes(x.detach(), self.qmax)
        return codes.to(torch.int8), scale.squeeze(-1), None

    def dequantize(self, ints, scales, zero_points, shape):
        return (ints.float() * scales.float().unsqueeze(-1)).reshape(shape)


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


class StaticActQuantizer(_IntRange, Quantizer):
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
    is_activation = True
    OBSERVERS: ClassVar[tuple[str, ...]] = ("minmax", "percentile")

    def __init__(self, bits: int = 8, symmetric: bool = True, observer: str = "minmax", percentile: float = 99.99):
        super().__init__()
        self.bits = _check_bits(bits, 2, 8, "static activation quantizer")
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
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("num_batches", torch.tensor(0, dtype=torch.long))

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bits": self.bits,
            "symmetric": self.symmetric,
            "observer": self.observer,
            "percentile": self.percentile,
        }

    @property
    def calibrated(self) -> bool:
        return int(self.num_batches) > 0

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
        if not self.calibrated:
            raise RuntimeError(
                "StaticActQuantizer used before calibration: run batches inside `calibration(model)` "
                "(or start_calibration() ... freeze()) first"
            )
        lo = self.min_val.clamp_max(0.0)
        hi = self.max_val.clamp_min(0.0)
        if self.symmetric:
            scale = torch.maximum(-lo, hi) / self.qmax
            return _fp16_values(scale).clamp_min(_MIN_STEP), None
        scale = _fp16_values((hi - lo) / self.qmax).clamp_min(_MIN_STEP)
        return scale, torch.round(-lo / scale).clamp(0, self.qmax)

    def _codes(self, xf, scale, zp):
        v = xf / scale
        if zp is not None:
            v = v + zp
        return torch.round(v.clamp(self.qmin, self.qmax))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        return _StraightThroughClipped.apply(x, self._fake)

    def _fake(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf = x.float()
        scale, zp = self._scale_zp()
        v = xf / scale
        if zp is not None:
            v = v + zp
        inside = (v >= self.qmin) & (v <= self.qmax)  # no gradient where clipped
        codes = torch.round(v.clamp(self.qmin, self.qmax))
        out = (codes - zp if zp is not None else codes) * scale
        return out.to(x.dtype), inside

    def quantize_ints(self, x):
        with torch.no_grad():
            scale, zp = self._scale_zp()
            codes = self._codes(x.detach().float(), scale, zp)
        dtype = torch.int8 if self.symmetric else torch.uint8
        return codes.to(dtype), scale.reshape(1).clone(), (zp.reshape(1).clone() if zp is not None else None)

    def dequantize(self, ints, scales, zero_points, shape):
        codes = ints.float()
        if zero_points is not None:
            codes = codes - zero_points.float().reshape(())
        return (codes * scales.float().reshape(())).reshape(shape)


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


# ----------------------------------------------------------------------------- specs
_KINDS: dict[str, type[Quantizer]] = {
    cls.kind: cls
    for cls in (BinaryQuantizer, TernaryQuantizer, IntQuantizer, DynamicActQuantizer, StaticActQuantizer)
}


def quantizer_from_spec(spec: dict[str, Any] | None) -> Quantizer | None:
    """Build a quantizer from :meth:`Quantizer.spec` output (``None`` gives ``None``).

    Raises:
        UserError: unknown ``kind`` or keys that the kind does not take.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UserError(f"quantizer spec {spec!r} needs a 'kind' (one of {', '.join(_KINDS)})")
    kw = dict(spec)
    kind = kw.pop("kind")
    if kind not in _KINDS:
        raise UserError(
            f"quantizer kind {kind!r} is not known{did_you_mean(str(kind), list(_KINDS))}; valid: {', '.join(_KINDS)}"
        )
    cls = _KINDS[kind]
    import inspect

    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    extra = sorted(set(kw) - set(params))
    if extra:
        raise UserError(
            f"quantizer spec for kind {kind!r} has unknown key(s) {', '.join(extra)}; "
            f"valid: {', '.join(params) or '(none)'}"
        )
    return cls(**kw)
