"""The linear layers and small kernels of the runtime, and why they are what they are.

Measured with ``benchmarks/kernels.py`` on the project's 2-core Xeon (AVX-512 VNNI, AMX bf16/int8),
MiniLM-L6 shapes, torch 2.13. The machine was shared with other jobs, so the decisive numbers are
CPU time of one thread (``--clock cpu``), side by side in one process::

    FFN up product, 4096 x 384 @ 384 x 1536   ms (GOP/s)   note
    FP32 F.linear                             38.0 (127)
    bf16 F.linear                              9.1 (533)    the bias is copied into the output first
    bf16 oneDNN, weight reordered at load      5.4 (893)    mkldnn._linear_pointwise: chosen
    int8 oneDNN qlinear, product only          3.9 (1254)   AMX int8: 1.4x bf16 ...
    int8 oneDNN + per-token act. quant        17.6 (275)    ... but quantizing activations costs 3x that
    int8 torch._int_mm + act. quant           63.5 (76)     int32 output, then scales: slowest

Whole MiniLM-L6 forward, speed-up over FP32 eager (1 thread, CPU time): this runtime in bf16 5.0x at
batch 32 x 128 and 3.3x at batch 1 x 128; Hugging Face in bf16 3.9x / 2.0x; ``torch.compile`` of the
bf16 model 3.7x / 2.4x (10-15 s compile per shape); ``torch.ao`` dynamic int8 1.7x / 1.9x; ONNX
Runtime dynamic int8 2.3x / 3.3x. The same lean encoder with int8 oneDNN linears (per-token or
per-tensor dynamic activation quantization) or fbgemm dynamic int8 was 1.2-1.5x slower than bf16 at
batch 1 and 2.5-3.5x slower at batch 32, and ``torch.compile`` of the lean encoder (with or without
weight freezing, static or dynamic shapes) was as fast at best and ~20% slower at batch 32 x 128 than
these eager oneDNN calls, besides compiling for 5-40 s.

So every weight, whatever its stored bit width, is unpacked at load to bf16 in oneDNN's blocked
layout, and ``torch.ops.mkldnn._linear_pointwise`` fuses bias, GELU/ReLU/SiLU and the residual add
into the product. What is left (1 thread, batch 32, per layer): attention (SDPA flash kernel, ~25%:
softmax over 128 keys dominates), the FFN products (~35%, of which the fused GELU is ~7%), QKV/output
products (~10%), LayerNorms (~5%).

On a CPU without native bf16 (no AVX512-BF16 / AMX) the runtime uses FP32 (``F.linear``), which is
also the exact reference path.

Models trained with 8-bit activation quantizers are the exception (:class:`Int8Linear`): dropping
their quantizers in bf16 changed 0.6-0.8% of SST-2 predictions, and emulating them in bf16 does not
help (rounding moves activations across code boundaries). Their products run on the integer codes
instead, in oneDNN's int8 linear (exact int32 sums, fp32 output), with float32 everywhere else: the
logits match the training-time FP32 model to ~1e-6 and the predictions agree 100% on SST-2 dev. The
price, measured on MiniLM-L6 (batch 32 x 128, 1 thread, CPU time): the FFN-up epilogue (scales,
bias, GELU in fp32) ~25%, the int8 products ~25%, fp32 attention ~25% of the time; about 2x FP32
eager in all, half the bf16 path's speed. Attention in bf16 there was 1.3x faster but agreed on only
99.5%, so it is not used.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.quant import ActivationQuantizer, quantizer_class
from ..nn.quant.ops import run_compiled

__all__ = ["cpu_has_native_bf16", "mkldnn_available", "onednn_int8_available", "onednn_int8_max_level", "Linear", "Int8Linear", "ActQuant",
           "activation_fn"]


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16): bf16 is then fast."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=None)
def mkldnn_available() -> bool:
    """True when PyTorch's oneDNN fused linear ops can be used here."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=torch.bfloat16), None)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8, dtype=torch.bfloat16), w, None, "none", [], "")
        return bool(torch.allclose(y.float(), torch.full((2, 8), 8.0)))
    except (RuntimeError, AttributeError):
        return False


