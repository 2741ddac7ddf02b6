"""An ONNX graph of a packed model, built from its decoded weights, for other engines
(ONNX Runtime, OpenVINO) to run: :func:`build_graph`.

What the graph computes is what :class:`~compactbert.runtime.encoder.LeanEncoder` computes on its
exact float32 path, op for op:

* **weights** are the packed tensors as the quantizers decode them (``PackedWeights.tensors``,
  float32: binary/ternary/int-k levels times their scales, exactly); pruned heads and neurons are
  absent (smaller matrices), a layer without heads or neurons adds its constant bias;
* **activation quantizers** run as trained, written as float ops: a ``dynamic_act`` input is
  ``Round(x / s) * s`` with ``s = max(ReduceMax(|x|) / qmax, 1e-30)`` per token, a ``static_act``
  one ``(Round(Clip(x / s + zp, qmin, qmax)) - zp) * s`` with its calibrated scale: the same float32
  operations as the training-time quantizer, so the same codes. A kind without an ONNX form here
  (see :data:`ACT_EMITTERS`, :func:`register_act_emitter`) is dropped and listed in
  :attr:`Graph.dropped` (the caller reports what that does to the predictions);
* the **last layer** computes only the ``[CLS]`` row of queries for logits (keys and values from every
  token), as the runtime does; the ``"states"`` graph keeps every token and has no head (what
  sentence embeddings pool).

``fused=True`` (what ONNX Runtime gets; opset 21 plus its ``com.microsoft`` operators) computes the
same with fewer, larger kernels: q/k/v that share an input are one product over their stacked rows,
split after; attention is one ``MultiHeadAttention`` with the key padding mask; bias + GELU is
``BiasGelu``, bias + residual + LayerNorm ``SkipLayerNormalization``; an integer product is
``MatMulIntegerToFloat`` (int32 sums times the row scales) and its per-token codes one
``QuantizeLinear`` with a block per token (the same division and round-half-even as the float ops).
OpenVINO gets the plain opset-17 graph.

Inputs: ``input_ids``, ``attention_mask`` and, when the model has token types, ``token_type_ids``
(int64, ``(batch, seq)``); output ``logits`` ``(batch, num_labels)`` or ``states``
``(batch, seq, hidden)``, float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Graph", "build_graph", "ACT_EMITTERS", "register_act_emitter", "OPSET"]

OPSET = 17
FUSED_OPSET = 21  # fused (ONNX Runtime) graphs: QuantizeLinear with per-token blocks
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's fused operators (``fused=True`` graphs only)
_F32_MIN = float(np.finfo(np.float32).min)


@dataclass
class Graph:
    """A built graph: ``model`` (``onnx.ModelProto``), its ``inputs`` and ``output`` names, and the
    activation quantizer kinds ``dropped`` (no ONNX form) with the linears they belonged to."""

    model: Any
    inputs: list[str]
    output: str
    dropped: dict[str, list[str]] = field(default_factory=dict)
    int8_linears: list[str] = field(default_factory=list)


class _Builder:
    """Nodes and initializers of one graph; every helper returns the name of its output."""

    def __init__(self, tensors: dict[str, Any], act_quant: dict[str, dict[str, Any]],
                 int8_codes: dict[str, tuple[Any, Any]] | None = None, int8_limit: int = 0, fused: bool = False):
        # copies: joint_linears adds stacked entries, which must not leak into the caller's dicts
        self.tensors, self.aq, self.fused = dict(tensors), dict(act_quant), fused
        self.opset = FUSED_OPSET if fused else OPSET
        self.codes, self.int8_limit = dict(int8_codes or {}), int8_limit
        self.int8_linears: list[str] = []
        self.coded: dict[tuple, tuple[str, str]] = {}  # (input, quantizer key) -> (uint8 codes, scale)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0
        self.dropped: dict[str, list[str]] = {}
        self.quantized: dict[tuple, str] = {}  # (input, quantizer key) -> quantized input
        self.shared: dict[str, str] = {}  # constants used by many nodes (zero point 128, 1.0)

    def fresh(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.astype(dtype)), name))
        return name

    def shared_const(self, key: str, value, dtype) -> str:
        """One initializer for a constant many nodes use (the zero point 128, 1.0)."""
        if key not in self.shared:
            self.shared[key] = self.const(value, key, dtype=dtype)
        return self.shared[key]

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, domain: str | None = None, **attrs) -> str:
        from onnx import helper

        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], domain=domain, **attrs))
        return out

    def amax(self, x: str) -> str:
        """``max |x|`` over the last axis, kept: ``(..., 1)``."""
        if self.opset >= 18:  # axes became an input
            return self.op("ReduceMax", [self.op("Abs", [x]), self.const([-1], "axes", np.int64)], keepdims=1)
        return self.op("ReduceMax", [self.op("Abs", [x])], axes=[-1], keepdims=1)

    def ms(self, op_type: str, inputs: list[str], **attrs) -> str:
        """A fused ONNX Runtime operator (domain ``com.microsoft``; only in ``fused`` graphs)."""
        return self.op(op_type, inputs, domain=MS_DOMAIN, **attrs)

    def weight(self, name: str) -> str:
        """``(in, out)`` initializer of linear ``name``'s weight (stored ``(out, in)``)."""
        return self.const(self.tensors[f"{name}.weight"].float().T.contiguous(), name.replace(".", "_") + "_wT")

    def act_quant(self, name: str, x: str) -> str:
        """``x`` through linear ``name``'s input quantizer (shared by linears with the same one)."""
        spec = self.aq.get(name)
        if not spec:
            return x
        from .kernels import ActQuant

        aq = ActQuant(spec["spec"], spec.get("params"))
        emit = ACT_EMITTERS.get(aq.kind)
        if emit is None:
            self.dropped.setdefault(aq.kind, []).append(name)
            return x
        key = (x, aq.key())
        if key not in self.quantized:
            self.quantized[key] = emit(self, x, aq.quantizer)
        return self.quantized[key]

    def int8_product(self, name: str, x: str) -> str | None:
        """``x @ W^T`` of linear ``name`` as an integer product, or None where it would not be exact.

        Exact: the weight has integer levels (``levels * row_scales``) within ``int8_limit`` (what
        this CPU's u8 x s8 product sums without int16 saturation) and the input quantizer gives
        symmetric int8 codes (``codes * scale``). The codes shifted by 128 are uint8 (zero point
        128), ``MatMulInteger`` sums ``codes x levels`` exactly in int32, and ``acc * scale *
        row_scales`` is the product of the dequantized operands, as the runtime's ``Int8Linear``.
        """
        code, spec = self.codes.get(f"{name}.weight"), self.aq.get(name)
        if code is None or not spec or not self.int8_limit:
            return None
        levels, row_scales = code
        if int(levels.abs().max()) > self.int8_limit:
            return None
        from .kernels import ActQuant

        aq = ActQuant(spec["spec"], spec.get("params"))
        emit = INT8_EMITTERS.get(aq.kind)
        if emit is None or not aq.exact_int8:
            return None
        key = (x, aq.key())
        if key not in self.coded:
            if self.fused and aq.kind == "dynamic_act":
                self.coded[key] = _dynamic_u8(self, x, aq.quantizer, int(levels.shape[1]))
            else:
                codes, scale = emit(self, x, aq.quantizer)
                u8 = self.op("Cast", [self.op("Add", [codes, self.const(np.float32(128.0))])], to=2)  # UINT8
                self.coded[key] = (u8, scale)
        u8, scale = self.coded[key]
        w = self.const(levels.T.contiguous(), name.replace(".", "_") + "_levelsT", dtype=np.int8)
        zp = self.shared_const("zp128", np.uint8(128), np.uint8)
        self.int8_linears.append(name)
        rs = self.const(row_scales.float(), name.replace(".", "_") + "_rs")
        if self.fused:  # one kernel: int32 sums times the row scales (a_scale 1: exact), then the token scales
            one = self.shared_const("one", np.float32(1.0), np.float32)
            return self.op("Mul", [self.ms("MatMulIntegerToFloat", [u8, w, one, rs, zp]), scale])
        acc = self.op("Cast", [self.op("MatMulInteger", [u8, w, zp])], to=1)  # FLOAT
        return self.op("Mul", [self.op("Mul", [acc, scale]), rs])

    def product(self, name: str, x: str) -> str:
        """``x @ W^T`` of linear ``name`` (integer where exact, else float), without its bias."""
        y = self.int8_product(name, x)
        return y if y is not None else self.op("MatMul", [self.act_quant(name, x), self.weight(name)])

    def bias(self, name: str) -> str | None:
        b = self.tensors.get(f"{name}.bias")
        return None if b is None else self.const(b.float(), name.replace(".", "_") + "_b")

    def linear(self, name: str, x: str, activation: str | None = None, residual: str | None = None) -> str:
        y, bias = self.product(name, x), self.bias(name)
        if self.fused and activation == "gelu" and residual is None:
            return self.ms("BiasGelu", [y, bias]) if bias is not None else self.ms("Gelu", [y])
        if bias is not None:
            y = self.op("Add", [y, bias])
        if activation is not None:
            y = self.activation(activation, y)
        return self.op("Add", [y, residual]) if residual is not None else y

    def joint_linears(self, names: list[str], x: str) -> list[str]:
        """``x @ W_i^T + b_i`` of linears sharing the input ``x`` as one product over their stacked
        rows, split after (each row's arithmetic is unchanged: same codes, levels, scales and bias);
        separate linears when they cannot be stacked (different input quantizers, some integer and
        some not, a missing bias)."""
        import torch

        aq = [self.aq.get(n) for n in names]
        codes = [self.codes.get(f"{n}.weight") for n in names]
        biases = [self.tensors.get(f"{n}.bias") for n in names]
        same_aq = all(a == aq[0] for a in aq)
        exact = [c is not None and bool(aq[0]) and self.int8_limit and int(c[0].abs().max()) <= self.int8_limit
                 for c in codes]
        if not same_aq or len(set(exact)) != 1 or any(b is None for b in biases):
            return [self.linear(n, x) for n in names]
        joint = "+".join(names)
        widths = [int(self.tensors[f"{n}.weight"].shape[0]) for n in names]
        self.tensors[f"{joint}.weight"] = torch.cat([self.tensors[f"{n}.weight"] for n in names])
        self.tensors[f"{joint}.bias"] = torch.cat(biases)
        if aq[0]:
            self.aq[joint] = aq[0]
        if exact[0]:
            self.codes[f"{joint}.weight"] = (torch.cat([c[0] for c in codes]), torch.cat([c[1] for c in codes]))
        before = len(self.int8_linears)
        y = self.linear(joint, x)
        if len(self.int8_linears) > before:  # an integer product: reported per linear, as before
            self.int8_linears[before:] = names
        outs = [self.fresh("split") for _ in names]
        from onnx import helper

        self.nodes.append(helper.make_node("Split", [y, self.const(widths, "widths", np.int64)], outs, axis=-1))
        return outs

    def linear_norm(self, name: str, x: str, residual: str, prefix: str, eps: float) -> str:
        """``LayerNorm(x @ W^T + b + residual)`` (one ``SkipLayerNormalization`` in fused graphs)."""
        if not self.fused:
            return self.layer_norm(prefix, self.linear(name, x, residual=residual), eps)
        w, b = self.norm_params(prefix)
        y, bias = self.product(name, x), self.bias(name)
        return self.ms("SkipLayerNormalization", [y, residual, w, b] + ([bias] if bias is not None else []),
                       epsilon=eps)

    def activation(self, act: str, x: str) -> str:
        if act == "gelu":  # erf form (what F.gelu computes); ORT and OpenVINO fuse it into one Gelu
            inner = self.op("Erf", [self.op("Mul", [x, self.const(np.float32(1 / math.sqrt(2)))])])
            half = self.op("Mul", [x, self.const(np.float32(0.5))])
            return self.op("Mul", [half, self.op("Add", [inner, self.const(np.float32(1.0))])])
        if act == "gelu_tanh":
            cube = self.op("Mul", [self.op("Mul", [x, x]), x])
            inner = self.op("Add", [x, self.op("Mul", [cube, self.const(np.float32(0.044715))])])
            t = self.op("Tanh", [self.op("Mul", [inner, self.const(np.float32(math.sqrt(2 / math.pi)))])])
            half = self.op("Mul", [x, self.const(np.float32(0.5))])
            return self.op("Mul", [half, self.op("Add", [t, self.const(np.float32(1.0))])])
        if act == "relu":
            return self.op("Relu", [x])
        if act == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        if act == "tanh":
            return self.op("Tanh", [x])
        raise ValueError(f"activation {act!r} has no ONNX form here")

    def norm_params(self, prefix: str) -> tuple[str, str]:
        w = self.const(self.tensors[f"{prefix}.weight"].float(), prefix.replace(".", "_") + "_w")
        b = self.const(self.tensors[f"{prefix}.bias"].float(), prefix.replace(".", "_") + "_b")
        return w, b

    def layer_norm(self, prefix: str, x: str, eps: float) -> str:
        w, b = self.norm_params(prefix)
        return self.op("LayerNormalization", [x, w, b], axis=-1, epsilon=eps)


