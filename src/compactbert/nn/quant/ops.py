"""The arithmetic every quantizer kind shares: fp16-valued scales, straight-through gradients,
order-independent row sums, and optional ``torch.compile`` of a fake-quantization kernel.

These are plain functions of tensors; a kind (one file each in this package) combines them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ...errors import UserError

__all__ = [
    "FP16_MAX",
    "MIN_STEP",
    "fp16_values",
    "row_sum",
    "row_mean",
    "run_compiled",
    "ste",
    "StraightThrough",
    "StraightThroughClipped",
    "scale_grad",
    "numel",
    "rows_cols",
    "check_bits",
]

FP16_MAX = 65504.0
MIN_STEP = 2.0**-24  # smallest positive fp16 (subnormal); a divisor never goes below it


def fp16_values(s: torch.Tensor) -> torch.Tensor:
    """``s`` rounded to the nearest float16 value (kept in float32); straight-through gradient.

    The forward value is exactly ``fp16(s)``; the gradient w.r.t. ``s`` passes unchanged.
    """
    rounded = s.detach().clamp(-FP16_MAX, FP16_MAX).half().float()
    return rounded + (s - s.detach())


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """Sums over the last dimension (keepdim), accumulated in float64.

    A float32 sum depends on the order of its additions, which differs between PyTorch's eager
    kernels and the fused kernels ``torch.compile`` generates; a float64 sum of float32 values is
    exact for any realistic row, so the eager and the compiled quantizer (and the packer) agree
    bitwise. Returned in float64.
    """
    return x.sum(dim=-1, keepdim=True, dtype=torch.float64)


def row_mean(x: torch.Tensor) -> torch.Tensor:
    """Float32 mean over the last dimension (keepdim), order-independent (see :func:`row_sum`)."""
    return (row_sum(x) / x.shape[-1]).float()


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
        _COMPILE_BROKEN.append(f"{type(e).__name__}: {e}"[:300])
        warnings.warn(f"compiled quantizers unavailable, using eager ones (same results, slower): "
                      f"{_COMPILE_BROKEN[0]}", RuntimeWarning, stacklevel=2)
        return fn(*args)


def ste(value: torch.Tensor, x: torch.Tensor, grad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``value`` exactly in the forward pass, with d/dx = 1 (or ``grad_mask``) in backward.

    Written as ``value.detach() + (x - x.detach())`` rather than ``x + (value - x).detach()``: the
    second form can differ from ``value`` in the last bit, which would break exact packing.
    """
    passthrough = x - x.detach()  # exactly 0 forward, identity backward
    if grad_mask is not None:
        passthrough = passthrough * grad_mask
    return value.detach() + passthrough


class StraightThrough(torch.autograd.Function):
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


class StraightThroughClipped(torch.autograd.Function):
    """Like :class:`StraightThrough`, but ``fn(x)`` returns ``(value, inside)`` and the gradient
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


def scale_grad(s: torch.Tensor, g: float) -> torch.Tensor:
    """Forward: ``s`` exactly. Backward: the gradient times ``g`` (LSQ's step-size gradient scale)."""
    sg = s * g
    return s.detach() + (sg - sg.detach())


def numel(shape: torch.Size | tuple[int, ...]) -> int:
    return int(math.prod(shape))


def rows_cols(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """A weight of any rank as (rows, cols): rows = first dim, cols = the rest (1-D: one row)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], numel(shape[1:])


def check_bits(bits: Any, lo: int, hi: int, what: str) -> int:
    """``bits`` if it is an integer in ``lo..hi``, else a :class:`UserError` naming ``what``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise UserError(f"{what} bits={bits!r} is out of range; valid: integers {lo}..{hi}")
    return bits