def int8_product(codes: torch.Tensor, packed: torch.Tensor, row_scales: torch.Tensor,
                 zeros: torch.Tensor) -> torch.Tensor:
    """``(codes @ levels^T) * row_scales`` in float32 through oneDNN's int8 linear, exact (int32 sums).

    The int8 activation codes go in as uint8 ``codes + 128`` with a source zero point of 128: the
    same product, in the form every x86 oneDNN kernel takes (PyTorch's own x86 quantization uses
    uint8 activations). Signed int8 sources are multiplied by a fast kernel only on AMX; on an
    AVX-512 VNNI CPU without AMX (seen on an AMD EPYC, oneDNN 3.12) oneDNN has no brgemm kernel for
    them and falls back to its scalar reference matmul, ~4,500x slower on a 256x384 @ 384x1536
    product (3.2 s against 0.7 ms for the uint8 form).
    """
    shifted = torch.bitwise_xor(codes.view(torch.uint8), 128)  # two's complement: v ^ 0x80 == v + 128 (mod 256)
    return torch.ops.onednn.qlinear_pointwise(
        shifted, 1.0, 128, packed, row_scales, zeros, None, 1.0, 0, torch.float32, "none", [], "")


def _int8_product_exact(limit: int) -> bool:
    """Whether oneDNN's int8 product is exact for full-range activation codes and weight levels in
    [-limit, limit], the worst cases (all +-127 against all +-limit) included."""
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(-127, 128, (8, 128), dtype=torch.int8, generator=g)
        x[0], x[1] = 127, -127
        wt = torch.randint(-limit, limit + 1, (16, 128), dtype=torch.int8, generator=g)
        wt[0], wt[1] = limit, -limit
        w = torch.ops.onednn.qlinear_prepack(wt, None)
        y = int8_product(x, w, torch.ones(16), torch.zeros(16, dtype=torch.int64))
        return bool(torch.equal(y, x.double().matmul(wt.double().T).float()))
    except (RuntimeError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def onednn_int8_max_level() -> int:
    """The largest weight level ``L`` for which PyTorch's oneDNN int8 linear (``onednn.qlinear_pointwise``)
    is exact here with full-range int8 activations: 127, 64 or 0 (not usable).

    Exact means int32 accumulation. On CPUs with VNNI / AMX every int8 product is (127). On AVX2-only
    CPUs oneDNN multiplies through ``vpmaddubsw``: activations shifted to uint8 (0..255) times int8
    weights, pairs summed into int16 with saturation, so a product is exact only while
    ``2 * 255 * |level| <= 32767``, i.e. levels within +-64 (seen on an AVX2 EPYC: full-range levels
    were off by ~19,000 on a 4x64 @ 64x8 product; levels within +-64 were exact). Binary, ternary and
    up-to-7-bit weights therefore run as int8 products on such CPUs too; 8-bit weights keep the float32
    emulation of the same quantized arithmetic there (exact, slower).
    """
    for limit in (127, 64):
        if _int8_product_exact(limit):
            return limit
    return 0


def onednn_int8_available() -> bool:
    """True when oneDNN's int8 linear is exact for every int8 weight (VNNI / AMX CPUs); see
    :func:`onednn_int8_max_level` for the weights it is exact for elsewhere."""
    return onednn_int8_max_level() == 127


_TORCH_ACT = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}
# (attr, algorithm) of oneDNN's fused post-op
_MKLDNN_ACT = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "relu": ("relu", ""), "silu": ("swish", "")}


def activation_fn(name: str):
    """The element-wise function for an activation name (gelu, gelu_tanh, relu, silu, tanh)."""
    return _TORCH_ACT[name]


