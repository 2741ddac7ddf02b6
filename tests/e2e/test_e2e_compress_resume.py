"""Kill a real two-stage `compactbert compress` with SIGKILL in the middle of its second stage, resume
it, and compare with an uninterrupted run of the same recipe: the same final weights, bit for bit,
the same metrics and the same evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from compactbert.cli import main
from toy import make_tiny_model, write_toy_glue

pytestmark = pytest.mark.slow

# Stage 1 is where the state is richest: quantizers, a pruning schedule with LR rewinding, a teacher,
# dropout (the tiny model's default 0.1), and a checkpoint every 2 steps (one per evaluation).
RECIPE = """seed: 3
max_seq_length: 32
bf16: false
stages:
  - name: distill
    steps: 4
    lr: 3.0e-3
    batch_size: 4
    eval_every: 2
    methods:
      - {type: distillation, alpha: 0.5}
  - name: prune-quant
    steps: 24
    lr: 3.0e-3
    batch_size: 4
    eval_every: 2
    methods:
      - {type: ternary}
      - {type: magnitude_pruning, sparsity: 0.5, schedule: linear, start: 0, end: 12, frequency: 4, lr_rewind: true}
      - {type: distillation, alpha: 0.5}
"""
STAGE1 = os.path.join("stages", "1-prune-quant")


def compress_args(recipe, model, data, out, *extra):
    return [
        "compress", str(recipe), "--teacher", str(model), "--task", "sst2", "--data", str(data), "--out", str(out),
        "--no-progress", *extra,
    ]


def checkpoint_step(run_dir) -> int | None:
    try:
        return json.loads((run_dir / STAGE1 / "checkpoint" / "train_state.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or swapped between the calls
        return None


def test_sigkill_in_the_second_stage_then_resume_matches_uninterrupted_run(tmp_path):
    data = write_toy_glue(tmp_path / "glue", "sst2", n_train=40, n_dev=8)
    model = make_tiny_model(tmp_path / "bert", "bert", dropout=0.1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "compactbert", *compress_args(recipe, model, data, killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and (checkpoint_step(killed) or 0) < 4:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "stages" / "0-distill" / "done.json").is_file() and not (killed / STAGE1 / "done.json").exists()
    state = json.loads((killed / STAGE1 / "checkpoint" / "train_state.json").read_text())
    assert 4 <= state["step"] < 24 and not state["done"]  # killed mid-stage, after a checkpoint
    assert json.loads((killed / "run.json").read_text())["status"] != "done"
    before = (killed / STAGE1 / "metrics.jsonl").read_text().splitlines()[: state["step"] // 2]

    assert main(compress_args(recipe, model, data, killed, "--resume")) == 0  # in this process, from the checkpoint
    # It continued from the checkpoint: the records up to it are the killed process's (their times too).
    assert (killed / STAGE1 / "metrics.jsonl").read_text().splitlines()[: len(before)] == before
    assert main(compress_args(recipe, model, data, whole)) == 0  # the reference, never interrupted

    for sub in ("model", os.path.join(STAGE1, "checkpoint")):  # the final model, and the last training state
        wa, wb = load_file(whole / sub / "model.safetensors"), load_file(killed / sub / "model.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{sub}/{k}"
    strip = lambda path: [  # noqa: E731
        {k: v for k, v in json.loads(line).items() if k != "elapsed"} for line in path.read_text().splitlines()
    ]
    assert strip(whole / "metrics.jsonl") == strip(killed / "metrics.jsonl")
    assert len(strip(killed / "metrics.jsonl")) == 2 + 12  # every evaluation of both stages, once
    assert json.loads((whole / "eval.json").read_text())["metrics"] == json.loads((killed / "eval.json").read_text())["metrics"]
    assert json.loads((killed / "run.json").read_text())["status"] == "done"
