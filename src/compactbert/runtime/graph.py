"""An ONNX graph (opset 17) of a packed model, built from its decoded weights, for other engines
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
                 int8_codes: dict[str, tuple[Any, Any]] | None = None, int8_limit: int = 0):
        self.tensors, self.aq = tensors, act_quant
        self.codes, self.int8_limit = int8_codes or {}, int8_limit
        self.int8_linears: list[str] = []
        self.coded: dict[tuple, tuple[str, str]] = {}  # (input, quantizer key) -> (uint8 codes, scale)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0
        self.dropped: dict[str, list[str]] = {}
        self.quantized: dict[tuple, str] = {}  # (input, quantizer key) -> quantized input

    def fresh(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.astype(dtype)), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        from onnx import helper

        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

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
            codes, scale = emit(self, x, aq.quantizer)
            u8 = self.op("Cast", [self.op("Add", [codes, self.const(np.float32(128.0))])], to=2)  # UINT8
            self.coded[key] = (u8, scale)
        u8, scale = self.coded[key]
        w = self.const(levels.T.contiguous(), name.replace(".", "_") + "_levelsT", dtype=np.int8)
        zp = self.const(np.uint8(128), "zp128", dtype=np.uint8)
        acc = self.op("Cast", [self.op("MatMulInteger", [u8, w, zp])], to=1)  # FLOAT
        self.int8_linears.append(name)
        rs = self.const(row_scales.float(), name.replace(".", "_") + "_rs")
        return self.op("Mul", [self.op("Mul", [acc, scale]), rs])

    def linear(self, name: str, x: str, activation: str | None = None, residual: str | None = None) -> str:
        y = self.int8_product(name, x)
        if y is None:
            y = self.op("MatMul", [self.act_quant(name, x), self.weight(name)])
        bias = self.tensors.get(f"{name}.bias")
        if bias is not None:
            y = self.op("Add", [y, self.const(bias.float(), name.replace(".", "_") + "_b")])
        if activation is not None:
            y = self.activation(activation, y)
        return self.op("Add", [y, residual]) if residual is not None else y

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

    def layer_norm(self, prefix: str, x: str, eps: float) -> str:
        w = self.const(self.tensors[f"{prefix}.weight"].float(), prefix.replace(".", "_") + "_w")
        b = self.const(self.tensors[f"{prefix}.bias"].float(), prefix.replace(".", "_") + "_b")
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
    amax = g.op("ReduceMax", [g.op("Abs", [x])], axes=[-1], keepdims=1)
    scale = g.op("Max", [g.op("Div", [amax, g.const(np.float32(q.qmax))]), g.const(np.float32(1e-30))])
    return g.op("Mul", [g.op("Round", [g.op("Div", [x, scale])]), scale], hint="aq")


# kind -> fn(builder, x, quantizer) -> (float codes in [-127, 127], scale): the symmetric int8 form
# of an activation quantizer, for integer products (the same codes as the float ops above).
INT8_EMITTERS: dict[str, Callable[[_Builder, str, Any], tuple[str, str]]] = {}


def _dynamic_codes(g: _Builder, x: str, q) -> tuple[str, str]:
    amax = g.op("ReduceMax", [g.op("Abs", [x])], axes=[-1], keepdims=1)
    scale = g.op("Max", [g.op("Div", [amax, g.const(np.float32(q.qmax))]), g.const(np.float32(1e-30))])
    return g.op("Round", [g.op("Div", [x, scale])]), scale


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
        y = g.layer_norm(f"{p}.attn.ln", g.linear(f"{p}.attn.o", ctx, residual=res), eps)
    if width == 0:
        return g.layer_norm(f"{p}.ffn.ln", g.op("Add", [y, _constant(g, f"{p}.ffn.down.bias", hidden)]), eps)
    mid = g.linear(f"{p}.ffn.up", y, activation=str(cfg["hidden_act"]))
    return g.layer_norm(f"{p}.ffn.ln", g.linear(f"{p}.ffn.down", mid, residual=y), eps)


def build_graph(config: dict[str, Any], tensors: dict[str, Any], act_quant: dict[str, dict[str, Any]] | None = None,
                vocab_map=None, output: str = "logits", int8_codes: dict[str, tuple[Any, Any]] | None = None,
                int8_limit: int = 0) -> Graph:
    """The ONNX graph of a packed model (``PackedWeights.config``, ``.tensors``, ``.act_quant``,
    ``.vocab_map``): ``output="logits"`` (needs a head) or ``"states"`` (every token's last state).

    ``act_quant`` None (or ``{}``) builds the graph without activation quantizers. ``int8_codes``
    (``PackedWeights.row_codes``) with ``int8_limit`` > 0 (:func:`ort_int8_max_level`) makes every
    linear whose levels stay within the limit and whose input quantizer is symmetric int8 an integer
    product (``MatMulInteger``; :meth:`_Builder.int8_product`); the others stay float.
    """
    from onnx import TensorProto, helper

    if output not in ("logits", "states"):
        raise ValueError(f"output {output!r}; valid: logits, states")
    if output == "logits" and not config.get("head"):
        raise ValueError("the model has no classification head: build output='states'")
    g = _Builder(tensors, act_quant or {}, int8_codes, int8_limit)
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="compactbert")
    model.ir_version = 8
    return Graph(model, names, output, g.dropped, g.int8_linears)
