"""The packed format: a folder that is really as small as the compressed model, and checks itself.

A packed directory holds::

    manifest.json        format name + version, per-tensor encoding, sha256 and size of every file
    model.safetensors    packed integer codes (uint8), fp16 scales, bitmasks, dense fp16/fp32 tensors
    config.json          the encoder's shape after physical removal (per-layer heads and FFN widths)
    tokenizer/           tokenizer files (xz-compressed by default)

Loading (:func:`read_packed`) checks the manifest's format and version, then the size and sha256 of
every file it lists; a tampered, truncated or missing file or an unknown version raises
:class:`~compactbert.errors.UserError` with one line naming the problem. Only JSON and safetensors
are read: nothing is unpickled.

What export does (:func:`export_packed`):

* **Physical removal.** An attention head is dropped (its Q/K/V rows and attention-output columns)
  when its value rows or its output columns are all zero in the effective (masked, quantized)
  weights. A head whose value weight is zero still adds the constant ``W_o[:, head] @ b_v[head]``
  (softmax weights sum to 1), which is folded into the output bias. An FFN neuron is dropped when its
  row of the first matrix or its column of the second is all zero; the constant
  ``W_2[:, j] * act(b_1[j])`` of a zero row is folded into the second bias. Layers that layer
  reduction removed are simply absent. Without activation quantization this is exact up to float
  rounding; with dynamic activation quantization the per-token range of the next layer's input can
  change where a dropped constant was the largest entry.
* **Weights.** Each weight is stored in the smallest of three encodings (the rule of
  :mod:`compactbert.size`): ``dense`` (all codes), ``rows`` (a structured mask: the kept block plus
  row and column bitmaps) or ``bitmask`` (a 1-bit mask plus the codes of the kept entries). Codes of a
  quantized weight are packed at the quantizer's bits (:mod:`.bits`), with fp16 scales (and zero
  points) in the quantizer's layout (per tensor, row or group). Weights without a quantizer, and all
  other tensors, are stored as ``float_dtype`` (fp16 by default; fp32 on request or where a value
  would overflow fp16). Decoding a quantized weight gives bitwise the value the training-time layer
  used (``integer level * scale`` in float32), so the FP32 runtime reproduces the training-time logits.
* **Vocabulary pruning** (``prune_vocab_texts``): only the embedding rows of tokens that occur in the
  given texts (plus special tokens) are kept; a bitmap over the original vocabulary records which,
  and the runtime remaps token ids through it, so the tokenizer itself is unchanged and tokenizes
  exactly as before. A token never seen reads as ``[UNK]`` (``unseen_tokens="unk"``) or as the kept
  token with the closest original embedding (``"nearest"``, a 2-byte map per original token).

Manifest entry of one tensor (``manifest["tensors"][name]``)::

    {"shape": [768, 768], "encoding": "dense" | "rows" | "bitmask", "bits": 2, "source": "bert....weight",
     "quant": {"kind": "ternary", "level_step": 1, "level_offset": -1, "scale_layout": "row",
               "group_size": null, "zero_points": false, "spec": {...}} | null,
     "dtype": "float16" (values of unquantized tensors) | null,
     "parts": {"codes": "<key in model.safetensors>", "scales": ..., ...}, "bytes": 147648}

A quantized value is ``(stored * level_step + level_offset - zero_point) * scale``.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..fileio import sha256_file
from ..errors import UserError
from .bits import pack_bits, pack_mask, unpack_bits, unpack_mask

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "TOKENIZER_DIR",
    "export_packed",
    "read_packed",
    "verify_packed",
    "load_packed_tokenizer",
    "packed_size",
    "PackedWeights",
    "model_layout",
]

FORMAT_NAME = "compactbert-packed"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
_FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_FP16_MAX = 65504.0

# hidden_act spellings -> the runtime's activation names
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


# ============================================================================ model layout
@dataclass
class Layout:
    """Where each part of a supported encoder lives, under canonical names.

    Attributes:
        arch: ``"bert"`` (BERT, MiniLM, ELECTRA: BERT layout), ``"roberta"`` or ``"distilbert"``.
        modules: canonical name -> module. Linear/Embedding parts: ``emb.word``, ``emb.position``,
            ``emb.token_type`` (optional), ``emb.proj`` (ELECTRA, optional), ``layer.{i}.attn.{q,k,v,o}``,
            ``layer.{i}.ffn.{up,down}``, ``head.dense`` (optional), ``head.out``; LayerNorms
            ``emb.ln``, ``layer.{i}.attn.ln``, ``layer.{i}.ffn.ln``.
        config: the runtime config (JSON-able) before physical removal.
    """

    arch: str
    modules: dict[str, nn.Module]
    config: dict[str, Any]
    num_layers: int = 0


def _linear_like(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def model_layout(model: nn.Module) -> Layout:
    """Map a Hugging Face sequence-classification model onto the canonical layout.

    Supported: BERT-layout models (BERT, MiniLM, ELECTRA), RoBERTa-layout ones (RoBERTa, XLM-R,
    CamemBERT) and DistilBERT, with their ``...ForSequenceClassification`` heads; compressed layers
    (:class:`~compactbert.nn.compressed.CompressedLinear` etc.) are plain subclasses and fit anywhere.

    Raises:
        UserError: the model is not one of those.
    """
    cfg = getattr(model, "config", None)
    base = getattr(model, "base_model", None)
    if cfg is None or base is None or base is model:
        raise UserError(
            f"cannot export {type(model).__name__}: expected a Hugging Face ...ForSequenceClassification "
            "model (BERT, MiniLM, ELECTRA, RoBERTa or DistilBERT)"
        )
    mt = str(getattr(cfg, "model_type", ""))
    mods: dict[str, nn.Module] = {}
    emb = getattr(base, "embeddings", None)
    if emb is None:
        raise UserError(f"cannot export model_type {mt!r}: its base model has no 'embeddings'")
    mods["emb.word"] = emb.word_embeddings
    mods["emb.position"] = emb.position_embeddings
    if getattr(emb, "token_type_embeddings", None) is not None:
        mods["emb.token_type"] = emb.token_type_embeddings
    mods["emb.ln"] = emb.LayerNorm

    if mt == "distilbert":
        arch = "distilbert"
        layers = base.transformer.layer
        for i, lay in enumerate(layers):
            a = lay.attention
            mods.update({
                f"layer.{i}.attn.q": a.q_lin, f"layer.{i}.attn.k": a.k_lin, f"layer.{i}.attn.v": a.v_lin,
                f"layer.{i}.attn.o": a.out_lin, f"layer.{i}.attn.ln": lay.sa_layer_norm,
                f"layer.{i}.ffn.up": lay.ffn.lin1, f"layer.{i}.ffn.down": lay.ffn.lin2,
                f"layer.{i}.ffn.ln": lay.output_layer_norm,
            })
        hidden, heads = int(cfg.dim), int(cfg.n_heads)
        act_name, eps = str(cfg.activation), 1e-12
        type_vocab = 0
    else:
        encoder = getattr(base, "encoder", None)
        if encoder is None or not hasattr(encoder, "layer"):
            raise UserError(f"cannot export model_type {mt!r}: expected a BERT-style 'encoder.layer' list")
        arch = "roberta" if hasattr(emb, "padding_idx") and mt != "bert" else "bert"
        pe = getattr(cfg, "position_embedding_type", "absolute")
        if pe not in (None, "absolute"):
            raise UserError(f"cannot export position_embedding_type={pe!r}; only 'absolute' is supported")
        if getattr(base, "embeddings_project", None) is not None:
            mods["emb.proj"] = base.embeddings_project
        for i, lay in enumerate(encoder.layer):
            s, o = lay.attention.self, lay.attention.output
            mods.update({
                f"layer.{i}.attn.q": s.query, f"layer.{i}.attn.k": s.key, f"layer.{i}.attn.v": s.value,
                f"layer.{i}.attn.o": o.dense, f"layer.{i}.attn.ln": o.LayerNorm,
                f"layer.{i}.ffn.up": lay.intermediate.dense, f"layer.{i}.ffn.down": lay.output.dense,
                f"layer.{i}.ffn.ln": lay.output.LayerNorm,
            })
        layers = encoder.layer
        hidden, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
        act_name, eps = str(cfg.hidden_act), float(cfg.layer_norm_eps)
        type_vocab = int(getattr(cfg, "type_vocab_size", 0) or 0) if "emb.token_type" in mods else 0

    if act_name not in _ACTIVATIONS:
        raise UserError(f"cannot export hidden activation {act_name!r}; supported: {', '.join(_ACTIVATIONS)}")

    # classification head
    clf = getattr(model, "classifier", None)
    if _linear_like(clf) and _linear_like(getattr(model, "pre_classifier", None)):
        mods["head.dense"], mods["head.out"], head_act = model.pre_classifier, clf, "relu"
    elif _linear_like(clf) and getattr(base, "pooler", None) is not None:
        mods["head.dense"], mods["head.out"], head_act = base.pooler.dense, clf, "tanh"
    elif clf is not None and _linear_like(getattr(clf, "dense", None)) and _linear_like(getattr(clf, "out_proj", None)):
        mods["head.dense"], mods["head.out"] = clf.dense, clf.out_proj
        head_act = "gelu" if mt == "electra" else "tanh"
    else:
        raise UserError(
            f"cannot export {type(model).__name__}: its classification head is not the standard one of "
            "BERT/RoBERTa/ELECTRA/DistilBERT ...ForSequenceClassification"
        )

    if hidden % heads:
        raise UserError(f"hidden size {hidden} is not a multiple of the {heads} attention heads")
    id2label = getattr(cfg, "id2label", None) or {}
    config = {
        "format": FORMAT_NAME,
        "arch": arch,
        "model_type": mt,
        "hidden_size": hidden,
        "embedding_size": int(mods["emb.word"].weight.shape[1]),
        "head_dim": hidden // heads,
        "num_layers": len(layers),
        "hidden_act": _ACTIVATIONS[act_name],
        "layer_norm_eps": eps,
        "vocab_size": int(mods["emb.word"].weight.shape[0]),
        "max_position_embeddings": int(mods["emb.position"].weight.shape[0]),
        "type_vocab_size": type_vocab,
        "pad_token_id": int(getattr(cfg, "pad_token_id", 0) or 0),
        "position_style": "roberta" if arch == "roberta" else "absolute",
        "head": {"activation": head_act},
        "num_labels": int(mods["head.out"].weight.shape[0]),
        "problem_type": getattr(cfg, "problem_type", None),
        "id2label": {str(k): str(v) for k, v in id2label.items()},
    }
    return Layout(arch=arch, modules=mods, config=config, num_layers=len(layers))


# ============================================================================ one weight
@dataclass
class _Quant:
    """Integer codes of a weight and how to turn them back into floats."""

    stored: torch.Tensor  # (rows, cols) int64 in [0, 2^bits - 1]: code - lowest
    scales: torch.Tensor  # (1,) | (rows,) | (rows, groups) float32 (fp16 values)
    zero_points: torch.Tensor | None  # same layout as scales, integer-valued
    bits: int
    level_step: int
    level_offset: int
    layout: str  # tensor | row | group
    group_size: int | None
    spec: dict[str, Any]
    represents_zero: bool
    src_cols: torch.Tensor | None = None  # original column index of each column (group layout only)


@dataclass
class _Weight:
    """A weight as the runtime sees it: effective float values plus how to store them compactly."""

    eff: torch.Tensor  # float32, the exact weight the training-time forward uses
    mask: torch.Tensor | None  # bool, kept entries (None: unpruned)
    quant: _Quant | None
    bias: torch.Tensor | None  # float32
    source: str
    act: dict[str, Any] | None = None  # input quantizer: {"spec", "scale", "zero_point"}

    def select(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> "_Weight":
        """The weight restricted to ``rows`` (output features) and/or ``cols`` (input features)."""
        r = slice(None) if rows is None else rows
        c = slice(None) if cols is None else cols
        eff = self.eff[r][:, c]
        mask = self.mask[r][:, c] if self.mask is not None else None
        q = self.quant
        if q is not None:
            scales, zp = q.scales, q.zero_points
            if q.layout in ("row", "group") and rows is not None:
                scales = scales[rows]
                zp = zp[rows] if zp is not None else None
            src = q.src_cols
            if cols is not None and q.layout == "group":
                base = src if src is not None else torch.arange(q.stored.shape[1])
                src = base[cols]
            q = _Quant(
                stored=q.stored[r][:, c], scales=scales, zero_points=zp, bits=q.bits, level_step=q.level_step,
                level_offset=q.level_offset, layout=q.layout, group_size=q.group_size, spec=q.spec,
                represents_zero=q.represents_zero, src_cols=src,
            )
        bias = self.bias[r] if (self.bias is not None and rows is not None) else self.bias
        return _Weight(eff=eff, mask=mask, quant=q, bias=bias, source=self.source, act=self.act)


def _level_rule(kind: str, lowest: int) -> tuple[int, int]:
    """(level_step, level_offset) so that level = stored * step + offset (before the zero point)."""
    code_offset = lowest  # stored = code - lowest
    if kind == "binary":  # value = (2 * code - 1) * scale
        return 2, 2 * code_offset - 1
    if kind == "ternary":  # value = (code - 1) * scale
        return 1, code_offset - 1
    return 1, code_offset  # int: value = (code - zero_point) * scale


def _scale_layout(spec: dict[str, Any], scales: torch.Tensor, shape: tuple[int, ...]) -> str:
    gran = spec.get("granularity", "row")
    if gran in ("tensor", "row", "group"):
        return gran
    return "row" if scales.numel() == shape[0] else "tensor"


def _extract(module: nn.Module, source: str) -> _Weight:
    """Read a Linear / Embedding (compressed or not) into a :class:`_Weight` (full shape)."""
    w = module.weight.detach().float().cpu()
    if w.dim() != 2:
        raise UserError(f"{source}: expected a 2-D weight, got shape {tuple(w.shape)}")
    mask_t = getattr(module, "weight_mask", None)
    mask = (mask_t.detach().cpu() != 0) if mask_t is not None else None
    wm = w * mask.float() if mask is not None else w
    q = getattr(module, "weight_quantizer", None)
    quant = None
    eff = wm
    if q is not None:
        codes, scales, zp = q.quantize_ints(wm)
        spec = q.spec()
        lowest, highest = q.code_range()
        stored = codes.detach().cpu().to(torch.int64) - lowest
        if stored.numel() and (int(stored.min()) < 0 or int(stored.max()) >= 2**q.bits):
            raise RuntimeError(f"{source}: codes outside the quantizer's range [{lowest}, {highest}]")
        step, offset = _level_rule(spec["kind"], lowest)
        scales = scales.detach().cpu().float()
        layout = _scale_layout(spec, scales, tuple(w.shape))
        if layout == "row":
            scales = scales.reshape(w.shape[0])
        elif layout == "tensor":
            scales = scales.reshape(1)
        zp_t = zp.detach().cpu().float().reshape(scales.shape) if zp is not None else None
        quant = _Quant(
            stored=stored.reshape(w.shape), scales=scales, zero_points=zp_t, bits=int(q.bits), level_step=step,
            level_offset=offset, layout=layout, group_size=spec.get("group_size"), spec=spec,
            represents_zero=bool(getattr(q, "represents_zero", True)),
        )
        eff = _decode_quant(quant, tuple(w.shape))
        if mask is not None:
            eff = eff * mask.float()
        with torch.no_grad():
            ref = module.effective_weight().detach().float().cpu()
        if not torch.equal(eff, ref):
            raise RuntimeError(
                f"{source}: decoding the quantizer's integer codes does not reproduce its effective weight "
                f"(max diff {float((eff - ref).abs().max()):.3g}); the packing contract is broken"
            )
    bias = getattr(module, "bias", None)
    bias = bias.detach().float().cpu() if isinstance(bias, torch.Tensor) else None
    act = None
    iq = getattr(module, "input_quantizer", None)
    if iq is not None:
        spec = iq.spec()
        act = {"spec": spec, "scale": None, "zero_point": None}
        if spec["kind"] == "static_act":
            _, s, z = iq.quantize_ints(torch.zeros(1))
            act["scale"] = s.detach().cpu().float().reshape(1)
            act["zero_point"] = z.detach().cpu().float().reshape(1) if z is not None else None
        elif spec["kind"] != "dynamic_act":
            raise UserError(f"{source}: input quantizer kind {spec['kind']!r} cannot be exported")
    return _Weight(eff=eff, mask=mask, quant=quant, bias=bias, source=source, act=act)


def _col_groups(q: _Quant, ncols: int) -> torch.Tensor:
    """Group index of each stored column (group layout)."""
    src = q.src_cols if q.src_cols is not None else torch.arange(ncols)
    return torch.div(src, int(q.group_size), rounding_mode="floor")


def _expand(t: torch.Tensor, q: _Quant, shape: tuple[int, int]) -> torch.Tensor:
    """Scales (or zero points) in the quantizer's layout -> one per element, shape ``shape``."""
    rows, cols = shape
    if q.layout == "tensor":
        return t.reshape(1, 1).expand(rows, cols)
    if q.layout == "row":
        return t.reshape(rows, 1).expand(rows, cols)
    return t[:, _col_groups(q, cols)]  # (rows, groups) -> (rows, cols)


