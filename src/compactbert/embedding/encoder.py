"""Sentence embeddings from any model compactbert can open: a model folder, a run, a packed directory.

:func:`open_encoder` returns an object with ``encode(sentences, batch_size=...)`` -> (n, dim)
float32 tensor and a ``pooling`` (:class:`~.pooling.Pooling`):

* a Hugging Face model folder, a hub id or ``minilm-l6``: its encoder (``AutoModel``) in float32;
* a run directory: the encoder of its ``model/`` (compressed layers rebuilt), its head ignored;
* a packed directory: the fast runtime's :meth:`~compactbert.runtime.PackedModel.encode`.

The pooling is the one the model's sentence-transformers config declares (``modules.json``); a run
without one takes its source model's (``run.json``'s ``model`` or ``teacher``); else mean pooling,
L2-normalised (what all-MiniLM-L6-v2 declares).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError, positive_int
from ..nn.pooling import DEFAULT_POOLING, Pooling, pool, read_pooling

__all__ = ["HFSentenceEncoder", "open_encoder", "find_pooling", "embedding_model_pooling"]

DEFAULT_MAX_LENGTH = 128


class HFSentenceEncoder:
    """A transformers encoder (no head) plus pooling.

    Args:
        model: a module whose output has ``last_hidden_state`` (``BertModel`` ...).
        tokenizer: its tokenizer.
        pooling: how token states become a sentence vector.
        name: what to call it in messages.
    """

    def __init__(self, model, tokenizer, pooling: Pooling = DEFAULT_POOLING, name: str = "model"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.name = name

    def token_states(self, batch: dict[str, Any]):
        """(batch, seq, dim) last-layer token states of a tokenized batch."""
        out = self.model(**batch)
        states = getattr(out, "last_hidden_state", None)
        if states is None or states.dim() != 3:
            raise UserError(f"{self.name} has no token embeddings to pool (its output has no last_hidden_state); "
                            "expected an encoder such as BERT or MiniLM")
        return states

    def encode(self, sentences: Sequence[str], batch_size: int = 64, max_length: int | None = None):
        """(len(sentences), dim) float32 sentence embeddings, in length-sorted batches, in input order."""
        import torch

        positive_int(batch_size, "batch_size")
        length = int(max_length or self.pooling.max_seq_length or DEFAULT_MAX_LENGTH)
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        length = min(length, int(limit)) if limit else length
        sentences = list(sentences)
        if not sentences:
            return torch.zeros(0, int(getattr(self.model.config, "hidden_size", 0)))
        lens = [len(ids) for ids in self.tokenizer(sentences, truncation=True, max_length=length)["input_ids"]]
        order = sorted(range(len(sentences)), key=lens.__getitem__)
        chunks: list[torch.Tensor] = []
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                                       max_length=length, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                chunks.append(pool(self.token_states(batch), batch["attention_mask"], self.pooling).cpu())
        out = torch.zeros(len(sentences), chunks[0].shape[1])
        out[torch.tensor(order)] = torch.cat(chunks)
        return out


def find_pooling(target, depth: int = 4) -> Pooling:
    """The pooling of a model (a :class:`~compactbert.runs.Target`): its own sentence-transformers
    config, else (for a run) its source model's, else :data:`~.pooling.DEFAULT_POOLING`."""
    from ..models import resolve_model
    from ..runs import MODEL, NAME, RUN, open_path

    for _ in range(depth):
        if target.kind in (MODEL, NAME, RUN):
            folder = target.model_dir() if target.kind == RUN else resolve_model(target.given)
            found = read_pooling(folder) if Path(folder).is_dir() else None
            if found is not None:
                return found
        if target.kind != RUN:
            break
        info = target.run_info()
        source = info.get("model") or info.get("teacher")
        if not source:
            break
        target = open_path(source)
    return DEFAULT_POOLING


def embedding_model_pooling(folder: str | os.PathLike) -> Pooling | None:
    """The pooling of a sentence-embedding model folder: one with a sentence-transformers config
    (``modules.json``) and no trained classification head. None for anything else (a classifier)."""
    from ..loading import config_json, has_classification_head

    cfg = config_json(folder)
    if cfg is None or has_classification_head(cfg):
        return None
    return read_pooling(folder)


def _load_hf(target):
    """(encoder module, tokenizer) of a run, a model folder, a hub id or an alias."""
    from ..loading import first_line, load_saved, quiet_transformers
    from ..models import resolve_model
    from ..nn.io import COMPRESSION_FILE
    from ..runs import RUN

    if target.kind == RUN or (target.path / COMPRESSION_FILE).is_file():
        net, tokenizer = load_saved(target.model_dir(), "the model of run" if target.kind == RUN else "model")
        return getattr(net, "base_model", net), tokenizer
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(target.given)
    with quiet_transformers():
        try:
            return (AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False),
                    AutoTokenizer.from_pretrained(path, trust_remote_code=False))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot load model {target.given!r} ({first_line(e)}); expected a Hugging Face "
                            "encoder folder with model.safetensors and tokenizer files, a hub id, or 'minilm-l6'") from None


def open_encoder(path: str | os.PathLike, dtype: str = "auto"):
    """A sentence encoder for ``path`` (see the module docstring).

    Args:
        path: a model folder, hub id, ``minilm-l6``, run directory or packed directory.
        dtype: for a packed directory, the runtime's dtype (``auto``, ``bf16``, ``fp32``).

    Raises:
        UserError: an ONNX export or any other file/folder that has no token states to pool, a model
            without a tokenizer, an unsupported pooling config.
    """
    from ..runs import MODEL, NAME, PACKED, RUN, open_path

    target = open_path(path)
    if target.kind == PACKED:
        from ..runtime import load

        return load(target.path, dtype=dtype)
    if target.kind not in (MODEL, NAME, RUN):
        what = "an ONNX export, which outputs only logits" if target.kind == "onnx" else "not a model"
        raise UserError(f"{str(path)!r} is {what}: it has no token embeddings to pool; give a model folder, "
                        "a run directory, a packed directory or 'minilm-l6'")
    model, tokenizer = _load_hf(target)
    if tokenizer is None:
        raise UserError(f"model {str(path)!r} has no tokenizer files; it cannot encode text")
    if getattr(model, "embeddings", None) is None and getattr(model, "get_input_embeddings", None) is None:
        raise UserError(f"model {str(path)!r} has no token embeddings to pool; expected an encoder such as BERT or MiniLM")
    return HFSentenceEncoder(model, tokenizer, find_pooling(target), name=f"model {str(path)!r}")