# ----------------------------------------------------------------------------- activation quantizers
ACT_EMITTERS: dict[str, Callable[[_Builder, str, Any], str]] = {}


def register_act_emitter(kind: str):
    """Decorator: ``fn(builder, x, quantizer) -> output`` writes activation quantizer ``kind`` as
    ONNX ops (``quantizer`` is the frozen training-time quantizer the runtime rebuilds)."""
    def wrap(fn):
        ACT_EMITTERS[kind] = fn
        return fn
    return wrap


@register_act_emitter("dynamic_act")
def _dynamic_act(g: _Builder, x: str, q) -> str:
    # compactbert.nn.quant.dynamic.dynamic_act_codes: scale = max|x| / qmax (>= 1e-30), round(x / scale) * scale
    scale = _dynamic_scale(g, x, q)
    return g.op("Mul", [g.op("Round", [g.op("Div", [x, scale])]), scale], hint="aq")


def _dynamic_scale(g: _Builder, x: str, q) -> str:
    return g.op("Max", [g.op("Div", [g.amax(x), g.const(np.float32(q.qmax))]), g.const(np.float32(1e-30))])


# kind -> fn(builder, x, quantizer) -> (float codes in [-127, 127], scale): the symmetric int8 form
# of an activation quantizer, for integer products (the same codes as the float ops above).
INT8_EMITTERS: dict[str, Callable[[_Builder, str, Any], tuple[str, str]]] = {}


