"""Where each part of a supported encoder lives: the canonical names the packed format uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ...errors import UserError
from .constants import FORMAT_NAME

__all__ = ["Layout", "model_layout", "ACTIVATIONS"]

# hidden_act spellings -> the runtime's activation names
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


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


def linear_like(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def _embedding_modules(base: nn.Module, mt: str) -> dict[str, nn.Module]:
    emb = getattr(base, "embeddings", None)
    if emb is None:
        raise UserError(f"cannot export model_type {mt!r}: its base model has no 'embeddings'")
    mods: dict[str, nn.Module] = {"emb.word": emb.word_embeddings, "emb.position": emb.position_embeddings}
    if getattr(emb, "token_type_embeddings", None) is not None:
        mods["emb.token_type"] = emb.token_type_embeddings
    mods["emb.ln"] = emb.LayerNorm
    return mods


def _distilbert_layers(base: nn.Module, cfg: Any, mods: dict[str, nn.Module]) -> dict[str, Any]:
    layers = base.transformer.layer
    for i, lay in enumerate(layers):
        a = lay.attention
        mods.update({
            f"layer.{i}.attn.q": a.q_lin, f"layer.{i}.attn.k": a.k_lin, f"layer.{i}.attn.v": a.v_lin,
            f"layer.{i}.attn.o": a.out_lin, f"layer.{i}.attn.ln": lay.sa_layer_norm,
            f"layer.{i}.ffn.up": lay.ffn.lin1, f"layer.{i}.ffn.down": lay.ffn.lin2,
            f"layer.{i}.ffn.ln": lay.output_layer_norm,
        })
    return {"arch": "distilbert", "num_layers": len(layers), "hidden": int(cfg.dim), "heads": int(cfg.n_heads),
            "act": str(cfg.activation), "eps": 1e-12, "type_vocab": 0}


def _bert_layers(base: nn.Module, cfg: Any, mods: dict[str, nn.Module], mt: str) -> dict[str, Any]:
    encoder = getattr(base, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise UserError(f"cannot export model_type {mt!r}: expected a BERT-style 'encoder.layer' list")
    arch = "roberta" if hasattr(base.embeddings, "padding_idx") and mt != "bert" else "bert"
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
    type_vocab = int(getattr(cfg, "type_vocab_size", 0) or 0) if "emb.token_type" in mods else 0
    return {"arch": arch, "num_layers": len(encoder.layer), "hidden": int(cfg.hidden_size),
            "heads": int(cfg.num_attention_heads), "act": str(cfg.hidden_act), "eps": float(cfg.layer_norm_eps),
            "type_vocab": type_vocab}


def _head(model: nn.Module, base: nn.Module, mods: dict[str, nn.Module], mt: str) -> str:
    """Add the classification head's modules; return its activation."""
    clf = getattr(model, "classifier", None)
    if linear_like(clf) and linear_like(getattr(model, "pre_classifier", None)):
        mods["head.dense"], mods["head.out"] = model.pre_classifier, clf
        return "relu"
    if linear_like(clf) and getattr(base, "pooler", None) is not None:
        mods["head.dense"], mods["head.out"] = base.pooler.dense, clf
        return "tanh"
    if clf is not None and linear_like(getattr(clf, "dense", None)) and linear_like(getattr(clf, "out_proj", None)):
        mods["head.dense"], mods["head.out"] = clf.dense, clf.out_proj
        return "gelu" if mt == "electra" else "tanh"
    raise UserError(
        f"cannot export {type(model).__name__}: its classification head is not the standard one of "
        "BERT/RoBERTa/ELECTRA/DistilBERT ...ForSequenceClassification"
    )


def model_layout(model: nn.Module) -> Layout:
    """Map a Hugging Face sequence-classification model onto the canonical layout.

    Supported: BERT-layout models (BERT, MiniLM, ELECTRA), RoBERTa-layout ones (RoBERTa, XLM-R,
    CamemBERT) and DistilBERT, with their ``...ForSequenceClassification`` heads; compressed layers
    (:class:`~compactbert.nn.compressed.CompressedLinear` etc.) are plain subclasses and fit anywhere.
    A bare encoder (``BertModel``, ...: a sentence-embedding model) maps without a head
    (``config["head"]`` None, ``num_labels`` 0); the runtime then only encodes.

    Raises:
        UserError: the model is not one of those.
    """
    cfg = getattr(model, "config", None)
    base = getattr(model, "base_model", None)
    headless = base is model and getattr(model, "embeddings", None) is not None  # a bare encoder
    if cfg is None or base is None or (base is model and not headless):
        raise UserError(
            f"cannot export {type(model).__name__}: expected a Hugging Face ...ForSequenceClassification "
            "model (BERT, MiniLM, ELECTRA, RoBERTa or DistilBERT)"
        )
    mt = str(getattr(cfg, "model_type", ""))
    mods = _embedding_modules(base, mt)
    enc = _distilbert_layers(base, cfg, mods) if mt == "distilbert" else _bert_layers(base, cfg, mods, mt)
    if enc["act"] not in ACTIVATIONS:
        raise UserError(f"cannot export hidden activation {enc['act']!r}; supported: {', '.join(ACTIVATIONS)}")
    head_act = None if headless else _head(model, base, mods, mt)
    hidden, heads = enc["hidden"], enc["heads"]
    if hidden % heads:
        raise UserError(f"hidden size {hidden} is not a multiple of the {heads} attention heads")
    id2label = getattr(cfg, "id2label", None) or {}
    config = {
        "format": FORMAT_NAME,
        "arch": enc["arch"],
        "model_type": mt,
        "hidden_size": hidden,
        "embedding_size": int(mods["emb.word"].weight.shape[1]),
        "head_dim": hidden // heads,
        "num_layers": enc["num_layers"],
        "hidden_act": ACTIVATIONS[enc["act"]],
        "layer_norm_eps": enc["eps"],
        "vocab_size": int(mods["emb.word"].weight.shape[0]),
        "max_position_embeddings": int(mods["emb.position"].weight.shape[0]),
        "type_vocab_size": enc["type_vocab"],
        "pad_token_id": int(getattr(cfg, "pad_token_id", 0) or 0),
        "position_style": "roberta" if enc["arch"] == "roberta" else "absolute",
        "head": None if headless else {"activation": head_act},
        "num_labels": 0 if headless else int(mods["head.out"].weight.shape[0]),
        "problem_type": getattr(cfg, "problem_type", None),
        "id2label": {str(k): str(v) for k, v in id2label.items()},
    }
    return Layout(arch=enc["arch"], modules=mods, config=config, num_layers=enc["num_layers"])
