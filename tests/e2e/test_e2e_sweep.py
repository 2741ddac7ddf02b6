"""`compactbert sweep` end to end on a tiny model: three points trained, exported, collected and
reported; resume; a benchmark; a point that fails; errors found before anything trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compactbert.bench.result import model_bytes
from compactbert.cli import main
from compactbert.recipe import Recipe
from compactbert.report.sweep import front_names, plot_entries
from compactbert.workflows.sweep import sweep as run_sweep
from compactbert.workflows.sweepfile import load_sweep
from toy import make_tiny_model, write_toy_glue

SWEEP = """# tiny: 3 points of 3 steps each
set: {max_seq_length: 32, bf16: false, stages.0.batch_size: 16}
recipes:
  - recipe: int8-qat
    name: qat
    set: {stages.0.epochs: 1}
  - name: mp
    recipe:
      seed: 1
      stages:
        - steps: 3
          lr: 0.003
          methods: [{type: magnitude_pruning, sparsity: 0.5, schedule: linear, start: 0, end: 2, frequency: 1}]
    grid: {stages.0.methods.0.sparsity: [0.5, 0.9]}
"""
NAMES = ["qat", "mp-sparsity0.5", "mp-sparsity0.9"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    glue = write_toy_glue(root / "glue", "sst2", n_train=48, n_dev=16)
    teacher = make_tiny_model(root / "bert", "bert", num_layers=2)
    sweep_file = root / "tiny.yaml"
    sweep_file.write_text(SWEEP)
    return root, glue, teacher, sweep_file


def cli(env, out: Path, *extra: str, sweep_file: Path | None = None) -> int:
    root, glue, teacher, default = env
    return main(["sweep", str(sweep_file or default), "--teacher", str(teacher), "--task", "sst2", "--data", str(glue),
                 "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    """A finished sweep without a benchmark, and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("finished") / "sw"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(env, out, "--no-bench") == 0
    return out, buf.getvalue()


def test_a_sweep_trains_exports_and_reports_every_point(env, finished):
    out, stdout = finished
    result = json.loads((out / "sweep.json").read_text())
    assert result["status"] == "done" and [p["name"] for p in result["points"]] == NAMES
    plan = load_sweep(env[3])
    for p, pt in zip(result["points"], plan.points):
        run = out / "points" / p["name"]
        assert p["status"] == "done" and p["error"] is None
        # an ordinary compress run with the point's recipe and overrides
        assert json.loads((run / "run.json").read_text())["kind"] == "compress"
        assert Recipe.from_yaml((run / "recipe.yaml").read_text()) == pt.recipe
        ev = json.loads((run / "eval.json").read_text())
        assert p["accuracy"] == ev["metrics"]["accuracy"] and ev["n"] == 16
        assert (out / "packed" / p["name"] / "manifest.json").is_file()
        assert p["packed_bytes"] == model_bytes(out / "packed" / p["name"])[0]
        # the estimate counted exactly the steps the loop ran
        assert result["estimate"]["steps_per_point"][p["name"]] == p["steps"] == 3
        assert p["delta_points"] == pytest.approx(100 * (p["accuracy"] - result["teacher"]["accuracy"]))
    by = {p["name"]: p for p in result["points"]}
    assert by["mp-sparsity0.9"]["packed_bytes"] < by["mp-sparsity0.5"]["packed_bytes"]  # sparser is smaller
    est = result["estimate"]
    assert set(est["seconds_per_step"]) == {"qat", "mp"} and all(v > 0 for v in est["seconds_per_step"].values())
    assert est["seconds"] == pytest.approx(3 * est["seconds_per_step"]["qat"] + 6 * est["seconds_per_step"]["mp"])
    assert result["teacher"]["n"] == 16 and result["teacher"]["file_bytes"] == model_bytes(env[2])[0]
    # fronts over the plotted models; no latency without a benchmark
    assert result["pareto"]["bytes"] == front_names(plot_entries(result), "file_bytes") and result["pareto"]["bytes"]
    assert result["pareto"]["latency"] == []
    assert [s["within_points"] for s in result["summary"]] == [0.5, 1.0, 2.0]
    report = out / "report"
    assert (report / "accuracy_vs_bytes.png").read_bytes().startswith(b"\x89PNG")
    assert not (report / "accuracy_vs_latency.png").exists()
    md = (report / "report.md").read_text()
    assert all(n in md for n in NAMES) and "## Pick this" in md
    assert "accuracy_vs_bytes.png" in (report / "index.html").read_text()
    assert "step cost (measured now" in stdout and "estimate:" in stdout
    assert "within 0.5 point(s) of the teacher" in stdout and "fastest: not measured (no benchmark)" in stdout