def _dynamic_codes(g: _Builder, x: str, q) -> tuple[str, str]:
    scale = _dynamic_scale(g, x, q)
    return g.op("Round", [g.op("Div", [x, scale])]), scale


def _dynamic_u8(g: _Builder, x: str, q, width: int) -> tuple[str, str]:
    """Fused graphs: the codes + 128 as uint8 by one ``QuantizeLinear`` with a block per token
    (``saturate(round_half_even(x / scale) + 128)``: the same division and rounding as above)."""
    scale = _dynamic_scale(g, x, q)
    zp = g.op("Expand", [g.shared_const("zp128", np.uint8(128), np.uint8), g.op("Shape", [scale])])
    return g.op("QuantizeLinear", [x, scale, zp], axis=-1, block_size=width), scale


def _static_codes(g: _Builder, x: str, q) -> tuple[str, str]:
    scale_v, zp_v = q.fixed
    if zp_v is not None:
        raise ValueError("asymmetric static activations have no int8 codes")
    scale = g.const(np.float32(float(scale_v)))
    v = g.op("Div", [x, scale])
    return g.op("Round", [g.op("Clip", [v, g.const(np.float32(q.qmin)), g.const(np.float32(q.qmax))])]), scale


INT8_EMITTERS.update({"dynamic_act": _dynamic_codes, "static_act": _static_codes})


