"""compactbert.finetune / compactbert.evaluate: run directories, architectures, regression, resume rules."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import compactbert
from compactbert.api import evaluate, finetune
from compactbert.errors import UserError
from compactbert.nn.io import load_model
from compactbert.train.loop import read_metrics
from toy import make_tiny_model, write_toy_glue


FAST = dict(epochs=2, batch_size=8, lr=3e-3, bf16=False, progress=False)


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    for task in ("sst2", "stsb", "mnli"):
        write_toy_glue(root, task, n_train=48, n_dev=24)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model(root / arch, arch) for arch in ("bert", "distilbert", "roberta")}


def best_record(run):
    records = read_metrics(run)
    return max(records, key=lambda r: (r["metrics"]["accuracy"], -r["step"]))


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_finetune_any_architecture_leaves_a_complete_run_dir(arch, models, glue, tmp_path):
    out = tmp_path / "run"
    run = compactbert.finetune(str(models[arch]), "sst2", data=str(glue), out=out, eval_every=3, **FAST)
    assert run == out
    assert {p.name for p in out.iterdir()} == {
        "run.json", "config.yaml", "model", "checkpoint", "metrics.jsonl", "eval.json",
    }
    info = json.loads((out / "run.json").read_text())
    assert (info["kind"], info["task"], info["status"], info["steps"]) == ("finetune", "sst2", "done", 12)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["lr"], config["batch_size"], config["model"]) == (3e-3, 8, str(models[arch]))
    assert [r["step"] for r in read_metrics(out)] == [3, 6, 9, 12]
    # eval.json is the best evaluation, reproduced from the saved model; evaluate() agrees.
    result = json.loads((out / "eval.json").read_text())
    assert (result["task"], result["split"], result["n"]) == ("sst2", "dev", 24)
    assert result["metrics"] == best_record(out)["metrics"]
    assert info["best_step"] == best_record(out)["step"]
    again = compactbert.evaluate(out)
    assert again == result
    model, tok = load_model(out / "model")
    assert model.config.model_type == arch and model.config.num_labels == 2
    assert model.config.id2label == {0: "negative", 1: "positive"}
    if arch == "roberta":  # RoBERTa pads with id 1 and derives positions from it
        assert tok.pad_token_id == model.config.pad_token_id == 1


def test_regression_task_gets_a_single_output_mse_head(models, glue, tmp_path):
    out = finetune(str(models["bert"]), "stsb", data=str(glue), out=tmp_path / "stsb", **FAST)
    model, _ = load_model(out / "model")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    result = json.loads((out / "eval.json").read_text())
    assert set(result["metrics"]) == {"pearson", "spearman"}
    assert all(-1.0 <= v <= 1.0 for v in result["metrics"].values())
    records = read_metrics(out)  # the MSE loss goes down
    assert records[-1]["loss"] < records[0]["loss"]


def test_mnli_evaluates_matched_by_default_and_mismatched_on_request(models, glue, tmp_path):
    out = finetune(str(models["bert"]), "mnli", data=str(glue), out=tmp_path / "mnli", max_steps=2, **FAST)
    assert json.loads((out / "eval.json").read_text())["split"] == "dev_matched"
    mm = evaluate(out, split="dev_mismatched", out=tmp_path / "mm.json")
    assert (mm["split"], mm["n"]) == ("dev_mismatched", 24)
    assert json.loads((tmp_path / "mm.json").read_text()) == mm
    assert json.loads((out / "eval.json").read_text())["split"] == "dev_matched"  # --out leaves it alone


def test_real_minilm_on_a_small_subset_in_bf16(glue, tmp_path):
    out = finetune(
        "minilm-l6", "sst2", data=str(glue), out=tmp_path / "minilm", max_steps=3, batch_size=8,
        max_train_samples=24, max_eval_samples=16, bf16=True, progress=False,
    )
    model, _ = load_model(out / "model")
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_labels) == (6, 384, 2)
    result = json.loads((out / "eval.json").read_text())
    assert result["n"] == 16 and 0.0 <= result["metrics"]["accuracy"] <= 1.0
    # The encoder really was trained (not only the new head) and the weights are finite.
    from compactbert.models import embedded_minilm_path

    base = load_file(str(embedded_minilm_path() / "model.safetensors"))
    tuned = load_file(str(out / "model" / "model.safetensors"))
    key = next(k for k in base if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert not torch.equal(base[key], tuned["bert." + key if not key.startswith("bert.") else key])
    assert all(torch.isfinite(t).all() for t in tuned.values())


def test_resume_rules_and_finished_run(models, glue, tmp_path):
    out = tmp_path / "run"
    args = dict(model=str(models["bert"]), task="sst2", data=str(glue), out=out, max_steps=4, **FAST)
    finetune(**args)
    before = (out / "metrics.jsonl").read_text(), (out / "eval.json").read_text()
    with pytest.raises(UserError, match="already holds a compactbert run"):
        finetune(**args)
    with pytest.raises(UserError, match=r"lr=0\.003.*lr=0\.01"):
        finetune(**{**args, "lr": 0.01}, resume=True)
    assert ((out / "metrics.jsonl").read_text(), (out / "eval.json").read_text()) == before  # nothing lost
    finetune(**args, resume=True)  # a finished run resumes to the same end
    assert ((out / "metrics.jsonl").read_text(), json.loads((out / "eval.json").read_text())) == (
        before[0], json.loads(before[1])
    )


def test_overwrite_only_deletes_the_runs_own_files(models, glue, tmp_path):
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not a compactbert run"):
        finetune(str(models["bert"]), "sst2", data=str(glue), out=out, max_steps=2, **FAST)
    finetune(str(models["bert"]), "sst2", data=str(glue), out=out, max_steps=2, overwrite=True, **FAST)
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "model" / "model.safetensors").is_file()


def test_finetune_from_a_run_and_evaluate_a_plain_model_folder(models, glue, tmp_path):
    first = finetune(str(models["bert"]), "sst2", data=str(glue), out=tmp_path / "a", max_steps=3, **FAST)
    second = finetune(str(first), "sst2", data=str(glue), out=tmp_path / "b", max_steps=1, **FAST)
    assert json.loads((second / "run.json").read_text())["model"] == str(first)
    plain = evaluate(first / "model", task="sst2", data=str(glue))
    assert plain == json.loads((first / "eval.json").read_text())
    assert not (first / "model" / "eval.json").exists()  # a plain model folder gets no eval.json
    with pytest.raises(UserError, match="needs 1"):
        evaluate(first / "model", task="stsb", data=str(glue))
    with pytest.raises(UserError, match="no task given"):
        evaluate(first / "model")