def test_resume_skips_finished_points_and_continues_an_interrupted_one(env, finished, tmp_path, capsys):
    out = tmp_path / "sw"
    shutil.copytree(finished[0], out)
    before = json.loads((out / "sweep.json").read_text())
    stamps = {n: (out / "points" / n / "run.json").stat().st_mtime_ns for n in NAMES[:2]}
    # the last point stopped after its training, before its results were written
    run = out / "points" / NAMES[2]
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    for done in (run / "stages").glob("*/done.json"):
        done.unlink()
    shutil.rmtree(run / "model")
    (run / "eval.json").unlink()
    shutil.rmtree(out / "packed" / NAMES[2])
    capsys.readouterr()
    assert cli(env, out, "--no-bench") == 2  # a sweep is there: --resume or another --out
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a sweep; pass --resume" in err[0]
    assert cli(env, out, "--no-bench", "--resume", "--max-train-samples", "20") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot --resume" in err[0] and "max_train_samples=None" in err[0]
    assert cli(env, out, "--no-bench", "--resume") == 0
    stdout = capsys.readouterr().out
    assert "[1/3] qat: finished before, skipped" in stdout and "[2/3] mp-sparsity0.5: finished before, skipped" in stdout
    assert "[3/3] mp-sparsity0.9: resuming" in stdout
    assert "1 to train" in stdout
    assert {n: (out / "points" / n / "run.json").stat().st_mtime_ns for n in NAMES[:2]} == stamps
    after = json.loads((out / "sweep.json").read_text())
    assert after["status"] == "done"
    for a, b in zip(before["points"], after["points"]):  # (packed bytes differ: config.json records the source path)
        assert (a["name"], a["status"], a["accuracy"], a["predicted_bytes"], a["steps"]) == \
               (b["name"], b["status"], b["accuracy"], b["predicted_bytes"], b["steps"])
    from safetensors.numpy import load_file

    resumed = load_file(out / "packed" / NAMES[2] / "model.safetensors")
    original = load_file(finished[0] / "packed" / NAMES[2] / "model.safetensors")
    assert resumed.keys() == original.keys()
    assert all((resumed[k] == original[k]).all() for k in original)


def test_resume_with_a_benchmark_measures_the_points_and_the_teacher(env, finished, tmp_path):
    out = tmp_path / "sw"
    shutil.copytree(finished[0], out)
    root, glue, teacher, sweep_file = env
    result = run_sweep(sweep_file, teacher, "sst2", out, data=glue, resume=True, progress=False, show=False,
                       bench_options={"isolate": False, "n_warmup": 0, "n_latency": 2, "n_throughput": 1,
                                      "baselines": ["torch-fp32"]})
    assert (out / "bench.json").is_file() and result["bench"]["error"] is None
    for p in result["points"]:
        assert p.get("bench_error") is None, p["bench_error"]
        assert p["latency_ms_bs1_p50"] > 0 and p["throughput_bs32"] > 0, p
        assert 0.0 <= p["runtime_accuracy"] <= 1.0
    assert result["teacher"]["latency_ms_bs1_p50"] > 0
    assert (out / "report" / "accuracy_vs_latency.png").read_bytes().startswith(b"\x89PNG")
    assert result["pareto"]["latency"] == front_names(plot_entries(result), "latency_ms_bs1_p50")
    fastest = [s["fastest"] for s in result["summary"] if s["fastest"] is not None]
    timed = {p["name"]: p["latency_ms_bs1_p50"] for p in result["points"]}
    for s in result["summary"]:
        ok = [p for p in result["points"] if (result["teacher"]["accuracy"] - p["accuracy"]) * 100 <= s["within_points"] + 1e-9]
        if ok:
            assert s["fastest"]["latency_ms_bs1_p50"] == min(timed[p["name"]] for p in ok)
    assert fastest or all(s["smallest"] is None for s in result["summary"])