@register_act_emitter("static_act")
def _static_act(g: _Builder, x: str, q) -> str:
    # compactbert.nn.quant.static.static_act_fake with the packed (frozen) scale and zero point
    scale_v, zp_v = q.fixed
    scale = g.const(np.float32(float(scale_v)))
    v = g.op("Div", [x, scale])
    zp = g.const(np.float32(float(zp_v))) if zp_v is not None else None
    if zp is not None:
        v = g.op("Add", [v, zp])
    codes = g.op("Round", [g.op("Clip", [v, g.const(np.float32(q.qmin)), g.const(np.float32(q.qmax))])])
    if zp is not None:
        codes = g.op("Sub", [codes, zp])
    return g.op("Mul", [codes, scale], hint="aq")


# ----------------------------------------------------------------------------- the encoder
def _embeddings(g: _Builder, cfg: dict[str, Any], vocab_map, has_types: bool) -> str:
    ids = "input_ids"
    if vocab_map is not None:
        ids = g.op("Gather", [g.const(vocab_map, "vocab_map", np.int64), ids])
    word = g.const(g.tensors["emb.word.weight"].float(), "word")
    x = g.op("Gather", [word, ids])  # (b, s, emb)
    if has_types:
        x = g.op("Add", [x, g.op("Gather", [g.const(g.tensors["emb.token_type.weight"].float(), "tt"), "token_type_ids"])])
    table = g.const(g.tensors["emb.position.weight"].float(), "position")
    if cfg.get("position_style", "absolute") == "roberta":
        pad = int(cfg["pad_token_id"])
        not_pad = g.op("Cast", [g.op("Not", [g.op("Equal", ["input_ids", g.const(np.int64(pad), dtype=np.int64)])])], to=7)
        pos = g.op("Mul", [g.op("CumSum", [not_pad, g.const(np.int64(1), dtype=np.int64)]), not_pad])
        pos = g.op("Add", [pos, g.const(np.int64(pad), dtype=np.int64)])
        x = g.op("Add", [x, g.op("Gather", [table, pos])])
    else:
        seq = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const([1], dtype=np.int64), g.const([2], dtype=np.int64)])
        x = g.op("Add", [x, g.op("Slice", [table, g.const([0], dtype=np.int64), seq, g.const([0], dtype=np.int64)])])
    x = g.layer_norm("emb.ln", x, float(cfg["layer_norm_eps"]))
    return g.linear("emb.proj", x) if "emb.proj.weight" in g.tensors else x


