"""Embedding tasks: score a model's sentence embeddings with no training.

``stsb-embed``: STS-B scored by the cosine similarity of the two sentences' embeddings, as
sentence-transformers' ``EmbeddingSimilarityEvaluator`` does: Spearman (and Pearson) correlation
of the cosines with the gold scores, times 100. The uncompressed all-MiniLM-L6-v2 (``minilm-l6``)
scores 86.72 on the GLUE dev set and 82.03 on the STS-B test set (mean pooling over the
attention mask, L2-normalised)::

    compactbert eval minilm-l6 --task stsb-embed --data ../shared/data/glue --split test
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import UserError

__all__ = ["EMBEDDING_TASKS", "embedding_task", "is_embedding_task", "similarity_metrics", "evaluate_embedding"]

# embedding task -> the task whose data it reads
EMBEDDING_TASKS = {"stsb-embed": "stsb"}
SPEARMAN_COSINE = "spearman_cosine"
PEARSON_COSINE = "pearson_cosine"


def _norm(name: str) -> str:
    return re.sub(r"[-_ .]", "", str(name).strip().lower())


def embedding_task(name: object) -> str | None:
    """The canonical embedding task for ``name`` (``"STS-B-embed"`` -> ``"stsb-embed"``), or None."""
    if not isinstance(name, str):
        return None
    key = _norm(name)
    return next((t for t in EMBEDDING_TASKS if _norm(t) == key or _norm(t) == key.replace("sts", "stsb", 1)), None)


def is_embedding_task(name: object) -> bool:
    """True for the names of :data:`EMBEDDING_TASKS`."""
    return embedding_task(name) is not None


def similarity_metrics(emb_a, emb_b, gold) -> dict[str, float]:
    """Spearman and Pearson correlation (x 100) of the rows' cosine similarities with ``gold``.

    Args:
        emb_a, emb_b: (n, dim) arrays or tensors (need not be normalised).
        gold: (n,) gold similarity scores.
    """
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    y = np.asarray(gold, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != y.shape[0] or a.shape[0] < 2:
        raise ValueError(f"need two (n, dim) arrays and n >= 2 scores; got {a.shape}, {b.shape}, {y.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    if np.ptp(cos) == 0 or np.ptp(y) == 0:  # no defined correlation: report none rather than NaN
        return {SPEARMAN_COSINE: 0.0, PEARSON_COSINE: 0.0}
    return {SPEARMAN_COSINE: 100.0 * float(spearmanr(cos, y).statistic),
            PEARSON_COSINE: 100.0 * float(pearsonr(cos, y).statistic)}


def evaluate_embedding(
    path: str | os.PathLike,
    task: str = "stsb-embed",
    data: str | os.PathLike | None = None,
    split: str | None = None,
    max_eval_samples: int | None = None,
    batch_size: int | None = None,
    max_seq_length: int | None = None,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Score ``path``'s sentence embeddings on an embedding task (no training).

    Args:
        path: a model folder, hub id, ``minilm-l6``, run directory or packed directory.
        task: ``"stsb-embed"``.
        data: where STS-B is (a GLUE folder, the task folder, a file, a hub reference); default: a
            run's data, else the hub.
        split: ``dev`` (default) or ``test`` (GLUE's test file has no scores; the STS benchmark's has).
        max_eval_samples: score a fixed random subset of this many pairs.
        batch_size: sentences per forward pass (default 64).
        max_seq_length: tokenizer truncation (default: the model's sentence-transformers
            ``max_seq_length``, else 128).
        dtype: for a packed directory, the runtime's dtype (``auto``, ``bf16``, ``fp32``).

    Returns:
        ``{"task", "split", "n", "metrics": {"spearman_cosine", "pearson_cosine"}, "pooling": {...}}``.

    Raises:
        UserError: an unknown task or split, unreadable data, a model with no token embeddings to pool,
            or a pooling config that is not supported.
    """
    from ..data.sources import load_examples, normalize_split
    from ..data.tasks import get_task
    from ..defaults import EVAL_BATCH_SIZE, SUBSET_SEED
    from ..runs import RUN, open_path
    from .encoder import open_encoder

    name = embedding_task(task)
    if name is None:
        raise UserError(f"unknown embedding task {task!r}; valid: {', '.join(EMBEDDING_TASKS)}")
    spec = get_task(EMBEDDING_TASKS[name])
    target = open_path(path)
    if target.kind == RUN and data is None:
        data = target.run_info()["config"].get("data")
    split = normalize_split(spec, split or spec.eval_splits[0])
    encoder = open_encoder(path, dtype=dtype)  # a model that cannot be pooled fails before the data is read
    examples = load_examples(spec, split, data, max_eval_samples, SUBSET_SEED)
    texts = list(dict.fromkeys(t for ex in examples for t in (ex.text_a, ex.text_b)))
    emb = encoder.encode(texts, batch_size=int(batch_size or EVAL_BATCH_SIZE), max_length=max_seq_length)
    row = {t: i for i, t in enumerate(texts)}
    a = emb[[row[ex.text_a] for ex in examples]].numpy()
    b = emb[[row[ex.text_b] for ex in examples]].numpy()
    metrics = similarity_metrics(a, b, [ex.label for ex in examples])
    return {"task": name, "split": split, "n": len(examples), "metrics": metrics,
            "pooling": encoder.pooling.to_dict()}