def test_a_point_that_fails_is_recorded_and_the_sweep_goes_on(env, tmp_path, monkeypatch, capsys):
    import compactbert.workflows.compress as compress_module

    real = compress_module.compress

    def failing(recipe, teacher, task, out, **kwargs):
        if Path(out).name == "mp-sparsity0.5":
            raise RuntimeError("boom in training")
        return real(recipe, teacher, task, out, **kwargs)

    out = tmp_path / "sw"
    two = tmp_path / "two.yaml"  # the mp points only
    two.write_text(SWEEP.split("  - recipe: int8-qat")[0] + "  - name: mp" + SWEEP.split("  - name: mp")[1])
    monkeypatch.setattr(compress_module, "compress", failing)
    assert cli(env, out, "--no-bench", sweep_file=two) == 0
    result = json.loads((out / "sweep.json").read_text())
    status = {p["name"]: (p["status"], p["error"]) for p in result["points"]}
    assert status == {"mp-sparsity0.5": ("failed", "RuntimeError: boom in training"), "mp-sparsity0.9": ("done", None)}
    assert result["status"] == "done-with-failures"
    assert "boom in training" in (out / "errors" / "mp-sparsity0.5.txt").read_text()
    assert "failed: RuntimeError: boom in training" in (out / "report" / "report.md").read_text()
    assert "mp-sparsity0.5" not in result["pareto"]["bytes"]
    assert "failed points (1): mp-sparsity0.5" in capsys.readouterr().out
    # --resume runs it again (the others are skipped)
    monkeypatch.setattr(compress_module, "compress", real)
    assert cli(env, out, "--no-bench", "--resume", sweep_file=two) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert result["status"] == "done" and all(p["status"] == "done" for p in result["points"])


def test_dry_run_lists_the_points_and_writes_nothing(env, tmp_path, capsys):
    out = tmp_path / "sw"
    assert cli(env, out, "--dry-run") == 0
    stdout = capsys.readouterr().out
    assert not out.exists()
    for name in NAMES:
        assert f"  {name}: " in stdout
    assert "--set stages.0.methods.0.sparsity=0.9" in stdout and "(3 steps)" in stdout
    assert "dry run: 3 points checked, nothing written" in stdout and "estimate:" in stdout


def test_errors_found_on_the_model_or_the_inputs_stop_the_sweep_before_training(env, tmp_path, capsys):
    root, glue, teacher, _ = env
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipes:\n  - name: lr\n    recipe: {stages: [{steps: 2, methods: [{type: layer_reduction, keep: [0]}]}]}\n"
                   "    grid: {stages.0.methods.0.keep: [[0], [0, 9]]}\n")
    out = tmp_path / "sw"
    assert cli(env, out, sweep_file=bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "point 'lr-keep0_9'" in err[0] and "keep" in err[0]
    assert not out.exists()
    assert main(["sweep", str(env[3]), "--teacher", str(tmp_path / "nope"), "--task", "sst2", "--data", str(glue),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and not out.exists()
    assert main(["sweep", str(env[3]), "--teacher", str(teacher), "--task", "sst3", "--data", str(glue),
                 "--out", str(out)]) == 2
    assert "sst3" in capsys.readouterr().err and not out.exists()
