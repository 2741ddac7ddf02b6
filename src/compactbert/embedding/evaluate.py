"""Embedding tasks: score a model's sentence embeddings with no training.

``stsb-embed``: STS-B scored by the cosine similarity of the two sentences' embeddings, as
sentence-transformers' ``EmbeddingSimilarityEvaluator`` does: Spearman (and Pearson) correlation
of the cosines with the gold scores, times 100. The uncompressed all-MiniLM-L6-v2 (``minilm-l6``)
scores 86.72 on the GLUE dev set and 82.03 on the STS-B test set (mean pooling over the
attention mask, L2-normalised). It also reports a paraphrase-retrieval score from the same data
(no other retrieval set is available offline): each pair with a gold score >= 4 is a query
(sentence 1) whose answer is its sentence 2 among all the split's distinct second sentences;
MRR@10 and recall@1, x 100::

    compactbert eval minilm-l6 --task stsb-embed --data ../shared/data/glue --split test
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import UserError

__all__ = ["EMBEDDING_TASKS", "embedding_task", "is_embedding_task", "similarity_metrics", "retrieval_metrics",
           "evaluate_embedding"]

# embedding task -> the task whose data it reads
EMBEDDING_TASKS = {"stsb-embed": "stsb"}
SPEARMAN_COSINE = "spearman_cosine"
PEARSON_COSINE = "pearson_cosine"
MRR10 = "retrieval_mrr@10"
RECALL1 = "retrieval_recall@1"
RETRIEVAL_MIN_SCORE = 4.0  # STS-B: "mostly equivalent" and above


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


def retrieval_metrics(queries, candidates, answers, k: int = 10) -> dict[str, float]:
    """MRR@k and recall@1 (x 100) of finding each query's answer among ``candidates`` by cosine.

    Args:
        queries: (q, dim) query embeddings; candidates: (c, dim).
        answers: (q,) index of each query's answer in ``candidates``.

    A query's rank is 1 + the number of candidates scored strictly higher than its answer (ties
    count in its favour); its reciprocal rank is 0 beyond ``k``.
    """
    import numpy as np

    qv = np.asarray(queries, dtype=np.float64)
    cv = np.asarray(candidates, dtype=np.float64)
    ans = np.asarray(answers, dtype=np.int64)
    if qv.shape[0] == 0:
        return {MRR10: 0.0, RECALL1: 0.0}
    qv = qv / np.maximum(np.linalg.norm(qv, axis=1, keepdims=True), 1e-12)
    cv = cv / np.maximum(np.linalg.norm(cv, axis=1, keepdims=True), 1e-12)
    scores = qv @ cv.T  # (q, c)
    target = scores[np.arange(len(ans)), ans][:, None]
    rank = 1 + (scores > target).sum(axis=1)
    rr = np.where(rank <= k, 1.0 / rank, 0.0)
    return {MRR10: 100.0 * float(rr.mean()), RECALL1: 100.0 * float((rank == 1).mean())}


def _retrieval(examples, emb, row: dict[str, int]) -> dict[str, float]:
    candidates = list(dict.fromkeys(ex.text_b for ex in examples))
    index = {t: i for i, t in enumerate(candidates)}
    pairs = [ex for ex in examples if ex.label >= RETRIEVAL_MIN_SCORE]
    return retrieval_metrics(emb[[row[ex.text_a] for ex in pairs]].numpy(), emb[[row[t] for t in candidates]].numpy(),
                             [index[ex.text_b] for ex in pairs])


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
        ``{"task", "split", "n", "metrics": {"spearman_cosine", "pearson_cosine", "retrieval_mrr@10",
        "retrieval_recall@1"}, "pooling": {...}}``.

    Raises:
        UserError: an unknown task or split, unreadable data, a model with no token embeddings to pool,
            or a pooling config that is not supported.
    """
    from ..data.sources import load_examples, normalize_split
    from ..data.tasks import get_task, is_corpus_task
    from ..defaults import EVAL_BATCH_SIZE, SUBSET_SEED
    from ..runs import RUN, open_path
    from .encoder import open_encoder

    name = embedding_task(task)
    if name is None:
        raise UserError(f"unknown embedding task {task!r}; valid: {', '.join(EMBEDDING_TASKS)}")
    spec = get_task(EMBEDDING_TASKS[name])
    target = open_path(path)
    if target.kind == RUN and data is None:  # the run's data; an upstream run's STS-B data (its corpus is no STS-B)
        info = target.run_info()
        data = info["config"].get("eval_data" if is_corpus_task(info.get("task")) else "data")
    split = normalize_split(spec, split or spec.eval_splits[0])
    encoder = open_encoder(path, dtype=dtype)  # a model that cannot be pooled fails before the data is read
    examples = load_examples(spec, split, data, max_eval_samples, SUBSET_SEED)
    texts = list(dict.fromkeys(t for ex in examples for t in (ex.text_a, ex.text_b)))
    emb = encoder.encode(texts, batch_size=int(batch_size or EVAL_BATCH_SIZE), max_length=max_seq_length)
    row = {t: i for i, t in enumerate(texts)}
    a = emb[[row[ex.text_a] for ex in examples]].numpy()
    b = emb[[row[ex.text_b] for ex in examples]].numpy()
    metrics = similarity_metrics(a, b, [ex.label for ex in examples])
    metrics.update(_retrieval(examples, emb, row))
    return {"task": name, "split": split, "n": len(examples), "metrics": metrics,
            "pooling": encoder.pooling.to_dict()}
