"""`compactbert compress` end to end on a tiny model: stages, files, size, resume, errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from compactbert.cli import main
from compactbert.nn.io import load_model
from compactbert.nn.surgery import compressed_modules
from toy import make_tiny_model, write_toy_glue

RECIPE = """# test recipe: layer reduction + KD, then ternary W2A8 + 50% magnitude pruning + KD
seed: 1
max_seq_length: 32
bf16: false
stages:
  - name: reduce
    steps: 4
    lr: 3.0e-3
    batch_size: 8
    methods:
      - {type: layer_reduction, keep: [0, 2]}
      - {type: distillation, alpha: 0.5, weights: {logits: 1.0, hidden: 1.0}}
  - name: quant-prune
    steps: 6
    lr: 3.0e-3
    batch_size: 8
    methods:
      - {type: ternary}
      - {type: magnitude_pruning, sparsity: 0.5, schedule: linear, start: 0, end: 4, frequency: 2}
      - {type: distillation, alpha: 0.5}
"""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    glue = write_toy_glue(root / "glue", "sst2", n_train=48, n_dev=16)
    model = make_tiny_model(root / "bert", "bert", num_layers=4)
    run = root / "teacher"
    assert main([
        "finetune", "--model", str(model), "--task", "sst2", "--data", str(glue), "--out", str(run),
        "--epochs", "1", "--batch-size", "8", "--lr", "0.003", "--no-bf16", "--no-progress",
    ]) == 0
    recipe = root / "r.yaml"
    recipe.write_text(RECIPE)
    return glue, run, recipe


def _compress(glue, run, recipe, out, *extra):
    return main([
        "compress", str(recipe), "--teacher", str(run), "--task", "sst2", "--data", str(glue), "--out", str(out),
        "--no-progress", *extra,
    ])


def test_compress_runs_stages_and_leaves_a_compressed_model(teacher, tmp_path, capsys):
    glue, run, recipe = teacher
    out = tmp_path / "c"
    assert _compress(glue, run, recipe, out) == 0
    stdout = capsys.readouterr().out
    assert "x smaller" in stdout
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "compress" and info["status"] == "done"
    assert [s["steps"] for s in info["stage_results"]] == [4, 6]
    # the final model: 2 of the teacher's layers, ternary weights, 50% sparse encoder Linear layers
    net, _ = load_model(out / "model")
    teacher_net, _ = load_model(run / "model")
    assert net.config.num_hidden_layers == 2
    layers = {n: m for n, m in compressed_modules(net).items() if "encoder.layer" in n}
    assert len(layers) == 2 * 6
    for name, m in layers.items():
        assert m.weight_quantizer.spec()["kind"] == "ternary", name
        zeros = (m.effective_weight() == 0).float().mean().item()
        assert zeros >= 0.5 - 1e-6, name  # pruned half + ternary zeros
        assert (m.weight_mask == 0).sum().item() == round(0.5 * m.weight.numel()), name
    size = json.loads((out / "size.json").read_text())
    assert size["ratio"] > 3 and size["compressed_bytes"] < size["dense_fp32_bytes"]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["task"] == "sst2" and ev["n"] == 16 and 0.0 <= ev["metrics"]["accuracy"] <= 1.0
    stages = [json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages[0] == 0 and stages[-1] == 1
    assert (out / "recipe.yaml").read_text().startswith("seed: 1")
    del teacher_net


def test_compress_resume_continues_and_reaches_the_same_model(teacher, tmp_path):
    glue, run, recipe = teacher
    out = tmp_path / "c"
    assert _compress(glue, run, recipe, out) == 0
    before = {k: v.clone() for k, v in load_model(out / "model")[0].state_dict().items()}
    # Pretend the run stopped before stage 1 finished: its done marker and the final files are gone.
    (out / "stages" / "1-quant-prune" / "done.json").unlink()
    shutil.rmtree(out / "model")
    (out / "eval.json").unlink()
    assert _compress(glue, run, recipe, out) == 2  # exists: needs --resume or --overwrite
    assert _compress(glue, run, recipe, out, "--resume") == 0
    after = load_model(out / "model")[0].state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # the same data folder spelled another way resumes; another folder does not
    other = glue.parent / "other-glue"
    shutil.copytree(glue, other)
    assert main(["compress", str(recipe), "--teacher", str(run), "--task", "sst2", "--out", str(out), "--no-progress",
                 "--data", os.path.relpath(glue), "--resume"]) == 0
    assert main(["compress", str(recipe), "--teacher", str(run), "--task", "sst2", "--out", str(out), "--no-progress",
                 "--data", str(other), "--resume"]) == 2


def test_compress_errors_are_one_line(teacher, tmp_path, capsys):
    glue, run, recipe = teacher
    assert _compress(glue, run, recipe, tmp_path / "x", "--set", "stages.0.methods.0.keep=[0, 9]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stages.0.methods.0" in err[0] and "keep" in err[0]
    assert not (tmp_path / "x").exists()  # nothing written for a bad recipe
    assert _compress(glue, tmp_path / "nope", recipe, tmp_path / "y") == 2
    assert "nope" in capsys.readouterr().err


def test_size_command_prints_table_and_writes_size_json(teacher, tmp_path, capsys):
    glue, run, recipe = teacher
    assert main(["size", str(run)]) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "size.json").read_text())
    assert report["ratio"] == pytest.approx(2.0)  # an uncompressed model: stored fp16, as export does
    assert f"{report['compressed_bytes']:,}" in out and "word_embeddings" in out
    assert main(["size", str(tmp_path / "missing")]) == 2


def test_export_packed_then_eval_the_packed_directory(teacher, tmp_path, capsys):
    """compress -> export -> eval DIR: the fast runtime agrees with the training-time model."""
    import numpy as np

    from compactbert.api import packed_logits
    from compactbert.data.batching import encode
    from compactbert.runtime import default_dtype
    from compactbert.data.sources import load_examples
    from compactbert.train.loop import predict

    glue, run, recipe = teacher
    out = tmp_path / "c"
    assert _compress(glue, run, recipe, out) == 0
    packed = tmp_path / "packed"
    assert main(["export", str(out), "--out", str(packed)]) == 0
    assert "bytes on disk" in capsys.readouterr().out
    assert main(["eval", str(packed), "--task", "sst2", "--data", str(glue)]) == 0
    assert "accuracy" in capsys.readouterr().out
    examples = load_examples("sst2", "dev", glue)
    net, tok = load_model(out / "model")
    ref = predict(net, encode(examples, tok, 32), batch_size=8)
    ref = np.stack([ref[i] for i in range(len(examples))])
    got = packed_logits(packed, examples, 32).numpy()
    assert got.shape == ref.shape == (16, 2)
    assert (got.argmax(1) == ref.argmax(1)).all()  # every prediction, not 15 of 16
    # fp32 where the CPU has no native bf16: the exact path (compress rounds what export stores to fp16)
    assert np.abs(got - ref).max() <= (1e-5 if default_dtype() == "fp32" else 0.05)
    # the packed tensors are exactly what `size` predicted (no structured pruning here to remove);
    # the safetensors file adds only its JSON header
    import struct

    manifest = json.loads((packed / "manifest.json").read_text())
    predicted = json.loads((out / "size.json").read_text())["compressed_bytes"]
    assert manifest["payload_bytes"] == predicted
    weights = packed / "model.safetensors"
    header = struct.unpack("<Q", weights.read_bytes()[:8])[0]
    assert weights.stat().st_size == 8 + header + predicted
    # `size` on the packed directory reads its manifest and agrees with `size` on the run
    assert main(["size", str(packed), "--out", str(tmp_path / "packed-size.json")]) == 0
    packed_report = json.loads((tmp_path / "packed-size.json").read_text())
    assert packed_report["compressed_bytes"] == predicted
    assert packed_report["files_bytes"] == sum(f.stat().st_size for f in packed.rglob("*") if f.is_file())
    # the prediction includes the xz tokenizer byte for byte; the JSON files are what is left
    size_json = json.loads((out / "size.json").read_text())
    tok_files = sum(f.stat().st_size for f in (packed / "tokenizer").iterdir())
    assert size_json["tokenizer_bytes"] == tok_files > 0
    assert size_json["predicted_files_bytes"] == predicted + tok_files
    json_files = sum((packed / n).stat().st_size for n in ("manifest.json", "config.json"))
    assert packed_report["files_bytes"] - size_json["predicted_files_bytes"] == json_files + 8 + header
    assert main(["export", str(out), "--out", str(tmp_path / "bad"), "--format", "tflite"]) == 2


def test_compress_with_taylor_structured_pruning_and_distillation(teacher, tmp_path):
    # Taylor scores hook the weights' gradients: the dry run before the run must allow that too
    glue, run, _ = teacher
    recipe = tmp_path / "s.yaml"
    recipe.write_text(
        "seed: 1\nmax_seq_length: 32\nbf16: false\nstages:\n  - name: s\n    steps: 6\n    lr: 3.0e-3\n"
        "    batch_size: 8\n    methods:\n"
        "      - {type: structured_pruning, heads: 0.5, neurons: 0.5, score: taylor, schedule: linear,"
        " start: 0, end: 4, frequency: 2}\n"
        "      - {type: distillation, alpha: 0.0, weights: {logits: 1.0, hidden: 1.0}}\n"
    )
    out = tmp_path / "s"
    assert _compress(glue, run, recipe, out) == 0
    net, _ = load_model(out / "model")
    for name, m in compressed_modules(net).items():
        if name.endswith("intermediate.dense"):
            rows_left = int((m.weight_mask.reshape(m.weight.shape[0], -1) != 0).any(dim=1).sum())
            assert rows_left == m.weight.shape[0] // 2, name  # half of the FFN neurons removed


def _spy_on_evaluations(monkeypatch) -> list:
    """Record (bf16, batch size, longest input) of every evaluate_model call, on a CPU that claims
    native bf16 (so the bf16 decisions are the same on every machine)."""
    import compactbert.train.loop as loop

    seen = []
    real = loop.evaluate_model

    def spy(model, spec, features, batch_size, bf16, pad_id):
        seen.append((bf16, batch_size, max(len(f["input_ids"]) for f in features)))
        return real(model, spec, features, batch_size, bf16, pad_id)

    monkeypatch.setattr(loop, "evaluate_model", spy)
    monkeypatch.setattr(loop, "bf16_supported", lambda: True)
    return seen


@pytest.mark.parametrize(("method", "bf16_eval"), [("{type: ternary}", False), ("{type: quantize, weight: ternary}", True)])
def test_final_evaluation_is_fp32_for_models_with_activation_quantizers(teacher, tmp_path, monkeypatch, method, bf16_eval):
    seen = _spy_on_evaluations(monkeypatch)
    glue, run, _ = teacher
    recipe = tmp_path / "q.yaml"
    recipe.write_text("seed: 1\nmax_seq_length: 32\nbf16: true\nstages:\n  - name: q\n    steps: 2\n    batch_size: 8\n"
                      f"    methods:\n      - {method}\n")
    assert _compress(glue, run, recipe, tmp_path / "q") == 0
    assert seen[-1][0] is bf16_eval  # the final evaluation (W2A8: FP32, as the exact runtime computes)


def test_eval_of_a_compress_run_reproduces_its_eval_json(teacher, tmp_path, monkeypatch):
    """`compactbert eval RUN` evaluates a compress run as the run did: its recipe's sequence length
    (8 here, not the default 128) and FP32 for a model with activation quantizers (not bf16)."""
    import yaml

    seen = _spy_on_evaluations(monkeypatch)
    glue, run, _ = teacher
    recipe = tmp_path / "w2a8.yaml"
    recipe.write_text("seed: 1\nmax_seq_length: 8\nbf16: true\nstages:\n  - name: q\n    steps: 2\n"
                      "    batch_size: 8\n    methods:\n      - {type: ternary}\n")
    out = tmp_path / "c"
    assert _compress(glue, run, recipe, out) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["max_seq_length"] == 8 and config["bf16"] is True
    run_eval = json.loads((out / "eval.json").read_text())
    compress_call = seen[-1]
    assert compress_call == (False, 64, 8)  # FP32 (activation quantizers), truncated to 8 tokens
    assert main(["eval", str(out), "--out", str(tmp_path / "again.json")]) == 0
    assert seen[-1] == compress_call
    assert json.loads((tmp_path / "again.json").read_text()) == run_eval
    # a run written before config.yaml recorded these settings: they come from its recipe.yaml
    for key in ("max_seq_length", "bf16", "eval_batch_size"):
        del config[key]
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["eval", str(out), "--out", str(tmp_path / "old.json")]) == 0
    assert seen[-1] == compress_call
    assert json.loads((tmp_path / "old.json").read_text()) == run_eval


ALPHA_RECIPE = """seed: 3
max_seq_length: 32
bf16: false
stages:
  - name: kd
    steps: 3
    lr: 3.0e-3
    batch_size: 8
    methods:
      - {{type: distillation, alpha: {alpha}, weights: {{logits: 1.0, hidden: 1.0}}}}
"""


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_alpha_weights_the_task_loss_in_the_real_loop(teacher, tmp_path, alpha):
    """alpha is the task loss's share: with alpha 0 the labels cannot change what is learned (the loop
    once added the task loss at full weight whatever alpha said); with 0.5 they must."""
    glue, run, _ = teacher
    flipped = tmp_path / "glue-flipped"
    shutil.copytree(glue, flipped)
    train = flipped / "SST-2" / "train.tsv"
    lines = train.read_text().splitlines()
    head, rows = lines[0], [line.split("\t") for line in lines[1:]]
    train.write_text("\n".join([head] + ["\t".join(r[:-1] + [str(1 - int(r[-1]))]) for r in rows]) + "\n")
    recipe = tmp_path / "kd.yaml"
    recipe.write_text(ALPHA_RECIPE.format(alpha=alpha))
    assert _compress(glue, run, recipe, tmp_path / "a") == 0
    assert _compress(flipped, run, recipe, tmp_path / "b") == 0
    a = load_model(tmp_path / "a" / "model")[0].state_dict()
    b = load_model(tmp_path / "b" / "model")[0].state_dict()
    same = all(torch.equal(a[k], b[k]) for k in a)
    assert same == (alpha == 0.0)
