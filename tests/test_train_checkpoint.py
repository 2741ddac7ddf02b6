"""Atomic files and folders, checkpoint round trips, RNG states, weights_only loading."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from compactbert.train import checkpoint as ck


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    model.register_buffer("mask", torch.tensor([1.0, 0.0]))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "eval.json"
    ck.atomic_write_json(target, {"a": 1})
    ck.atomic_write_json(target, {"b": [1, 2]})
    assert json.loads(target.read_text()) == {"b": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not the private mode of mkstemp


def test_staged_dir_swaps_in_complete_folder_and_keeps_old_on_error(tmp_path):
    target = tmp_path / "model"
    with ck.staged_dir(target) as tmp:
        assert tmp.name.startswith("model.tmp-")
        (tmp / "w.bin").write_bytes(b"one")
    assert (target / "w.bin").read_bytes() == b"one"

    with pytest.raises(RuntimeError):
        with ck.staged_dir(target) as tmp:
            (tmp / "w.bin").write_bytes(b"tw")  # half-written new version
            raise RuntimeError("killed while writing")
    assert (target / "w.bin").read_bytes() == b"one"  # the complete old one is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no tmp or old folder left

    with ck.staged_dir(target) as tmp:
        (tmp / "w.bin").write_bytes(b"three")
    assert (target / "w.bin").read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_recover_after_kill_between_the_two_renames(tmp_path):
    # State left by a kill after `checkpoint -> checkpoint.old-X` but before `tmp -> checkpoint`:
    # the old (complete) folder and an unfinished tmp folder; no `checkpoint/`.
    old = tmp_path / "checkpoint.old-abc"
    old.mkdir()
    (old / "train_state.json").write_text('{"step": 4}')
    partial = tmp_path / "checkpoint.tmp-xyz"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert ck.recover_dir(tmp_path / "checkpoint") == tmp_path / "checkpoint"
    assert json.loads((tmp_path / "checkpoint" / "train_state.json").read_text()) == {"step": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # Nothing to recover: None, and nothing created.
    assert ck.recover_dir(tmp_path / "other") is None
    assert not (tmp_path / "other").exists()


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save([ck.get_rng_state()], tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ck.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)[0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_checkpoint_round_trip_restores_weights_buffers_optimizer_and_scheduler(tmp_path, monkeypatch):
    model, opt, sched = _model_and_optimizer(0)
    state = ck.ResumeState(step=3, epoch=1, batch_in_epoch=2, best_metric=0.75, best_step=2, total_steps=10)
    ck.save_checkpoint(tmp_path, model, opt, sched, state, [ck.get_rng_state()])
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == sorted(ck.CHECKPOINT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]

    # Every torch.load call must be weights_only=True (nothing else is unpickled).
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    other, opt2, sched2 = _model_and_optimizer(1)
    ckpt = ck.find_checkpoint(tmp_path)
    ck.load_weights(ckpt, other)
    ck.load_optimizer(ckpt, opt2, sched2)
    rng = ck.load_rng_states(ckpt)
    assert calls == [True, True]
    assert len(rng) == 1
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert sched2.last_epoch == sched.last_epoch == 3
    for g1, g2 in zip(opt.param_groups, opt2.param_groups):
        assert g1["lr"] == g2["lr"]
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for i in s1:
        assert torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"])
        assert torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"])
    got = ck.read_state(ckpt)
    assert (got.step, got.epoch, got.batch_in_epoch, got.best_metric, got.best_step) == (3, 1, 2, 0.75, 2)


def test_new_checkpoint_replaces_old_one_completely(tmp_path):
    model, opt, sched = _model_and_optimizer(0)
    for step in (2, 4):
        ck.save_checkpoint(tmp_path, model, opt, sched, ck.ResumeState(step=step), [ck.get_rng_state()])
    assert ck.read_state(ck.find_checkpoint(tmp_path)).step == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert ck.find_checkpoint(tmp_path / "missing") is None

