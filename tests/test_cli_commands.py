"""`compactbert finetune` and `compactbert eval` from the command line: output, files, help."""

from __future__ import annotations

import json

import pytest

from compactbert.cli import main
from toy import make_tiny_model, write_toy_glue


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    glue = write_toy_glue(root / "glue", "sst2", n_train=32, n_dev=16)
    model = make_tiny_model(root / "bert", "bert")
    return glue, model


def test_finetune_then_eval_print_tables_and_write_eval_json(env, capsys, tmp_path):
    glue, model = env
    out = tmp_path / "run"
    code = main([
        "finetune", "--model", str(model), "--task", "SST-2", "--data", str(glue), "--out", str(out),
        "--epochs", "1", "--batch-size", "8", "--lr", "0.003", "--eval-every", "2", "--seed", "3",
        "--max-eval-samples", "12", "--no-bf16", "--no-progress", "--tensorboard",
    ])
    stdout = capsys.readouterr().out
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    assert (result["task"], result["split"], result["n"]) == ("sst2", "dev", 12)
    assert f"{result['metrics']['accuracy']:.4f}" in stdout and "sst2 dev (n=12)" in stdout
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())

    # eval of the run: same numbers, eval.json rewritten in the run directory.
    (out / "eval.json").unlink()
    assert main(["eval", str(out), "--max-eval-samples", "12"]) == 0
    stdout = capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text()) == result
    assert "accuracy" in stdout and f"wrote {out / 'eval.json'}" in stdout

    # eval --out FILE on the whole dev split of an explicit task and data.
    target = tmp_path / "full.json"
    assert main(["eval", str(out), "--task", "sst2", "--data", str(glue), "--split", "validation", "--out", str(target)]) == 0
    full = json.loads(target.read_text())
    assert (full["split"], full["n"]) == ("dev", 16)
    assert f"wrote {target}" in capsys.readouterr().out


def test_help_texts_name_the_options(capsys):
    assert main(["finetune", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--model", "--task", "--data", "--out", "--epochs", "--lr", "--batch-size", "--max-seq-length",
                   "--max-train-samples", "--max-eval-samples", "--seed", "--bf16", "--no-bf16", "--resume",
                   "--overwrite", "--eval-every", "--tensorboard"):
        assert option in text, option
    assert main(["eval", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("PATH", "--task", "--data", "--split", "--max-eval-samples", "--out"):
        assert option in text.upper() if option == "PATH" else option in text, option
