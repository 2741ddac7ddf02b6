"""Kill a real `compactbert finetune` process with SIGKILL part-way, resume it, and compare with an
uninterrupted run of the same seed: same metrics, same weights. While it runs, whatever is named
`checkpoint/` must always be complete."""

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

from compactbert.train.checkpoint import CHECKPOINT_FILES
from toy import make_tiny_model, write_toy_glue

pytestmark = pytest.mark.slow


def command(model, data, out, *extra):
    # 80 examples / batch 4 = 20 steps per epoch, 2 epochs = 40 steps; dropout is on, so the
    # resumed run only matches if the RNG states come back too.
    return [
        sys.executable, "-m", "compactbert", "finetune", "--model", str(model), "--task", "sst2",
        "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "0.003",
        "--eval-every", "8", "--save-every", "3", "--seed", "5", "--no-bf16", "--no-progress", *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: one thread is fastest on a shared CPU


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_complete(run_dir, seen):
    """Whatever is named `checkpoint/` or `model/` now must be complete."""
    try:
        names = set(os.listdir(run_dir / "checkpoint"))
        state = json.loads((run_dir / "checkpoint" / "train_state.json").read_text())
    except FileNotFoundError:  # not there yet, or swapped between the two calls: the next poll sees it
        state = None
    if state is not None:
        assert names >= set(CHECKPOINT_FILES), f"partial checkpoint seen: {sorted(names)}"
        seen.append(state["step"])
    try:
        names = set(os.listdir(run_dir / "model"))
    except FileNotFoundError:
        return
    assert names >= {"config.json", "model.safetensors", "tokenizer.json"}, f"partial model seen: {sorted(names)}"


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    data = write_toy_glue(tmp_path / "glue", "sst2", n_train=80, n_dev=24)
    model = make_tiny_model(tmp_path / "bert", "bert", dropout=0.1)
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    # The uninterrupted run goes on beside the one that gets killed (two cores).
    reference = subprocess.Popen(command(model, data, whole), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    proc = subprocess.Popen(command(model, data, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    seen: list[int] = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            check_complete(killed, seen)
            if seen and seen[-1] >= 12:  # past an evaluation, in the middle of epoch 0 (steps 1-20)
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except BaseException:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
        raise
    assert proc.returncode == -signal.SIGKILL
    assert len(set(seen)) >= 2 and all(s % 3 == 0 for s in seen)  # checkpoints every 3 steps, all complete
    state = json.loads((killed / "checkpoint" / "train_state.json").read_text())
    assert 12 <= state["step"] < 20 and not state["done"]  # the resumed run crosses into epoch 1
    assert not (killed / "eval.json").exists()

    resumed = run(command(model, data, killed, "--resume"))
    assert "Traceback" not in resumed.stderr
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err.decode()[-3000:]

    a, b = json.loads((whole / "eval.json").read_text()), json.loads((killed / "eval.json").read_text())
    assert a["n"] == b["n"] == 24
    assert a["metrics"].keys() == b["metrics"].keys()
    assert all(abs(a["metrics"][k] - b["metrics"][k]) <= 1e-6 for k in a["metrics"])
    for sub in ("model", "checkpoint"):  # best weights and final weights
        wa, wb = load_file(whole / sub / "model.safetensors"), load_file(killed / sub / "model.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=f"{sub}/{k}")
    strip = lambda path: [  # noqa: E731
        {k: v for k, v in json.loads(line).items() if k != "elapsed"} for line in path.read_text().splitlines()
    ]
    assert strip(whole / "metrics.jsonl") == strip(killed / "metrics.jsonl")
    assert json.loads((killed / "run.json").read_text())["status"] == "done"
    leftovers = [p.name for p in killed.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
