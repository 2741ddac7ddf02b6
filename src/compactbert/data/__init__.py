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

_EXPORTS = {
    "TaskSpec": "tasks",
    "TASKS": "tasks",
    "GLUE_TASKS": "tasks",
    "get_task": "tasks",
    "compute_metrics": "tasks",
    "Example": "sources",
    "load_examples": "sources",
    "ensure_rt_corpus": "sources",
    "cache_dir": "sources",
    "load_corpus": "corpus",
    "ensure_corpus": "corpus",
    "encode": "batching",
    "Collator": "batching",
    "batch_order": "batching",
    "restore_order": "batching",
    "feature_lengths": "batching",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
