"""Tasks, their data and their batches.

* :mod:`.tasks`: :class:`TaskSpec` for the nine GLUE tasks and the embedded ``rt``, and
  :func:`compute_metrics` (GLUE's official metrics).
* :mod:`.sources`: :func:`load_examples` from a GLUE folder, a CSV/TSV/JSONL file, the hub, or the
  embedded Rotten Tomatoes corpus.
* :mod:`.corpus`: :func:`load_corpus`, the task-agnostic sentences for upstream compression (the
  embedded ``general-en`` corpus, or a user's text / JSONL file).
* :mod:`.batching`: :func:`encode`, :class:`Collator` (dynamic padding), :func:`batch_order`
  (length-grouped, deterministic batches).

Names are imported lazily so that ``import compactbert.data.tasks`` does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".tasks": ("TaskSpec", "TASKS", "GLUE_TASKS", "get_task", "compute_metrics"),
    ".sources": ("Example", "load_examples", "ensure_rt_corpus", "cache_dir"),
    ".corpus": ("load_corpus", "ensure_corpus"),
    ".batching": ("encode", "Collator", "batch_order", "restore_order", "feature_lengths"),
})
