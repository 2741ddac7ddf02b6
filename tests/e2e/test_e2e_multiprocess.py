"""The same loop in two processes (DDP over gloo on the CPU) reaches the result of one process with the
same global batch, for a model without dropout (what the README claims, and no more: with dropout each
process draws its own masks).

The processes are started with `accelerate launch --multi_gpu --num_processes 2`: on this machine
(no GPU, no MPI) accelerate's `--cpu` launcher starts only one process; `--multi_gpu` starts N through
torch.distributed and the loop sets accelerate up for CPU data parallelism (`loop.cpu_processes`).

Tolerance: final weights within rtol 1e-4 / atol 1e-5, logged losses within 1e-5 relative, identical
dev metrics. The two runs differ only in float summation order (gradients are averaged over two
processes); the model has no dropout, since each process draws its own dropout masks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from toy import make_tiny_model, write_toy_glue

pytestmark = pytest.mark.slow


def finetune_args(model, data, out):
    # 41 examples / global batch 5: 9 batches per epoch, split 3+2 between the processes, and a last
    # batch of one example (the second process then runs a stand-in example with weight 0).
    return [
        "-m", "compactbert", "finetune", "--model", str(model), "--task", "sst2", "--data", str(data),
        "--out", str(out), "--epochs", "2", "--batch-size", "5", "--lr", "0.003", "--eval-every", "6",
        "--seed", "11", "--no-bf16", "--no-progress",
    ]


def start(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc):
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return out


def test_two_processes_match_one_process(tmp_path):
    data = write_toy_glue(tmp_path / "glue", "sst2", n_train=41, n_dev=16)
    model = make_tiny_model(tmp_path / "bert", "bert", dropout=0.0)
    one, two = tmp_path / "one", tmp_path / "two"

    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
    ]
    single = start([sys.executable, *finetune_args(model, data, one)])
    double = start([*launch, *finetune_args(model, data, two)])
    finish(single)
    assert finish(double).count("run directory:") == 1  # only the main process reports (and writes)

    assert json.loads((two / "run.json").read_text())["num_processes"] == 2
    assert {p.name for p in two.iterdir()} == {p.name for p in one.iterdir()}
    r1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    r2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [6, 12, 18]
    for a, b in zip(r1, r2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["metrics"] == a["metrics"]
    assert json.loads((one / "eval.json").read_text()) == json.loads((two / "eval.json").read_text())
    w1, w2 = load_file(one / "checkpoint" / "model.safetensors"), load_file(two / "checkpoint" / "model.safetensors")
    initial = load_file(model / "model.safetensors")
    moved = max((w1[k] - initial[k]).abs().max().item() for k in w1)
    assert moved > 1e-2  # training did change the weights ...
    for k in w1:  # ... and both runs changed them the same way
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
