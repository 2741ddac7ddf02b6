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

from ..lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "compactbert.nn.pooling": ("Pooling", "DEFAULT_POOLING", "read_pooling", "pool"),
    ".encoder": ("open_encoder",),
    ".evaluate": (
        "EMBEDDING_TASKS", "is_embedding_task", "evaluate_embedding", "similarity_metrics", "retrieval_metrics",
    ),
})
