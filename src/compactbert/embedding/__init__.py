"""Sentence embeddings: pooling, encoders, and embedding tasks scored with no training.

* :mod:`.pooling`: :class:`Pooling` read from a sentence-transformers folder (``modules.json``,
  ``1_Pooling/config.json``) and :func:`pool` (mean / cls / max / mean_sqrt_len, L2-normalised).
* :mod:`.encoder`: :func:`open_encoder`: ``encode(sentences)`` for a model folder, a run or a
  packed directory.
* :mod:`.evaluate`: :func:`evaluate_embedding`: ``stsb-embed`` (STS-B by cosine similarity,
  Spearman x 100).

Names are imported lazily so that the runtime can import :mod:`.pooling` alone.
"""

from __future__ import annotations

_EXPORTS = {
    "Pooling": "pooling",
    "DEFAULT_POOLING": "pooling",
    "read_pooling": "pooling",
    "pool": "pooling",
    "open_encoder": "encoder",
    "EMBEDDING_TASKS": "evaluate",
    "is_embedding_task": "evaluate",
    "evaluate_embedding": "evaluate",
    "similarity_metrics": "evaluate",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
