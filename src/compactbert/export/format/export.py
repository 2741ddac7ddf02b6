"""Exporting a model as a packed directory: extraction, vocabulary pruning, physical removal,
writing (the steps live in the sibling modules; this one runs them in order)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ...errors import UserError
from ...nn.quant import Quantizer
from ...nn.quant.ops import FP16_MAX
from ..bits import pack_mask
from .constants import FLOAT_DTYPES
from .layout import Layout, model_layout
from .remove import remove_heads, remove_neurons
from .vocab import nearest_kept, vocab_keep
from .weight import PackedWeight, extract
from .write import Writer, write_folder

__all__ = ["export_packed", "round_floats_to_fp16"]


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
    pooling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model`` (plain or compressed) and ``tokenizer`` as a packed directory.

    Args:
        model: A Hugging Face ``...ForSequenceClassification`` (BERT, MiniLM, ELECTRA, RoBERTa,
            DistilBERT), possibly with CompressedLinear / CompressedEmbedding layers.
        tokenizer: Its tokenizer (saved under ``tokenizer/``), or None.
        out_dir: Folder to write: new, empty or an earlier packed directory (replaced as a whole);
            anything else is refused (:mod:`compactbert.outdir`).
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
        pooling: For a sentence-embedding model: its pooling
            (:meth:`compactbert.nn.pooling.Pooling.to_dict`), stored as ``config["pooling"]``
            for :meth:`PackedModel.encode <compactbert.runtime.PackedModel.encode>` (default there:
            mean pooling, L2-normalised).

    Returns:
        The manifest (also written to ``manifest.json``).

    Raises:
        UserError: an unsupported model, a bad option, or texts that do not fit the tokenizer.

    Example:
        >>> export_packed(model, tokenizer, "out/packed")["total_bytes"]  # doctest: +SKIP
        1843712
    """
    if unseen_tokens not in ("unk", "nearest"):
        raise UserError(f"unseen_tokens={unseen_tokens!r} is not valid; valid: unk, nearest")
    if float_dtype not in FLOAT_DTYPES:
        raise UserError(f"float_dtype={float_dtype!r} is not valid; valid: {', '.join(FLOAT_DTYPES)}")
    layout = model_layout(model)
    config = dict(layout.config)
    if pooling is not None:
        config["pooling"] = dict(pooling)
    names = {id(m): n for n, m in model.named_modules()}
    ws, lns = _extract_all(layout, names)
    vocab = None
    if prune_vocab_texts is not None:
        vocab = _prune_vocab(ws, layout, config, tokenizer, prune_vocab_texts, unseen_tokens)
    if max_positions is not None:
        _limit_positions(ws, config, max_positions)
    _remove_structures(ws, layout, config, remove_pruned)
    writer = Writer(float_dtype)
    config["act_quant"] = _write_tensors(writer, ws, lns, names)
    if vocab is not None:
        writer.put("emb.vocab_keep", pack_mask(vocab[0]), extra=True)
        if vocab[1] is not None:
            small = int(vocab[0].sum()) < 2**15
            writer.put("emb.vocab_map", vocab[1].to(torch.int16 if small else torch.int32), extra=True)
    hf_cfg = getattr(model, "config", None)
    if hf_cfg is not None:
        try:
            config["source_config"] = json.loads(hf_cfg.to_json_string(use_diff=False))
        except Exception:  # noqa: BLE001 - a config that cannot be serialised is only informational
            config["source_config"] = None
    return write_folder(Path(out_dir), writer, config, tokenizer, compress_tokenizer)


def _extract_all(layout: Layout, names: dict[int, str]) -> tuple[dict[str, PackedWeight], dict[str, nn.Module]]:
    """Every Linear / Embedding of the layout as a :class:`PackedWeight`; the LayerNorms as modules."""
    ws: dict[str, PackedWeight] = {}
    lns: dict[str, nn.Module] = {}
    for cname, mod in layout.modules.items():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            ws[cname] = extract(mod, names.get(id(mod), cname) + ".weight")
        else:
            lns[cname] = mod
    for cname in ("emb.word", "emb.position", "emb.token_type"):
        if cname in ws and ws[cname].act is not None:
            raise UserError(f"{cname}: embeddings cannot have an input quantizer")
    return ws, lns


def _prune_vocab(ws, layout: Layout, config: dict[str, Any], tokenizer, texts, unseen_tokens: str):
    """Keep the embedding rows of the tokens of ``texts``; return (keep, nearest map or None)."""
    if tokenizer is None:
        raise UserError("prune_vocab_texts needs the tokenizer (got tokenizer=None)")
    keep = vocab_keep(tokenizer, texts, config["vocab_size"])
    vocab_map = None
    if unseen_tokens == "nearest":
        vocab_map = nearest_kept(layout.modules["emb.word"].weight.detach().cpu(), keep)
    ws["emb.word"] = ws["emb.word"].select(rows=keep)
    unk = getattr(tokenizer, "unk_token_id", None)
    config["vocab"] = {
        "pruned": True,
        "original_size": config["vocab_size"],
        "kept": int(keep.sum()),
        "unk_token_id": int(unk) if unk is not None else int(config["pad_token_id"]),
        "unseen": unseen_tokens,
    }
    return keep, vocab_map


def _limit_positions(ws, config: dict[str, Any], max_positions: Any) -> None:
    if isinstance(max_positions, bool) or not isinstance(max_positions, int) or not (
        1 <= max_positions <= config["max_position_embeddings"]
    ):
        raise UserError(f"max_positions={max_positions!r} is not valid; valid: 1..{config['max_position_embeddings']}")
    offset = config["pad_token_id"] + 1 if config["position_style"] == "roberta" else 0
    n = min(config["max_position_embeddings"], max_positions + offset)
    ws["emb.position"] = ws["emb.position"].select(rows=torch.arange(n))
    config["max_position_embeddings"] = n


def _remove_structures(ws, layout: Layout, config: dict[str, Any], remove_pruned: bool) -> None:
    """Physical removal of all-zero heads and neurons; per-layer shapes into ``config``."""
    heads, ffn = [], []
    removed = {"heads": 0, "neurons": 0}
    for i in range(layout.num_layers):
        if remove_pruned:
            h0, h1 = remove_heads(ws, i, config["head_dim"])
            f0, f1 = remove_neurons(ws, i, config["hidden_act"])
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


def _write_tensors(writer: Writer, ws, lns, names: dict[int, str]) -> dict[str, Any]:
    """Weights (with their biases and input quantizers' ranges), then LayerNorms; returns the
    ``act_quant`` config: linear name -> ``{"spec", <parameter>: <tensor key>, ...}``."""
    act_quant: dict[str, Any] = {}
    for cname, w in ws.items():
        if cname.startswith("emb.") and cname != "emb.proj":
            w.bias = None  # embeddings have none
        writer.add_weight(f"{cname}.weight", w)
        if w.act is not None:
            act_quant[cname] = {"spec": w.act.spec()}
            for pname, t in w.act.packed_params().items():
                act_quant[cname][pname] = writer.put(f"{cname}.input_{pname}", t.to(torch.float16), extra=True)
    for cname, ln in lns.items():
        src = names.get(id(ln), cname)
        writer.add_float(f"{cname}.weight", ln.weight, src + ".weight")
        writer.add_float(f"{cname}.bias", ln.bias, src + ".bias")
    return act_quant


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
            if float(t.abs().max()) > FP16_MAX:
                continue
            r = t.half().float()
            if not torch.equal(r, t):
                t.copy_(r)
                changed += 1
    return changed