class ActQuant:
    """A packed activation quantizer as the runtime runs it: the training-time quantizer kind itself,
    rebuilt frozen from what the packed model stored (:meth:`~compactbert.nn.quant.base.ActivationQuantizer.from_packed`),
    so results are bitwise those of training.

    Args:
        spec: The quantizer's spec (with ``kind``).
        params: What it stored (a static range: ``scale``, ``zero_point``), float32 tensors.
    """

    def __init__(self, spec: dict[str, Any], params: dict[str, torch.Tensor] | None = None):
        kw = dict(spec)
        cls = quantizer_class(kw.pop("kind"), "activation quantizer kind")
        if not issubclass(cls, ActivationQuantizer):
            raise ValueError(f"{cls.kind!r} is not an activation quantizer")
        self.quantizer = cls.from_packed(kw, params or {})
        self.kind = cls.kind

    def key(self) -> tuple:
        """Equal keys quantize equal inputs equally (so Q/K/V can share one quantized input)."""
        return self.quantizer.runtime_key()

    @property
    def exact_int8(self) -> bool:
        """Whether :meth:`int8_codes` gives this quantization as int8 codes times a scale."""
        return self.quantizer.int8_exact

    def int8_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantizer.int8_codes(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.quantizer(x)


class Linear(nn.Module):
    """``y = act(x @ W^T + b) [+ residual]`` on one of two backends.

    Args:
        weight: (out, in) float32.
        bias: (out,) float32 or None.
        dtype: compute dtype (``torch.bfloat16`` or ``torch.float32``).
        backend: ``"mkldnn"`` (oneDNN, weight reordered once, fused post-ops) or ``"torch"``
            (``F.linear``; what ``torch.compile`` rewrites into fused oneDNN calls itself).
        act_quant: an :class:`ActQuant` applied to the input first, or None.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, backend: str,
                 act_quant: ActQuant | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.backend = backend
        self.act_quant = act_quant
        w = weight.to(dtype).contiguous()
        self.bias = nn.Parameter(bias.to(dtype).contiguous(), requires_grad=False) if bias is not None else None
        if backend == "mkldnn":
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w, None)  # oneDNN blocked layout
            self.weight = None
        elif backend == "torch":
            self.weight = nn.Parameter(w, requires_grad=False)
        else:
            raise ValueError(f"unknown backend {backend!r}")

    def forward(self, x: torch.Tensor, activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        # x: (tokens, in) -> (tokens, out)
        if self.act_quant is not None:
            x = self.act_quant(x)
        if self.backend == "mkldnn":
            if residual is not None and activation is None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")
            attr, alg = _MKLDNN_ACT[activation] if activation is not None else ("none", "")
            y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [], alg)
        else:
            y = F.linear(x, self.weight, self.bias)
            if activation is not None:
                y = _TORCH_ACT[activation](y)
        if residual is not None:
            y = y + residual
        return y


# ----------------------------------------------------------------------------- exact int8 products
def _epilogue(y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, act: str | None,
              residual: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    y = y * scale
    if bias is not None:
        y = y + bias
    if act is not None:
        y = _TORCH_ACT[act](y)
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype)


class Int8Linear(nn.Module):
    """``act(quant(x) @ W^T + b) [+ residual]`` with integer products, for layers trained with 8-bit
    activation quantization and weights with one scale per row (int8/int-k symmetric, ternary, binary).

    The activation codes and the weight levels are multiplied as integers by oneDNN's int8 linear
    (AMX / VNNI; int32 accumulation, exact), scaled by the weight's row scales inside the product and
    by the token's scale in the epilogue (with bias, activation and residual: one fused loop when
    ``torch.compile`` works, eager otherwise). Unlike a float product of the fake-quantized values, no
    rounding happens before the final scaling: the result matches the training-time FP32 model to
    ~1e-6 relative, which is what makes the packed model predict what the trained model predicts.

    Args:
        levels: (out, in) int8 integer weight levels.
        row_scales: (out,) float32: ``weight == levels * row_scales[:, None]``.
        bias: (out,) or None.
        act_quant: The layer's :class:`ActQuant` (dynamic per-token, or static symmetric).
        out_dtype: Dtype of the output (the encoder's compute dtype).
    """

    def __init__(self, levels: torch.Tensor, row_scales: torch.Tensor, bias: torch.Tensor | None, act_quant: ActQuant,
                 out_dtype: torch.dtype):
        super().__init__()
        if not act_quant.exact_int8:
            raise ValueError("Int8Linear needs symmetric activation quantization of at most 8 bits")
        self.out_features, self.in_features = levels.shape
        self.act_quant = act_quant
        self.out_dtype = out_dtype
        self.levels_max = int(levels.abs().max()) if levels.numel() else 0
        if self.levels_max > onednn_int8_max_level():
            raise ValueError(f"weight levels up to {self.levels_max} are not multiplied exactly by this CPU's "
                             f"int8 product (exact up to {onednn_int8_max_level()})")
        self.packed = torch.ops.onednn.qlinear_prepack(levels.to(torch.int8).contiguous(), None)
        self.register_buffer("w_scales", row_scales.float().contiguous())
        self.register_buffer("w_zero", torch.zeros(levels.shape[0], dtype=torch.int64))
        self.register_buffer("bias", bias.float().contiguous() if bias is not None else None)

    def forward(self, x: torch.Tensor, activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        codes, scale = self.act_quant.int8_codes(x)  # (tokens, 1) or one scale
        acc = int8_product(codes, self.packed, self.w_scales, self.w_zero)  # (tokens, out)
        return run_compiled(_epilogue, True, acc, scale, self.bias, activation, residual, self.out_dtype, dynamic=True)