def _heads(g: _Builder, x: str, h: int, d: int, last_dims: list[int]) -> str:
    """(b, s, h*d) -> (b, h, s, d) (``last_dims`` = [0, 2, 1, 3]) or (b, h, d, s) ([0, 2, 3, 1])."""
    shaped = g.op("Reshape", [x, g.const([0, 0, h, d], dtype=np.int64)])
    return g.op("Transpose", [shaped], perm=last_dims)


def _attention(g: _Builder, p: str, x: str, q_in: str, mask: str, h: int, d: int) -> str:
    """Context ``(b, sq, h*d)`` of layer ``p``: queries from ``q_in``, keys and values from ``x``."""
    if g.fused:  # ONNX Runtime: q/k/v as one product where they share an input, one attention kernel
        names = [f"{p}.attn.{n}" for n in ("q", "k", "v")]
        if q_in == x:
            q, k, v = g.joint_linears(names, x)
        else:
            q, (k, v) = g.linear(names[0], q_in), g.joint_linears(names[1:], x)
        if "key_mask" not in g.shared:
            g.shared["key_mask"] = g.op("Cast", ["attention_mask"], to=6)  # INT32, (b, s): 1 token, 0 padding
        return g.ms("MultiHeadAttention", [q, k, v, "", g.shared["key_mask"]], num_heads=h,
                    scale=1 / math.sqrt(d), mask_filter_value=_F32_MIN)
    q = _heads(g, g.linear(f"{p}.attn.q", q_in), h, d, [0, 2, 1, 3])
    k = _heads(g, g.linear(f"{p}.attn.k", x), h, d, [0, 2, 3, 1])
    v = _heads(g, g.linear(f"{p}.attn.v", x), h, d, [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.float32(1 / math.sqrt(d)))])
    probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])  # (b, sq, h, d)
    return g.op("Reshape", [ctx, g.const([0, 0, h * d], dtype=np.int64)])


def _constant(g: _Builder, name: str, hidden: int) -> str:
    bias = g.tensors.get(name)
    return g.const(bias.float() if bias is not None else np.zeros(hidden, np.float32))