def _decode_quant(q: _Quant, shape: tuple[int, int]) -> torch.Tensor:
    """Float32 values of all codes of ``q`` (dense), bitwise as the quantizer computes them."""
    level = q.stored.to(torch.float32) * q.level_step + q.level_offset  # exact small integers
    if q.zero_points is not None:
        level = level - _expand(q.zero_points, q, shape)
    return level * _expand(q.scales, q, shape)


# ============================================================================ physical removal
def _act_value(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    return F.silu(x)


def _remove_heads(ws: dict[str, _Weight], i: int, head_dim: int) -> tuple[int, int]:
    """Drop removable heads of layer ``i`` in place; return (heads before, heads after)."""
    q, k, v, o = (ws[f"layer.{i}.attn.{n}"] for n in ("q", "k", "v", "o"))
    n_heads = v.eff.shape[0] // head_dim
    if n_heads == 0:
        return 0, 0
    v_zero = (v.eff.reshape(n_heads, head_dim, -1) == 0).flatten(1).all(dim=1)  # (heads,)
    o_zero = (o.eff.reshape(o.eff.shape[0], n_heads, head_dim) == 0).permute(1, 0, 2).flatten(1).all(dim=1)
    drop = v_zero | o_zero
    if not bool(drop.any()):
        return n_heads, n_heads
    fold = v_zero & ~o_zero
    if bool(fold.any()) and v.bias is not None:
        cols = fold.repeat_interleave(head_dim)  # (heads * head_dim,)
        extra = (o.eff[:, cols].double() @ v.bias[cols].double()).float()  # (hidden,)
        o.bias = (o.bias if o.bias is not None else torch.zeros(o.eff.shape[0])) + extra
    keep = (~drop).repeat_interleave(head_dim)
    for n in ("q", "k", "v"):
        ws[f"layer.{i}.attn.{n}"] = ws[f"layer.{i}.attn.{n}"].select(rows=keep)
    ws[f"layer.{i}.attn.o"] = o.select(cols=keep)
    return n_heads, int((~drop).sum())


def _remove_neurons(ws: dict[str, _Weight], i: int, act: str) -> tuple[int, int]:
    """Drop removable FFN neurons of layer ``i`` in place; return (width before, width after)."""
    up, down = ws[f"layer.{i}.ffn.up"], ws[f"layer.{i}.ffn.down"]
    width = up.eff.shape[0]
    up_zero = (up.eff == 0).all(dim=1)  # (width,)
    down_zero = (down.eff == 0).all(dim=0)  # (width,)
    drop = up_zero | down_zero
    if not bool(drop.any()):
        return width, width
    fold = up_zero & ~down_zero
    if bool(fold.any()) and up.bias is not None:
        const = _act_value(act, up.bias[fold])  # (n_fold,)
        extra = (down.eff[:, fold].double() @ const.double()).float()  # (hidden,)
        down.bias = (down.bias if down.bias is not None else torch.zeros(down.eff.shape[0])) + extra
    keep = ~drop
    ws[f"layer.{i}.ffn.up"] = up.select(rows=keep)
    ws[f"layer.{i}.ffn.down"] = down.select(cols=keep)
    return width, int(keep.sum())


# ============================================================================ writing
def _ceil8(nbits: int) -> int:
    return (int(nbits) + 7) // 8


class _Writer:
    """Collects safetensors tensors and manifest entries."""

    def __init__(self, float_dtype: str):
        self.float_dtype = float_dtype
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: dict[str, dict[str, Any]] = {}

    def _put(self, key: str, t: torch.Tensor) -> str:
        self.tensors[key] = t.contiguous()
        return key

    def _float(self, t: torch.Tensor) -> tuple[torch.Tensor, str]:
        dt = self.float_dtype
        if dt == "float16" and t.numel() and float(t.abs().max()) > _FP16_MAX:
            dt = "float32"  # would overflow: keep this tensor exact
        return t.to(_FLOAT_DTYPES[dt]), dt

    def add_float(self, name: str, t: torch.Tensor, source: str) -> None:
        """A dense float tensor (bias, LayerNorm, position embeddings, ...)."""
        vals, dt = self._float(t.detach().float().cpu())
        parts = {"values": self._put(name, vals)} if t.numel() else {}
        self.entries[name] = {
            "shape": list(t.shape), "encoding": "dense", "bits": 16 if dt == "float16" else 32,
            "dtype": dt, "quant": None, "parts": parts, "bytes": vals.numel() * vals.element_size(),
            "source": source,
        }

    def add_weight(self, name: str, w: _Weight) -> None:
        """A matrix in the smallest valid encoding (dense / rows / bitmask)."""
        rows, cols = w.eff.shape
        numel = rows * cols
        q = w.quant
        if q is None:
            _, dt = self._float(w.eff)
            bits = 16 if dt == "float16" else 32
        else:
            dt, bits = None, q.bits

        def scale_bytes(nrows: int) -> int:
            if q is None:
                return 0
            per = 1 if q.layout == "tensor" else (nrows if q.layout == "row" else nrows * q.scales.shape[1])
            extra = _ceil8(cols) if (q.layout == "group" and q.src_cols is not None) else 0
            return 2 * per * (2 if q.zero_points is not None else 1) + extra

        has_holes = w.mask is not None and not bool(w.mask.all())
        options: list[tuple[int, int, str]] = []
        if numel == 0:
            options.append((0, 0, "dense"))
        if not has_holes or q is None or q.represents_zero:
            options.append((_ceil8(numel * bits) + scale_bytes(rows), 0, "dense"))
        kept_rows = kept_cols = None
        if has_holes:
            m = w.mask
            r_any, c_any = m.any(dim=1), m.any(dim=0)
            if torch.equal(m, r_any[:, None] & c_any[None, :]):
                kept_rows, kept_cols = r_any, c_any
                r, c = int(r_any.sum()), int(c_any.sum())
                options.append((_ceil8(r * c * bits) + _ceil8(rows) + _ceil8(cols) + scale_bytes(r), 1, "rows"))
            nnz = int(m.sum())
            options.append((_ceil8(numel) + _ceil8(nnz * bits) + scale_bytes(rows), 2, "bitmask"))
        _, _, enc = min(options)

        parts: dict[str, str] = {}
        if enc == "dense":
            sel_w, sel_idx = w, None
        elif enc == "rows":
            parts["rows"] = self._put(f"{name}.rows", pack_mask(kept_rows))
            parts["cols"] = self._put(f"{name}.cols", pack_mask(kept_cols))
            sel_w, sel_idx = w.select(rows=kept_rows, cols=kept_cols), None
        else:
            parts["mask"] = self._put(f"{name}.mask", pack_mask(w.mask))
            sel_w, sel_idx = w, w.mask

        if numel:
            if q is None:
                vals = sel_w.eff if sel_idx is None else sel_w.eff[sel_idx]
                parts["values"] = self._put(f"{name}.values", vals.reshape(-1).to(_FLOAT_DTYPES[dt]))
            else:
                sq = sel_w.quant
                codes = sq.stored if sel_idx is None else sq.stored[sel_idx]
                parts["codes"] = self._put(f"{name}.codes", pack_bits(codes.reshape(-1), q.bits))
                parts["scales"] = self._put(f"{name}.scales", sq.scales.to(torch.float16))
                if sq.zero_points is not None:
                    parts["zero_points"] = self._put(f"{name}.zero_points", sq.zero_points.to(torch.float16))
                if q.layout == "group" and q.src_cols is not None:
                    # original column of each stored column, as a bitmap over the original width
                    width = int(q.scales.shape[1]) * int(q.group_size)
                    src = torch.zeros(width, dtype=torch.bool)
                    src[q.src_cols] = True
                    parts["src_cols"] = self._put(f"{name}.src_cols", pack_mask(src))
        nbytes = sum(self.tensors[k].numel() * self.tensors[k].element_size() for k in parts.values())
        quant_meta = None
        if q is not None:
            quant_meta = {
                "kind": q.spec["kind"], "level_step": q.level_step, "level_offset": q.level_offset,
                "scale_layout": q.layout, "group_size": q.group_size,
                "zero_points": q.zero_points is not None, "spec": q.spec,
            }
            if q.layout == "group":
                quant_meta["groups"] = int(q.scales.shape[1])
        self.entries[name] = {
            "shape": [rows, cols], "encoding": enc, "bits": bits, "dtype": dt, "quant": quant_meta,
            "parts": parts, "bytes": nbytes, "source": w.source,
        }
        if w.bias is not None:
            b = w.bias
            self.add_float(f"{name[: -len('.weight')]}.bias", b, w.source.replace(".weight", ".bias"))


# ============================================================================ export
def _vocab_keep(tokenizer, texts: Iterable[Any], vocab_size: int) -> torch.Tensor:
    """Bool (vocab,) of token ids seen in ``texts`` plus all special tokens."""
    keep = torch.zeros(vocab_size, dtype=torch.bool)
    specials = [i for i in getattr(tokenizer, "all_special_ids", []) if i is not None]
    for tok in ("unk_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
                "bos_token_id", "eos_token_id"):
        i = getattr(tokenizer, tok, None)
        if i is not None:
            specials.append(i)
    for i in specials:
        if 0 <= int(i) < vocab_size:
            keep[int(i)] = True
    flat: list[str] = []
    for t in texts:
        if isinstance(t, str):
            flat.append(t)
        elif isinstance(t, (tuple, list)):
            flat.extend(x for x in t if isinstance(x, str))
        elif t is None:
            continue
        else:
            raise UserError(f"prune_vocab_texts: expected strings or (text_a, text_b) pairs, got {type(t).__name__}")
    for start in range(0, len(flat), 2048):
        enc = tokenizer(flat[start : start + 2048], add_special_tokens=True, truncation=False)["input_ids"]
        for ids in enc:
            if ids:
                idx = torch.tensor(ids, dtype=torch.long)
                if int(idx.max()) >= vocab_size:
                    raise UserError(
                        f"prune_vocab_texts: the tokenizer produced id {int(idx.max())} but the model's vocabulary "
                        f"has {vocab_size} rows; the tokenizer does not belong to this model"
                    )
                keep[idx] = True
    return keep


def _nearest_kept(table: torch.Tensor, keep: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For every row of ``table`` (vocab, dim), the index among kept rows with the highest cosine
    similarity (kept rows map to themselves). Returns (vocab,) int64 indices into the kept rows."""
    unit = F.normalize(table.float(), dim=1)  # (vocab, dim)
    kept_idx = torch.nonzero(keep).flatten()
    kept_unit = unit[kept_idx]  # (kept, dim)
    out = torch.cumsum(keep.to(torch.int64), 0) - 1  # kept id -> its new row
    unseen = torch.nonzero(~keep).flatten()
    for start in range(0, unseen.numel(), chunk):
        rows = unseen[start : start + chunk]
        out[rows] = (unit[rows] @ kept_unit.T).argmax(dim=1)  # (chunk,)
    return out


def tokenizer_files(tokenizer, compress: bool = True) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the tokenizer as a packed directory stores it (xz by default)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for f in sorted(Path(tmp).iterdir()):
            if f.is_file():
                data = f.read_bytes()
                if compress:
                    out.append((f.name + ".xz", lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)))
                else:
                    out.append((f.name, data))
    return out


def round_floats_to_fp16(model: nn.Module) -> int:
    """Round every float tensor the packed format stores as float16 to its float16 value, in place.

    That is every float parameter and buffer except the latent weights of quantized layers (stored
    as integer codes) and the quantizers' own state (their scales are fp16 values already). After
    this, exporting with the default ``float_dtype="float16"`` loses nothing: the packed model is
    bitwise the model that was evaluated. ``compress`` applies it to its final model, because models
    trained with 8-bit activations are sensitive: storing their LayerNorms, biases and position
    embeddings in fp16 *after* evaluation changed 0.5-0.7% of SST-2 predictions, while the fp16
    rounding itself, evaluated, costs nothing measurable. Values beyond fp16's range are left alone
    (the exporter keeps those tensors in float32). Returns the number of tensors changed.
    """
    from ..nn.quantizers import Quantizer

    skip: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, Quantizer):
            skip.update(id(t) for t in list(mod.parameters()) + list(mod.buffers()))
        elif getattr(mod, "weight_quantizer", None) is not None:
            skip.add(id(mod.weight))
    changed = 0
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if id(t) in skip or t.dtype != torch.float32 or t.numel() == 0:
                continue
            skip.add(id(t))  # tied tensors once
            if float(t.abs().max()) > _FP16_MAX:
                continue
            r = t.half().float()
            if not torch.equal(r, t):
                t.copy_(r)
                changed += 1
    return changed


def export_packed(
    model: nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    prune_vocab_texts: Iterable[Any] | None = None,
    *,
    float_dtype: str = "float16",
    remove_pruned: bool = True,
    max_positions: int | None = None,
    compress_tokenizer: bool = True,
    unseen_tokens: str = "unk",
) -> dict[str, Any]:
    """Write ``model`` (plain or compressed) and ``tokenizer`` as a packed directory.

    Args:
        model: A Hugging Face ``...ForSequenceClassification`` (BERT, MiniLM, ELECTRA, RoBERTa,
            DistilBERT), possibly with CompressedLinear / CompressedEmbedding layers.
        tokenizer: Its tokenizer (saved under ``tokenizer/``), or None.
        out_dir: Folder to write; created if needed. Existing packed files in it are replaced.
        prune_vocab_texts: Texts (strings or ``(text_a, text_b)`` pairs) of the task data; when given,
            only the embedding rows of the tokens they contain (and special tokens) are stored.
        float_dtype: ``"float16"`` (default) or ``"float32"``: storage of tensors without a quantizer.
            Use ``compactbert.size.size_report(model, uncompressed_bits=16)`` to predict fp16 sizes.
        remove_pruned: Physically drop all-zero attention heads and FFN neurons (default True).
        max_positions: Keep only the first ``max_positions`` position embeddings (inputs must then be
            at most that long); default: all.
        compress_tokenizer: Store the tokenizer files xz-compressed (default True; ~5x smaller).
        unseen_tokens: With ``prune_vocab_texts``, what a token that is not kept reads as:
            ``"unk"`` (the unknown token; stores a 1-bit-per-token bitmap) or ``"nearest"`` (the kept
            token whose original embedding is closest in cosine similarity; stores a 2-byte map per
            original token). Texts with tokens never seen in ``prune_vocab_texts`` change meaning
            less with ``"nearest"``.

    Returns:
        The manifest (also written to ``manifest.json``).

    Raises:
        UserError: an unsupported model, a bad option, or texts that do not fit the tokenizer.

    Example:
        >>> export_packed(model, tokenizer, "out/packed")["total_bytes"]  # doctest: +SKIP
        1843712
    """
    from safetensors.torch import save_file

    if unseen_tokens not in ("unk", "nearest"):
        raise UserError(f"unseen_tokens={unseen_tokens!r} is not valid; valid: unk, nearest")
    if float_dtype not in _FLOAT_DTYPES:
        raise UserError(f"float_dtype={float_dtype!r} is not valid; valid: {', '.join(_FLOAT_DTYPES)}")
    layout = model_layout(model)
    config = dict(layout.config)
    names = {id(m): n for n, m in model.named_modules()}

    ws: dict[str, _Weight] = {}
    lns: dict[str, nn.Module] = {}
    for cname, mod in layout.modules.items():
        src = names.get(id(mod), cname) + ".weight"
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            ws[cname] = _extract(mod, src)
        else:
            lns[cname] = mod
    for cname in ("emb.word", "emb.position", "emb.token_type"):
        if cname in ws and ws[cname].act is not None:
            raise UserError(f"{cname}: embeddings cannot have an input quantizer")

    # vocabulary pruning
    vocab_keep = None
    if prune_vocab_texts is not None:
        if tokenizer is None:
            raise UserError("prune_vocab_texts needs the tokenizer (got tokenizer=None)")
        vocab_keep = _vocab_keep(tokenizer, prune_vocab_texts, config["vocab_size"])
        if unseen_tokens == "nearest":
            vocab_map = _nearest_kept(layout.modules["emb.word"].weight.detach().cpu(), vocab_keep)
        ws["emb.word"] = ws["emb.word"].select(rows=vocab_keep)
        unk = getattr(tokenizer, "unk_token_id", None)
        config["vocab"] = {
            "pruned": True,
            "original_size": config["vocab_size"],
            "kept": int(vocab_keep.sum()),
            "unk_token_id": int(unk) if unk is not None else int(config["pad_token_id"]),
            "unseen": unseen_tokens,
        }
    if max_positions is not None:
        if isinstance(max_positions, bool) or not isinstance(max_positions, int) or not (
            1 <= max_positions <= config["max_position_embeddings"]
        ):
            raise UserError(
                f"max_positions={max_positions!r} is not valid; valid: 1..{config['max_position_embeddings']}"
            )
        offset = config["pad_token_id"] + 1 if config["position_style"] == "roberta" else 0
        n = min(config["max_position_embeddings"], max_positions + offset)
        ws["emb.position"] = ws["emb.position"].select(rows=torch.arange(n))
        config["max_position_embeddings"] = n

    # physical removal of heads and neurons
    heads, ffn = [], []
    removed = {"heads": 0, "neurons": 0}
    for i in range(layout.num_layers):
        if remove_pruned:
            h0, h1 = _remove_heads(ws, i, config["head_dim"])
            f0, f1 = _remove_neurons(ws, i, config["hidden_act"])
            removed["heads"] += h0 - h1
            removed["neurons"] += f0 - f1
        else:
            h1 = ws[f"layer.{i}.attn.q"].eff.shape[0] // config["head_dim"]
            f1 = ws[f"layer.{i}.ffn.up"].eff.shape[0]
        heads.append(h1)
        ffn.append(f1)
    config["heads_per_layer"] = heads
    config["ffn_per_layer"] = ffn
    config["removed"] = removed

    # write tensors
    writer = _Writer(float_dtype)
    act_quant: dict[str, Any] = {}
    for cname, w in ws.items():
        if cname.startswith("emb.") and cname != "emb.proj":
            w.bias = None  # embeddings have none
        writer.add_weight(f"{cname}.weight", w)
        if w.act is not None:
            act_quant[cname] = {"spec": w.act["spec"]}
            if w.act["scale"] is not None:
                act_quant[cname]["scale"] = writer._put(f"{cname}.input_scale", w.act["scale"].to(torch.float16))
            if w.act["zero_point"] is not None:
                act_quant[cname]["zero_point"] = writer._put(
                    f"{cname}.input_zero_point", w.act["zero_point"].to(torch.float16)
                )
    for cname, ln in lns.items():
        src = names.get(id(ln), cname)
        writer.add_float(f"{cname}.weight", ln.weight, src + ".weight")
        writer.add_float(f"{cname}.bias", ln.bias, src + ".bias")
    if vocab_keep is not None:
        writer._put("emb.vocab_keep", pack_mask(vocab_keep))
        if unseen_tokens == "nearest":
            small = int(vocab_keep.sum()) < 2**15
            writer._put("emb.vocab_map", vocab_map.to(torch.int16 if small else torch.int32))
    config["act_quant"] = act_quant
    hf_cfg = getattr(model, "config", None)
    if hf_cfg is not None:
        try:
            config["source_config"] = json.loads(hf_cfg.to_json_string(use_diff=False))
        except Exception:  # noqa: BLE001 - a config that cannot be serialised is only informational
            config["source_config"] = None

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST_FILE, WEIGHTS_FILE, CONFIG_FILE):
        if (out / stale).exists():
            (out / stale).unlink()
    if (out / TOKENIZER_DIR).is_dir():
        shutil.rmtree(out / TOKENIZER_DIR)

    save_file(writer.tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
    (out / CONFIG_FILE).write_text(json.dumps(config, sort_keys=True, separators=(",", ":")) + "\n")
    tok_files: list[str] = []
    if tokenizer is not None:
        (out / TOKENIZER_DIR).mkdir()
        for fname, data in tokenizer_files(tokenizer, compress_tokenizer):
            (out / TOKENIZER_DIR / fname).write_bytes(data)
            tok_files.append(f"{TOKENIZER_DIR}/{fname}")

    files: dict[str, Any] = {}
    for rel in [WEIGHTS_FILE, CONFIG_FILE, *tok_files]:
        p = out / rel
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    payload = sum(t.numel() * t.element_size() for t in writer.tensors.values())
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "float_dtype": float_dtype,
        "uncompressed_bits": 16 if float_dtype == "float16" else 32,
        "tensors": writer.entries,
        "extra_tensors": [k for k in writer.tensors if k.startswith("emb.vocab_") or k.endswith((".input_scale", ".input_zero_point"))],
        "files": files,
        "payload_bytes": payload,
        "weights_bytes": files[WEIGHTS_FILE]["bytes"],
        "tokenizer_bytes": sum(files[f]["bytes"] for f in tok_files),
    }
    # total_bytes counts the manifest itself: iterate until the number no longer changes its length
    manifest["total_bytes"] = 0
    for _ in range(5):
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n"
        total = sum(v["bytes"] for v in files.values()) + len(text.encode())
        if total == manifest["total_bytes"]:
            break
        manifest["total_bytes"] = total
    (out / MANIFEST_FILE).write_text(text)
    return manifest


# ============================================================================ reading
@dataclass
class PackedWeights:
    """What a packed directory holds, decoded to dense float32 tensors.

    Attributes:
        path: The directory.
        manifest: Parsed ``manifest.json``.
        config: Parsed ``config.json`` (runtime config; per-layer ``heads_per_layer``, ``ffn_per_layer``).
        tensors: canonical name (``layer.0.attn.q.weight`` ...) -> float32 tensor, physically reduced.
        act_quant: canonical linear name -> ``{"spec": ..., "scale": tensor | None, "zero_point": ...}``.
        vocab_map: (original vocab,) int64 old id -> row of the stored embedding, or None.
        row_codes: weight name -> (int8 levels, float32 per-row scales) for weights quantized with
            one scale per row and no zero point: ``tensors[name] == levels * scales[:, None]``.
    """

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    act_quant: dict[str, dict[str, Any]] = field(default_factory=dict)
    vocab_map: torch.Tensor | None = None
    row_codes: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"packed model {str(path)!r}: {what}; re-export it with `compactbert export`")


def verify_packed(path: str | os.PathLike) -> dict[str, Any]:
    """Check a packed directory's format, version, and every file's size and sha256.

    Returns:
        The parsed manifest.

    Raises:
        UserError: not a packed directory, an unknown format version, or a missing, truncated or
            modified file (one line naming it).
    """
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"packed model {str(path)!r} is not a directory; expected a folder written by `compactbert export`")
    mpath = p / MANIFEST_FILE
    if not mpath.is_file():
        raise UserError(
            f"{str(path)!r} has no {MANIFEST_FILE}: not a packed model folder (expected one written by `compactbert export`)"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(p, f"{MANIFEST_FILE} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise _bad(p, f"{MANIFEST_FILE} does not describe a {FORMAT_NAME!r} folder")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"packed model {str(path)!r} has format_version {version!r}; this compactbert reads version "
            f"{FORMAT_VERSION} only (re-export the model, or use the compactbert version that wrote it)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files or CONFIG_FILE not in files:
        raise _bad(p, f"{MANIFEST_FILE} does not list {WEIGHTS_FILE} and {CONFIG_FILE}")
    for rel, info in files.items():
        fp = (p / rel).resolve()
        if p.resolve() not in fp.parents or not isinstance(info, dict):
            raise _bad(p, f"{MANIFEST_FILE} lists an invalid file entry {rel!r}")
        if not fp.is_file():
            raise _bad(p, f"file {rel!r} is missing")
        size = fp.stat().st_size
        if size != info.get("bytes"):
            raise _bad(p, f"file {rel!r} has {size} bytes, the manifest says {info.get('bytes')} (truncated or modified)")
        if sha256_file(fp) != info.get("sha256"):
            raise _bad(p, f"file {rel!r} does not match its sha256 in the manifest (modified or corrupted)")
    return manifest


def _decode_entry(name: str, e: dict[str, Any], get, row_codes: dict | None = None) -> torch.Tensor:
    """Dense float32 tensor of manifest entry ``e`` (``get(key)`` reads a stored tensor).

    With ``row_codes``, a weight quantized with one scale per row and no zero point (binary,
    ternary, symmetric int-k per row) also leaves ``row_codes[name] = (levels, scales)``: int8
    levels of the dense shape (0 where nothing is stored) and float32 scales (rows,), so that the
    tensor equals ``levels * scales[:, None]`` bitwise (the runtime's exact integer products).
    """
    shape = tuple(int(s) for s in e["shape"])
    numel = math.prod(shape)
    parts = e.get("parts", {})
    if numel == 0:
        return torch.zeros(shape)
    enc = e["encoding"]
    q = e.get("quant")
    if len(shape) == 1:
        return get(parts["values"]).float().reshape(shape)
    rows, cols = shape
    if enc == "dense":
        sel_rows, sel_cols, sel_mask = None, None, None
        n = numel
    elif enc == "rows":
        sel_rows = unpack_mask(get(parts["rows"]), (rows,))
        sel_cols = unpack_mask(get(parts["cols"]), (cols,))
        sel_mask = None
        n = int(sel_rows.sum()) * int(sel_cols.sum())
    elif enc == "bitmask":
        sel_rows = sel_cols = None
        sel_mask = unpack_mask(get(parts["mask"]), shape)
        n = int(sel_mask.sum())
    else:
        raise ValueError(f"unknown encoding {enc!r}")

    if q is None:
        vals = get(parts["values"]).float().reshape(-1)
        if vals.numel() != n:
            raise ValueError(f"{n} values expected, {vals.numel()} stored")
    else:
        bits = int(e["bits"])
        stored = unpack_bits(get(parts["codes"]), bits, n).to(torch.int64)
        scales = get(parts["scales"]).float()
        zps = get(parts["zero_points"]).float() if q.get("zero_points") else None
        layout = q["scale_layout"]
        src_cols = None
        if "src_cols" in parts:
            width = int(q["groups"]) * int(q["group_size"])
            src_cols = torch.nonzero(unpack_mask(get(parts["src_cols"]), (width,))).reshape(-1)
            if src_cols.numel() != cols:
                raise ValueError("src_cols does not match the number of columns")
        # rows of the scales that belong to the stored codes
        kept_r = rows if sel_rows is None else int(sel_rows.sum())
        qq = _Quant(
            stored=torch.zeros(0), scales=scales, zero_points=zps, bits=bits, level_step=int(q["level_step"]),
            level_offset=int(q["level_offset"]), layout=layout, group_size=q.get("group_size"), spec=q.get("spec", {}),
            represents_zero=True, src_cols=src_cols,
        )
        if layout == "row" and scales.numel() != kept_r:
            raise ValueError("scales do not match the rows")
        if enc == "rows":
            kc = torch.nonzero(sel_cols).reshape(-1)
            block_shape = (kept_r, kc.numel())
            qq.stored = stored.reshape(block_shape)
            if layout == "group":
                qq.src_cols = (src_cols if src_cols is not None else torch.arange(cols))[kc]
            vals = _decode_quant(qq, block_shape).reshape(-1)
        elif enc == "bitmask":
            full = torch.zeros(shape, dtype=torch.int64)
            full[sel_mask] = stored
            qq.stored = full
            vals = _decode_quant(qq, shape)[sel_mask]
        else:
            qq.stored = stored.reshape(shape)
            vals = _decode_quant(qq, shape).reshape(-1)
    if row_codes is not None and q is not None and layout == "row" and zps is None and bits <= 8:
        levels = qq.stored * qq.level_step + qq.level_offset  # (stored rows, stored cols) int64
        row_scales = torch.zeros(rows)
        if enc == "rows":
            full = torch.zeros(shape, dtype=torch.int64)
            idx_r = torch.nonzero(sel_rows).reshape(-1)
            full[idx_r[:, None], torch.nonzero(sel_cols).reshape(-1)[None, :]] = levels
            row_scales[idx_r] = scales.reshape(-1)
            levels = full
        else:
            if enc == "bitmask":
                levels = levels * sel_mask  # a masked entry is 0 whatever its level (binary: +-1)
            row_scales = scales.reshape(-1)
        row_codes[name] = (levels.to(torch.int8), row_scales)
    if enc == "dense":
        return vals.reshape(shape)
    out = torch.zeros(shape)
    if enc == "rows":
        idx_r = torch.nonzero(sel_rows).reshape(-1)
        idx_c = torch.nonzero(sel_cols).reshape(-1)
        out[idx_r[:, None], idx_c[None, :]] = vals.reshape(idx_r.numel(), idx_c.numel())
    else:
        out[sel_mask] = vals
    return out


def read_packed(path: str | os.PathLike, verify: bool = True) -> PackedWeights:
    """Verify (:func:`verify_packed`) and decode a packed directory to dense float32 tensors.

    Raises:
        UserError: the directory fails verification or its tensors cannot be decoded.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    manifest = verify_packed(p) if verify else json.loads((p / MANIFEST_FILE).read_text())
    try:
        config = json.loads((p / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(p, f"{CONFIG_FILE} is not valid JSON ({e})") from None
    out = PackedWeights(path=p, manifest=manifest, config=config)
    try:
        with safe_open(str(p / WEIGHTS_FILE), framework="pt") as f:
            keys = set(f.keys())

            def get(key: str) -> torch.Tensor:
                if key not in keys:
                    raise KeyError(key)
                return f.get_tensor(key)

            for name, e in manifest["tensors"].items():
                out.tensors[name] = _decode_entry(name, e, get, out.row_codes)
            for lname, aq in (config.get("act_quant") or {}).items():
                out.act_quant[lname] = {
                    "spec": aq["spec"],
                    "scale": get(aq["scale"]).float() if "scale" in aq else None,
                    "zero_point": get(aq["zero_point"]).float() if "zero_point" in aq else None,
                }
            vocab = config.get("vocab")
            if vocab and vocab.get("pruned"):
                keep = unpack_mask(get("emb.vocab_keep"), (int(vocab["original_size"]),))
                new_ids = torch.cumsum(keep.to(torch.int64), 0) - 1
                unk_old = int(vocab["unk_token_id"])
                unk_new = int(new_ids[unk_old]) if bool(keep[unk_old]) else 0
                out.vocab_map = torch.where(keep, new_ids, torch.full_like(new_ids, unk_new))
                if vocab.get("unseen") == "nearest":
                    out.vocab_map = get("emb.vocab_map").to(torch.int64)
                    if out.vocab_map.shape != keep.shape or int(out.vocab_map.max()) >= int(vocab["kept"]):
                        raise ValueError("emb.vocab_map does not match the kept vocabulary")
    except UserError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, SafetensorError, OSError) as e:
        raise _bad(p, f"its tensors cannot be decoded ({type(e).__name__}: {e})") from None
    return out


def load_packed_tokenizer(path: str | os.PathLike):
    """The tokenizer stored in a packed directory (None if it has none).

    Compressed files are expanded into a temporary folder first; only names listed in the manifest
    are read.
    """
    from transformers import AutoTokenizer

    p = Path(path)
    manifest = json.loads((p / MANIFEST_FILE).read_text())
    tok = [rel for rel in manifest.get("files", {}) if rel.startswith(TOKENIZER_DIR + "/")]
    if not tok:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for rel in tok:
            name = rel.split("/", 1)[1]
            if "/" in name or "\\" in name or name.startswith("."):
                raise _bad(p, f"invalid tokenizer file name {rel!r}")
            data = (p / rel).read_bytes()
            if name.endswith(".xz"):
                try:
                    data = lzma.decompress(data)
                except lzma.LZMAError as e:
                    raise _bad(p, f"tokenizer file {rel!r} cannot be decompressed ({e})") from None
                name = name[: -len(".xz")]
            (Path(tmp) / name).write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp)


def packed_size(path: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk of a packed directory: ``{"total", "weights", "tokenizer", "other"}``."""
    p = Path(path)
    total = weights = tok = 0
    for f in p.rglob("*"):
        if f.is_file():
            n = f.stat().st_size
            total += n
            rel = f.relative_to(p).as_posix()
            if rel == WEIGHTS_FILE:
                weights += n
            elif rel.startswith(TOKENIZER_DIR + "/"):
                tok += n
    return {"total": total, "weights": weights, "tokenizer": tok, "other": total - weights - tok}
