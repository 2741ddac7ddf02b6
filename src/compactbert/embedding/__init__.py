"""Sentence embeddings: pooling, encoders, and embedding tasks scored with no training.

* :mod:`compactbert.nn.pooling` (re-exported here): :class:`Pooling` read from a
  sentence-transformers folder (``modules.json``, ``1_Pooling/config.json``) and :func:`pool`
  (mean / cls / max / mean_sqrt_len, L2-normalised). It lives in :mod:`compactbert.nn` so that
  the runtime can use it without importing this package (which imports the runtime).
* :mod:`.encoder`: :func:`open_encoder`: ``encode(sentences)`` for a model folder, a run or a
  packed directory.
* :mod:`.evaluate`: :func:`evaluate_embedding`: ``stsb-embed`` (STS-B by cosine similarity,
  Spearman x 100).

Names are imported lazily.
"""

from __future__ import annotations

_EXPORTS = {
    "Pooling": "compactbert.nn.pooling",
    "DEFAULT_POOLING": "compactbert.nn.pooling",
    "read_pooling": "compactbert.nn.pooling",
    "pool": "compactbert.nn.pooling",
    "open_encoder": "compactbert.embedding.encoder",
    "EMBEDDING_TASKS": "compactbert.embedding.evaluate",
    "is_embedding_task": "compactbert.embedding.evaluate",
    "evaluate_embedding": "compactbert.embedding.evaluate",
    "similarity_metrics": "compactbert.embedding.evaluate",
    "retrieval_metrics": "compactbert.embedding.evaluate",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
