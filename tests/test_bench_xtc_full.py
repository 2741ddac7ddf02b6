"""benchmarks/xtc_full.py: what carries a run off a lent machine (deadline, bundle) and how the
table says where a run trained and whether it can go on."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import xtc_full  # noqa: E402


def fake_run(root: Path, name: str = "gpu-stsb-xtc-binary", packed_bytes: int = 1000) -> Path:
    """A finished run directory as `compactbert compress` + export leave it, with a log beside it."""
    out = root / name
    for d in ["model", "packed/tokenizer", "stages/0-binary-kd/checkpoint", "stages/0-binary-kd/model"]:
        (out / d).mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"0" * 5000)  # FP32 model: never carried
    (out / "stages/0-binary-kd/model/model.safetensors").write_bytes(b"1" * 5000)
    (out / "stages/0-binary-kd/checkpoint/optimizer.pt").write_bytes(b"2" * 5000)
    (out / "stages/0-binary-kd/metrics.jsonl").write_text(
        json.dumps({"step": 180, "epoch": 1.0, "metrics": {"spearman": 0.5}, "elapsed": 12.0}) + "\n")
    (out / "packed/model.safetensors").write_bytes(random.Random(0).randbytes(packed_bytes))  # incompressible
    (out / "packed/manifest.json").write_text("{}")
    (out / "eval.json").write_text(json.dumps({"metrics": {"spearman": 0.5}}))
    (out / "run.json").write_text(json.dumps({"status": "done"}))
    (root / f"{name}.log").write_text(
        f"\n$ python -m compactbert compress xtc-binary --out {out}  # 2026-11-30T22:54:31 on NVIDIA H200 (CUDA 13.0)\n"
        "step 180/3240  epoch 1.00\n")
    return out


def args_for(tmp_path: Path, *extra: str):
    return xtc_full.parse_args(["--task", "stsb", "--teacher", str(tmp_path / "t"), "--prefix", str(tmp_path / "gpu-stsb-"),
                                "--recipes", "xtc-binary", "--bundle", str(tmp_path / "out"), *extra])


def members(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return set(tar.getnames())


def test_bundle_carries_curves_logs_and_packed_weights_but_no_fp32_model_or_checkpoint(tmp_path):
    fake_run(tmp_path)
    dest = xtc_full.bundle(args_for(tmp_path), "xtc-binary")
    names = members(dest)
    run = "gpu-stsb-xtc-binary"
    assert {f"{run}/packed/model.safetensors", f"{run}/stages/0-binary-kd/metrics.jsonl", f"{run}/eval.json",
            f"{run}/run.json", f"{run}.log"} <= names
    assert not any(n.startswith(f"{run}/model") for n in names)
    assert not any("checkpoint" in n for n in names)
    assert f"{run}/stages/0-binary-kd/model/model.safetensors" not in names


def test_a_bundle_over_the_hand_back_limit_leaves_the_packed_weights_and_keeps_the_numbers(tmp_path, monkeypatch):
    fake_run(tmp_path, packed_bytes=200_000)
    monkeypatch.setattr(xtc_full, "MAX_BUNDLE_BYTES", 50_000)  # random weights do not compress under it
    names = members(xtc_full.bundle(args_for(tmp_path), "xtc-binary"))
    assert "gpu-stsb-xtc-binary/packed/model.safetensors" not in names
    assert {"gpu-stsb-xtc-binary/packed/manifest.json", "gpu-stsb-xtc-binary/eval.json"} <= names


def test_wait_until_stops_a_run_at_the_deadline_and_returns_the_code_of_one_that_ends(tmp_path):
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    assert xtc_full.wait_until(slow, time.monotonic() + 0.5) is None
    assert slow.poll() is not None and time.monotonic() - t0 < 30
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert xtc_full.wait_until(quick, time.monotonic() + 60) == 3
    assert xtc_full.wait_until(subprocess.Popen([sys.executable, "-c", "pass"]), None) == 0


def test_status_says_whether_a_stopped_run_can_be_continued_here(tmp_path):
    out = fake_run(tmp_path)
    assert xtc_full.run_status(out) == "done"
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    assert xtc_full.run_status(out) == "in progress (resumable)"
    (out / "stages/0-binary-kd/checkpoint/optimizer.pt").unlink()
    (out / "stages/0-binary-kd/checkpoint").rmdir()  # as a bundle brings it back: no checkpoint
    assert xtc_full.run_status(out).startswith("stopped")
    for m in (out / "stages").glob("*/metrics.jsonl"):
        m.write_text("")  # a run in its first epoch: no evaluation, no checkpoint yet
    assert xtc_full.run_status(out).startswith("started; no epoch finished")
    assert xtc_full.run_status(tmp_path / "nothing") == "not started"


def test_ran_on_names_each_machine_a_run_trained_on_once(tmp_path):
    out = fake_run(tmp_path)
    log = tmp_path / f"{out.name}.log"
    log.write_text(log.read_text() + "\n$ python -m compactbert compress ... --resume  # 2026-12-01T10:00:00 on AMD EPYC (AVX2)\n"
                   "\n$ python -m compactbert compress ... --resume  # 2026-12-01T11:00:00 on NVIDIA H200 (CUDA 13.0)\n")
    assert xtc_full.ran_on(out) == "NVIDIA H200 (CUDA 13.0), CPU"
    assert xtc_full.ran_on(tmp_path / "nothing") == "-"
    # newer logs say the precision: the same CPU at another precision is another entry
    log.write_text(log.read_text() + "\n$ python ... --resume  # 2026-12-02T10:00:00 on AMD EPYC (AVX-512, VNNI), bf16\n"
                   "\n$ python ... --resume  # 2026-12-02T11:00:00 on AMD EPYC (AVX2; no AVX-512, VNNI), FP32\n"
                   "\n$ python ... --resume  # 2026-12-02T12:00:00 on AMD EPYC (AVX-512, VNNI), bf16\n")
    assert xtc_full.ran_on(out) == "NVIDIA H200 (CUDA 13.0), CPU, CPU (bf16), CPU (FP32)"
    # and the threads: the same CPU and precision with another thread count is another entry
    log.write_text(log.read_text() + "\n$ python ... --resume  # 2026-12-03T10:00:00 on AMD EPYC (AVX-512, VNNI), bf16, 2 thread(s)\n"
                   "\n$ python ... --resume  # 2026-12-03T11:00:00 on AMD EPYC (AVX-512, VNNI), bf16, 2 thread(s)\n")
    assert xtc_full.ran_on(out) == "NVIDIA H200 (CUDA 13.0), CPU, CPU (bf16), CPU (FP32), CPU (bf16, 2 thread(s))"


def test_the_log_says_the_precision_a_run_trains_at(tmp_path, monkeypatch):
    monkeypatch.setattr(xtc_full, "where", lambda: "test machine")
    monkeypatch.setattr(xtc_full, "epoch_steps", lambda args: 180)
    monkeypatch.setattr(xtc_full.subprocess, "Popen", lambda cmd, **kw: type("P", (), {"wait": lambda self, timeout=None: 0})())
    import compactbert.train.loop as loop

    for native, sets, want in [(True, [], "bf16"), (False, [], "FP32"), (True, ["bf16=false"], "FP32")]:
        monkeypatch.setattr(loop, "bf16_supported", lambda native=native: native)
        args = args_for(tmp_path, "--recipes", "xtc-binary", *sum((["--set", s] for s in sets), []))
        assert xtc_full.train(args, "xtc-binary") == 0
        last = (tmp_path / "gpu-stsb-xtc-binary.log").read_text().strip().splitlines()[-1]
        assert last.endswith(f"on test machine, {want}, 1 thread(s)"), last


def test_each_run_gets_the_cores_shared_out_among_the_jobs_unless_told(tmp_path, monkeypatch):
    envs = []
    monkeypatch.setattr(xtc_full, "where", lambda: "test machine")
    monkeypatch.setattr(xtc_full, "epoch_steps", lambda args: 180)
    monkeypatch.setattr(xtc_full.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(xtc_full.subprocess, "Popen",
                        lambda cmd, env, **kw: envs.append(env) or type("P", (), {"wait": lambda self, timeout=None: 0})())
    for extra, want in [(["--jobs", "2"], "2"), (["--jobs", "1"], "4"), (["--jobs", "8"], "1"),
                        (["--jobs", "2", "--threads", "3"], "3")]:
        assert xtc_full.train(args_for(tmp_path, *extra), "xtc-binary") == 0
        assert envs[-1]["OMP_NUM_THREADS"] == envs[-1]["MKL_NUM_THREADS"] == want, (extra, envs[-1]["OMP_NUM_THREADS"])
        last = (tmp_path / "gpu-stsb-xtc-binary.log").read_text().strip().splitlines()[-1]
        assert last.endswith(f", {want} thread(s)"), last


def fake_compactbert(calls: list, metric: float = 0.25, kept: int = 700):
    """``subprocess.call`` of ``compactbert export`` (a packed folder with its config) and ``eval``
    (a metrics JSON): records ``(verb, options)``."""
    def call(cmd, **kw):
        out = Path(cmd[cmd.index("--out") + 1])
        calls.append((cmd[3], tuple(c for c in cmd if c in ("unk", "nearest", "train", "--max-positions", "96"))))
        if cmd[3] == "export":
            out.mkdir(parents=True)
            (out / "model.safetensors").write_bytes(b"0" * 300)
            (out / "manifest.json").write_text("{}")
            (out / "config.json").write_text(json.dumps({"vocab": {"kept": kept, "original_size": 30522}}))
        else:
            out.write_text(json.dumps({"metrics": {"spearman": metric}}))
        return 0
    return call


def test_a_run_that_ended_unwatched_is_packed_on_the_next_call_and_never_trained_again(tmp_path, monkeypatch):
    out = fake_run(tmp_path)  # done, with a packed directory but no packed_eval.json
    calls = []
    monkeypatch.setattr(xtc_full.subprocess, "Popen", lambda *a, **kw: pytest.fail("a finished run was trained again"))
    monkeypatch.setattr(xtc_full.subprocess, "call", fake_compactbert(calls))
    args = args_for(tmp_path)
    assert xtc_full.train(args, "xtc-binary") == 0
    assert calls[0] == ("eval", ()) and xtc_full.packed_metric(args, out, "spearman") == 25.0
    assert json.loads((out / "packed_bytes.json").read_text())["bytes"] > 0
    n = len(calls)
    assert xtc_full.train(args, "xtc-binary") == 0 and len(calls) == n  # evaluated once


def test_a_finished_run_is_also_packed_with_the_vocabulary_of_its_training_split(tmp_path, monkeypatch):
    out = fake_run(tmp_path)
    (out / "recipe.yaml").write_text("max_seq_length: 96\nstages:\n  - epochs: 18\n")
    calls = []
    monkeypatch.setattr(xtc_full.subprocess, "call", fake_compactbert(calls, metric=0.2, kept=700))
    args = args_for(tmp_path)
    xtc_full.pack(args, out)
    # the plain packed model evaluated, then one export + eval per way of reading unseen tokens
    assert calls == [("eval", ()), ("export", ("train", "unk", "--max-positions", "96")), ("eval", ()),
                     ("export", ("train", "nearest", "--max-positions", "96")), ("eval", ())]
    found = xtc_full.vocab_pruned(args, out, "spearman")
    assert len(calls) == 5  # made once, read after
    size = sum(f.stat().st_size for f in (out / "packed-vocab-unk").rglob("*") if f.is_file())
    assert found == {u: {"metric": 20.0, "bytes": size, "kept": 700, "original": 30522, "positions": 96}
                     for u in ("unk", "nearest")}
    body = xtc_full.section(args, [{**xtc_full.row(args, "xtc-binary", out, "spearman")}], 21.0, 50_000,
                            tmp_path / "x.png", "python x")
    assert f"| xtc-binary | 700 / 30,522 | 96 | [UNK] | 20.00 | -1.00 | {size} | {50_000 / size:.1f}x |" in body
    assert f"| xtc-binary | 700 / 30,522 | 96 | nearest | 20.00 | -1.00 | {size} | {50_000 / size:.1f}x |" in body
    # bundled with its weights, like the packed model
    assert {"gpu-stsb-xtc-binary/packed-vocab-unk/model.safetensors",
            "gpu-stsb-xtc-binary/packed-vocab-nearest/model.safetensors"} <= members(xtc_full.bundle(args, "xtc-binary"))


def test_a_run_not_done_is_not_packed_with_a_pruned_vocabulary(tmp_path, monkeypatch):
    out = fake_run(tmp_path)
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    monkeypatch.setattr(xtc_full.subprocess, "call", lambda *a, **kw: pytest.fail("exported a run still training"))
    assert xtc_full.vocab_pruned(args_for(tmp_path), out, "spearman") == {}


def test_per_recipe_overrides_reach_only_their_recipe(tmp_path, monkeypatch):
    seen = {}

    class Proc:
        def __init__(self, cmd, **kw):
            seen[cmd[cmd.index("compress") + 1]] = cmd

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(xtc_full.subprocess, "Popen", Proc)
    monkeypatch.setattr(xtc_full, "where", lambda: "test machine")
    monkeypatch.setattr(xtc_full, "epoch_steps", lambda args: 180)
    args = args_for(tmp_path, "--recipes", "xtc-binary", "aq-bert", "--set-for", "aq-bert", "stages.0.epochs=9",
                    "--set", "seed=43")
    for r in args.recipes:
        assert xtc_full.train(args, r) == 0
    assert "stages.0.epochs=9" in seen["aq-bert"] and "stages.0.epochs=9" not in seen["xtc-binary"]
    assert all("seed=43" in cmd for cmd in seen.values())


@pytest.mark.parametrize("argv,shown", [
    (["--task", "stsb", "--extra", "binary, float embeddings=runs/x", "--note", "long text"],
     "python benchmarks/xtc_full.py --task stsb --extra 'binary, float embeddings=runs/x'"),
])
def test_shown_command_can_be_pasted_back(argv, shown):
    assert xtc_full.shown_command("benchmarks/xtc_full.py", argv) == shown


def test_carry_teacher_round_trips_fp16_values_and_never_overwrites_a_folder(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    import carry_teacher

    run = tmp_path / "teacher"
    (run / "model").mkdir(parents=True)
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    save_file({"w": w, "ids": torch.arange(3)}, str(run / "model" / "model.safetensors"))
    (run / "model" / "config.json").write_text("{}")
    (run / "eval.json").write_text("{}")
    assert carry_teacher.main(["pack", str(run), str(tmp_path / "carried")]) == 0
    assert load_file(str(tmp_path / "carried" / "model" / "model.safetensors"))["w"].dtype == torch.float16
    assert carry_teacher.main(["unpack", str(tmp_path / "carried"), str(tmp_path / "back")]) == 0
    back = load_file(str(tmp_path / "back" / "model" / "model.safetensors"))
    assert back["w"].dtype == torch.float32 and torch.equal(back["w"], w.half().float())
    assert torch.equal(back["ids"], torch.arange(3))
    assert (tmp_path / "back" / "eval.json").is_file() and (tmp_path / "back" / "model" / "config.json").is_file()
    keep = (tmp_path / "back" / "eval.json").read_text()
    with pytest.raises(SystemExit) as e:  # an existing folder is theirs: refused, left as it was
        carry_teacher.main(["unpack", str(tmp_path / "carried"), str(tmp_path / "back")])
    assert e.value.code == 2 and (tmp_path / "back" / "eval.json").read_text() == keep
    with pytest.raises(SystemExit) as e:
        carry_teacher.main(["pack", str(tmp_path / "nothing"), str(tmp_path / "new")])
    assert e.value.code == 2 and not (tmp_path / "new").exists()


def test_runs_keep_the_teacher_cache_with_the_runs_unless_told_where(tmp_path, monkeypatch):
    envs = []

    class Proc:
        def __init__(self, cmd, env=None, **kw):
            envs.append(env)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(xtc_full.subprocess, "Popen", Proc)
    monkeypatch.setattr(xtc_full, "where", lambda: "test machine")
    monkeypatch.setattr(xtc_full, "epoch_steps", lambda args: 180)
    args = args_for(tmp_path, "--recipes", "xtc-binary")
    monkeypatch.delenv("COMPACTBERT_CACHE", raising=False)
    xtc_full.train(args, "xtc-binary")
    monkeypatch.setenv("COMPACTBERT_CACHE", str(tmp_path / "mine"))
    xtc_full.train(args, "xtc-binary")
    assert [e["COMPACTBERT_CACHE"] for e in envs] == [str(xtc_full.REPO / "runs" / "cache"), str(tmp_path / "mine")]
    assert all(e["OMP_NUM_THREADS"] == "1" for e in envs)


def test_a_custom_section_names_the_results_section_and_the_plot(tmp_path):
    assert xtc_full.section_name(args_for(tmp_path)) == "xtc_full_stsb"
    args = args_for(tmp_path, "--section", "xtc_full_stsb_cpu")
    assert xtc_full.section_name(args) == "xtc_full_stsb_cpu"
    body = xtc_full.section(args, [], 84.0, 1000, tmp_path / "xtc_full_stsb_cpu.png", "python x")
    assert body.splitlines()[0].endswith(": `xtc_full_stsb_cpu`")
    assert "![learning curves](xtc_full_stsb_cpu.png)" in body


@pytest.mark.parametrize("spec, parsed", [
    ("xtc-binary=85.78", ("xtc-binary", 85.78, 2.0)),
    ("xtc-layer-reduction-binary=84.40@19", ("xtc-layer-reduction-binary", 84.40, 19.0)),
])
def test_a_marker_sits_at_epoch_2_unless_it_says_where(spec, parsed):
    assert xtc_full.parse_marker(spec) == parsed


def test_a_marker_that_is_not_a_number_is_refused():
    with pytest.raises(SystemExit, match="expected RECIPE=VALUE"):
        xtc_full.parse_marker("xtc-binary=high@19")


@pytest.mark.parametrize("spec, parsed", [
    ("lr 1e-4=runs/a", ("lr 1e-4", "runs/a", 0.0)),
    ("stage 2 alone=runs/a@18", ("stage 2 alone", "runs/a", 18.0)),
    ("odd=runs/a@b", ("odd", "runs/a@b", 0.0)),  # an '@' in a path, not an epoch count
])
def test_an_extra_row_can_be_drawn_later_on_the_epoch_axis(spec, parsed):
    assert xtc_full.parse_extra(spec) == parsed


def test_an_extra_rows_curve_is_shifted_by_its_epochs(tmp_path, monkeypatch):
    monkeypatch.setattr(xtc_full, "vocab_pruned", lambda *a: {})
    out = fake_run(tmp_path, "stage2")
    args = args_for(tmp_path, "--extra", f"stage 2 alone={out}@18")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "eval.json").write_text(json.dumps({"metrics": {"spearman": 0.8}}))
    (tmp_path / "t" / "model").mkdir()
    (tmp_path / "t" / "model" / "model.safetensors").write_bytes(b"0" * 100)
    extra = xtc_full.rows(args)[0][-1]
    assert extra["extra"] and extra["points"] == [(19.0, 50.0)]
