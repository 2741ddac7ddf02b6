"""Task specs and GLUE metrics, checked against hand computations and scipy / scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from compactbert.data.tasks import GLUE_TASKS, TASKS, TaskSpec, compute_metrics, get_task
from compactbert.errors import UserError

# A binary confusion matrix with known counts: tp=5, tn=3, fp=2, fn=1 (11 examples).
REFS = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
PREDS = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
TP, TN, FP, FN = 5, 3, 2, 1


def test_confusion_matrix_is_what_the_tests_assume():
    assert int(((PREDS == 1) & (REFS == 1)).sum()) == TP
    assert int(((PREDS == 0) & (REFS == 0)).sum()) == TN
    assert int(((PREDS == 1) & (REFS == 0)).sum()) == FP
    assert int(((PREDS == 0) & (REFS == 1)).sum()) == FN


def test_all_glue_tasks_and_rt_are_defined():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert set(TASKS) == set(GLUE_TASKS) | {"rt"}


@pytest.mark.parametrize(
    "name, text_columns, label_column, label_names, metrics, main, glue_dir",
    [
        ("cola", ("sentence",), "label", ("unacceptable", "acceptable"), ("matthews_correlation",), "matthews_correlation", "CoLA"),
        ("sst2", ("sentence",), "label", ("negative", "positive"), ("accuracy",), "accuracy", "SST-2"),
        ("mrpc", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1", "MRPC"),
        ("qqp", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1", "QQP"),
        ("stsb", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "spearman", "STS-B"),
        ("mnli", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy", "MNLI"),
        ("qnli", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",), "accuracy", "QNLI"),
        ("rte", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",), "accuracy", "RTE"),
        ("wnli", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), ("accuracy",), "accuracy", "WNLI"),
        ("rt", ("text",), "label", ("rotten", "fresh"), ("accuracy",), "accuracy", None),
    ],
)
def test_task_spec_table(name, text_columns, label_column, label_names, metrics, main, glue_dir):
    t = TASKS[name]
    assert (t.name, t.text_columns, t.label_column, t.label_names) == (name, text_columns, label_column, label_names)
    assert (t.metrics, t.main_metric, t.glue_dir) == (metrics, main, glue_dir)
    assert t.main_metric in t.metrics
    assert t.is_regression == (name == "stsb")
    assert t.num_labels == (1 if name == "stsb" else len(label_names))
    assert t.is_pair == (len(text_columns) == 2)


def test_eval_splits_and_hub_names():
    assert TASKS["mnli"].eval_splits == ("dev_matched", "dev_mismatched")
    assert all(TASKS[n].eval_splits == ("dev",) for n in TASKS if n != "mnli")
    assert TASKS["mnli"].hub_text_columns == ("premise", "hypothesis")
    assert TASKS["stsb"].label_range == (0.0, 5.0)
    assert all(TASKS[n].hub_config == n for n in GLUE_TASKS)
    assert TASKS["cola"].glue_header == ("source", "label", "original_label", "sentence")
    assert TASKS["rt"].splits == ("train", "dev")


@pytest.mark.parametrize(
    "alias, name",
    [("SST-2", "sst2"), ("sst_2", "sst2"), ("sst2", "sst2"), ("STS-B", "stsb"), ("MNLI", "mnli"),
     ("CoLA", "cola"), (" rte ", "rte"), ("rotten_tomatoes", "rt"), ("RT", "rt")],
)
def test_get_task_aliases(alias, name):
    assert get_task(alias) is TASKS[name]


def test_get_task_passes_a_spec_through():
    spec = TaskSpec("custom", ("text",), "label", ("a", "b"), ("accuracy",), "accuracy")
    assert get_task(spec) is spec


def test_get_task_unknown_names_the_value_and_lists_tasks():
    with pytest.raises(UserError) as e:
        get_task("sst3")
    msg = str(e.value)
    assert "'sst3'" in msg and "did you mean 'sst2'" in msg
    for name in TASKS:
        assert name in msg


def test_cola_matthews_correlation_matches_hand_and_sklearn():
    hand = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert hand == pytest.approx(13 / math.sqrt(840))
    m = compute_metrics("cola", PREDS, REFS)
    assert set(m) == {"matthews_correlation"}
    assert m["matthews_correlation"] == pytest.approx(hand, abs=1e-12)
    assert m["matthews_correlation"] == pytest.approx(matthews_corrcoef(REFS, PREDS), abs=1e-12)
    assert compute_metrics("cola", REFS, REFS)["matthews_correlation"] == pytest.approx(1.0)
    assert compute_metrics("cola", 1 - REFS, REFS)["matthews_correlation"] == pytest.approx(-1.0)
    # A constant prediction has no correlation: 0, as scikit-learn defines it.
    assert compute_metrics("cola", np.ones_like(REFS), REFS)["matthews_correlation"] == 0.0


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_and_accuracy_match_hand_and_sklearn(task):
    m = compute_metrics(task, PREDS.tolist(), REFS.tolist())
    assert set(m) == {"f1", "accuracy"}
    assert m["f1"] == pytest.approx(2 * TP / (2 * TP + FP + FN))  # 10/13
    assert m["f1"] == pytest.approx(f1_score(REFS, PREDS))
    assert m["accuracy"] == pytest.approx((TP + TN) / len(REFS))  # 8/11
    assert m["accuracy"] == pytest.approx(accuracy_score(REFS, PREDS))
    # F1 is that of the positive class (1): swapping labels changes it.
    assert compute_metrics(task, 1 - PREDS, 1 - REFS)["f1"] == pytest.approx(2 * TN / (2 * TN + FN + FP))


def test_stsb_pearson_and_spearman_match_hand_and_scipy():
    preds = np.array([0.5, 1.9, 2.2, 3.1, 3.0, 4.8])
    refs = np.array([0.0, 2.0, 2.0, 3.4, 4.0, 5.0])  # a tie in the references
    m = compute_metrics("stsb", preds, refs)
    assert set(m) == {"pearson", "spearman"}
    xc, yc = preds - preds.mean(), refs - refs.mean()
    hand_pearson = (xc * yc).sum() / math.sqrt((xc**2).sum() * (yc**2).sum())
    assert m["pearson"] == pytest.approx(hand_pearson, abs=1e-12)
    assert m["pearson"] == pytest.approx(pearsonr(preds, refs).statistic, abs=1e-12)
    # Spearman = Pearson of the (average-tie) ranks.
    rx, ry = rankdata(preds), rankdata(refs)
    rxc, ryc = rx - rx.mean(), ry - ry.mean()
    hand_spearman = (rxc * ryc).sum() / math.sqrt((rxc**2).sum() * (ryc**2).sum())
    assert m["spearman"] == pytest.approx(hand_spearman, abs=1e-12)
    assert m["spearman"] == pytest.approx(spearmanr(preds, refs).statistic, abs=1e-12)
    # A monotone but non-linear prediction: Spearman 1, Pearson below 1.
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    m2 = compute_metrics("stsb", np.exp(10 * x), x * 10)
    assert m2["spearman"] == pytest.approx(1.0) and m2["pearson"] < 0.99


def test_stsb_accepts_a_logit_column_and_reports_zero_for_constant_input():
    refs = [1.0, 2.0, 3.0, 4.0]
    col = np.array([[1.5], [2.5], [2.0], [4.5]])
    assert compute_metrics("stsb", col, refs) == compute_metrics("stsb", col[:, 0], refs)
    assert compute_metrics("stsb", [2.0] * 4, refs) == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli", "rt"])
def test_binary_accuracy(task):
    m = compute_metrics(task, PREDS, REFS)
    assert m == {"accuracy": pytest.approx(8 / 11)}


def test_mnli_three_class_accuracy_and_logits():
    refs = np.array([0, 1, 2, 2, 1, 0, 2])
    preds = np.array([0, 2, 2, 2, 1, 1, 2])
    assert compute_metrics("mnli", preds, refs)["accuracy"] == pytest.approx(5 / 7)
    assert compute_metrics("mnli", preds, refs)["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    logits = np.eye(3)[preds] * 3.0 - 1.0  # (n, 3) whose argmax is preds
    assert compute_metrics("mnli", logits, refs) == compute_metrics("mnli", preds, refs)


def test_every_task_reports_exactly_its_metrics():
    rng = np.random.default_rng(0)
    for name, spec in TASKS.items():
        if spec.is_regression:
            preds, refs = rng.uniform(0, 5, 20), rng.uniform(0, 5, 20)
        else:
            preds, refs = rng.integers(0, spec.num_labels, 20), rng.integers(0, spec.num_labels, 20)
        m = compute_metrics(name, preds, refs)
        assert tuple(m) == spec.metrics
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_metric_input_errors():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        compute_metrics("sst2", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics("sst2", [], [])
    with pytest.raises(UserError, match="unknown task"):
        compute_metrics("nope", [1], [1])