def _layer(g: _Builder, cfg: dict[str, Any], i: int, x: str, mask: str, cls_only: bool) -> str:
    p, eps, hidden, d = f"layer.{i}", float(cfg["layer_norm_eps"]), int(cfg["hidden_size"]), int(cfg["head_dim"])
    heads, width = int(cfg["heads_per_layer"][i]), int(cfg["ffn_per_layer"][i])
    res = x
    if cls_only:  # (b, 1, hidden): only [CLS] is read after the last layer
        res = g.op("Slice", [x, g.const([0], dtype=np.int64), g.const([1], dtype=np.int64), g.const([1], dtype=np.int64)])
    if heads == 0:
        y = g.layer_norm(f"{p}.attn.ln", g.op("Add", [res, _constant(g, f"{p}.attn.o.bias", hidden)]), eps)
    else:
        ctx = _attention(g, p, x, res, mask, heads, d)
        y = g.linear_norm(f"{p}.attn.o", ctx, res, f"{p}.attn.ln", eps)
    if width == 0:
        return g.layer_norm(f"{p}.ffn.ln", g.op("Add", [y, _constant(g, f"{p}.ffn.down.bias", hidden)]), eps)
    mid = g.linear(f"{p}.ffn.up", y, activation=str(cfg["hidden_act"]))
    return g.linear_norm(f"{p}.ffn.down", mid, y, f"{p}.ffn.ln", eps)


def build_graph(config: dict[str, Any], tensors: dict[str, Any], act_quant: dict[str, dict[str, Any]] | None = None,
                vocab_map=None, output: str = "logits", int8_codes: dict[str, tuple[Any, Any]] | None = None,
                int8_limit: int = 0, fused: bool = False) -> Graph:
    """The ONNX graph of a packed model (``PackedWeights.config``, ``.tensors``, ``.act_quant``,
    ``.vocab_map``): ``output="logits"`` (needs a head) or ``"states"`` (every token's last state).

    ``act_quant`` None (or ``{}``) builds the graph without activation quantizers. ``int8_codes``
    (``PackedWeights.row_codes``) with ``int8_limit`` > 0 (:func:`ort_int8_max_level`) makes every
    linear whose levels stay within the limit and whose input quantizer is symmetric int8 an integer
    product (``MatMulInteger``, or ``MatMulIntegerToFloat`` when ``fused``; :meth:`_Builder.int8_product`);
    the others stay float. ``fused`` builds ONNX Runtime's form (see the module's docstring).
    """
    from onnx import TensorProto, helper

    if output not in ("logits", "states"):
        raise ValueError(f"output {output!r}; valid: logits, states")
    if output == "logits" and not config.get("head"):
        raise ValueError("the model has no classification head: build output='states'")
    g = _Builder(tensors, act_quant or {}, int8_codes, int8_limit, fused)
    has_types = "emb.token_type.weight" in tensors
    x = _embeddings(g, config, vocab_map, has_types)
    keep = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.const([1, 2], dtype=np.int64)])], to=1)  # (b,1,1,s)
    mask = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), keep]), g.const(np.float32(_F32_MIN))])
    n = len(config["heads_per_layer"])
    for i in range(n):
        x = _layer(g, config, i, x, mask, cls_only=(output == "logits" and i == n - 1))
    if output == "logits":
        cls = g.op("Reshape", [x if n else g.op("Slice", [x, g.const([0], dtype=np.int64), g.const([1], dtype=np.int64),
                                                         g.const([1], dtype=np.int64)]),
                               g.const([0, -1], dtype=np.int64)])  # (b, hidden)
        if "head.dense.weight" in tensors:
            head_act = (config.get("head") or {}).get("activation")
            cls = g.linear("head.dense", cls, activation=head_act)
        x = g.linear("head.out", cls)
    out_node = helper.make_node("Identity", [x], [output])
    g.nodes.append(out_node)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if has_types else [])
    inputs = [helper.make_tensor_value_info(nm, TensorProto.INT64, ["batch", "seq"]) for nm in names]
    shape = ["batch", int(config["num_labels"])] if output == "logits" else ["batch", "seq", int(config["hidden_size"])]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)]
    graph = helper.make_graph(g.nodes, f"compactbert-{output}", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", g.opset)] + ([helper.make_opsetid(MS_DOMAIN, 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="compactbert")
    model.ir_version = 10 if fused else 8
    return Graph(model, names, output, g.dropped, g.int8_linears)
