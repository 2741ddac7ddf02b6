"""``sweep``: run a grid of recipes and ``--set`` overrides, and find the models worth keeping.

Each point of the sweep file (see :mod:`.sweepfile`) is an ordinary ``compress`` run, then exported
packed and (unless ``bench=False``) benchmarked with every other point and the teacher in one
``bench`` run; the results are collected into ``sweep.json``, a report and a "pick this" summary.

Sweep directory::

    sweep.json         status, settings, the time estimate, the teacher, every point (status, error,
                       accuracy, bytes, latency, steps), the Pareto fronts and the summary
    points/NAME/       each point's compress run (its run.json, recipe.yaml, model/, eval.json, ...)
    packed/NAME/       each finished point's packed export (``compactbert export``)
    teacher-eval.json  the teacher on the same dev examples as the points
    bench.json         the benchmark of every finished point and the teacher's baselines
    errors/NAME.txt    the traceback of a point that failed
    report/            report.md, index.html, accuracy_vs_bytes.png, accuracy_vs_latency.png

Everything is checked before anything trains: the sweep file and every point's recipe with its
overrides, the task, the data, the teacher, and each point's methods on the teacher (the same dry
run ``compress`` does). A point that fails while it trains is recorded as failed, with its error,
and the sweep goes on. ``resume=True`` continues a sweep: finished points are skipped, an
interrupted (or failed) one continues from its own checkpoint with ``compress``'s resume.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults as D
from ..errors import UserError, one_line
from ..runs import EVAL_FILE, MANIFEST_FILE, MODEL_DIR, RECIPE_FILE, RUN_FILE, SIZE_FILE, is_run_dir

if TYPE_CHECKING:  # the sweep-file model (pydantic) loads when a sweep runs, not with the API
    from .sweepfile import Point, SweepPlan

__all__ = ["sweep", "SWEEP_FILE", "POINTS_DIR", "PACKED_DIR", "REPORT_DIR", "point_record"]

SWEEP_FILE = "sweep.json"
POINTS_DIR = "points"
PACKED_DIR = "packed"
REPORT_DIR = "report"
ERRORS_DIR = "errors"
TEACHER_EVAL = "teacher-eval.json"
BENCH_JSON = "bench.json"
SWEEP_VERSION = 1
# The settings a resumed sweep must repeat.
RESUME_KEYS = ("teacher", "task", "data", "max_train_samples", "max_eval_samples")


@dataclass
class Context:
    """The settings of one sweep, and what the checks before it loaded."""

    plan: SweepPlan
    teacher: str
    task: str
    out: Path
    data: str | None
    max_train_samples: int | None
    max_eval_samples: int | None
    progress: bool
    show: bool
    spec: Any = None
    n_train: int = 0
    train_examples: list = field(default_factory=list)
    teacher_net: Any = None
    tokenizer: Any = None

    def config(self) -> dict[str, Any]:
        from .finetune import data_ref

        return {"teacher": self.teacher, "task": self.spec.name, "data": data_ref(self.data),
                "max_train_samples": self.max_train_samples, "max_eval_samples": self.max_eval_samples}

    def say(self, text: str) -> None:
        if self.show:
            print(text, flush=True)


def sweep(
    sweep_file: str | os.PathLike,
    teacher: str | os.PathLike,
    task: str,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    resume: bool = False,
    dry_run: bool = False,
    max_points: int = D.SWEEP_MAX_POINTS,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    bench: bool = True,
    progress: bool = True,
    show: bool = True,
    bench_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every point of ``sweep_file`` (or, with ``dry_run``, check them and say what it would do).

    Args:
        sweep_file: the sweep YAML (see :mod:`compactbert.workflows.sweepfile`).
        teacher, task, data, max_train_samples, max_eval_samples: as for ``compress``, for every point.
        out: the sweep directory (see the module docstring).
        resume: continue the sweep in ``out``.
        dry_run: validate everything, list the points and the time estimate; write nothing.
        max_points: refuse a grid with more points than this.
        bench: benchmark the finished points against the teacher (``bench``'s defaults).
        progress: progress bars while points train.
        show: print the estimate, one line per point and the summary.
        bench_options: more settings for ``bench`` (``n_latency``, ``threads``, ...).

    Returns:
        The ``sweep.json`` content (for ``dry_run``: the points and the estimate).

    Raises:
        UserError: a bad sweep file or point, task, data, teacher or output directory; all checked
            before anything is written.
    """
    from .sweepfile import load_sweep

    plan = load_sweep(sweep_file, max_points=max_points)
    ctx = Context(plan, str(teacher), task, Path(out), None if data is None else str(data),
                  max_train_samples, max_eval_samples, progress, show)
    mode = check_sweep_dir(ctx.out, resume)
    preflight(ctx)
    old = check_resume(ctx) if mode == "resume" else None
    finished = {p.name for p in plan.points if point_finished(ctx.out / POINTS_DIR / p.name)} if old else set()
    est = estimate(ctx, finished)
    result = _initial_result(ctx, est, bench)
    if dry_run:
        result["status"] = "dry-run"
        return result
    ctx.teacher_net = None  # the points load their own
    _write(ctx, result)
    result["teacher"] = teacher_record(ctx)
    for i, pt in enumerate(plan.points):
        rec = run_point(ctx, pt, i)
        result["points"][i] = rec
        _write(ctx, result)
    if bench:
        bench_points(ctx, result, bench_options or {})
    return finish(ctx, result)


def check_sweep_dir(out: Path, resume: bool) -> str:
    """``"fresh"`` or ``"resume"`` for the sweep directory ``out``, writing nothing.

    Raises:
        UserError: ``out`` is a file, holds something that is not a sweep, or holds a sweep and
            ``resume`` is not set.
    """
    from .rundir import check_output_dir

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; expected a directory for the sweep")
    if out.is_dir():
        if (out / SWEEP_FILE).is_file():
            if resume:
                return "resume"
            raise UserError(f"{str(out)!r} already holds a sweep; pass --resume to continue it, or choose another --out")
        if any(out.iterdir()):
            raise UserError(f"--out {str(out)!r} exists and is not a sweep (no {SWEEP_FILE}); choose a new directory")
        return "fresh"
    return check_output_dir(out)  # can it be created? (fresh)


def preflight(ctx: Context) -> None:
    """Check the task, the data and the teacher, and dry-run every point's methods on the teacher
    (what ``compress`` checks before it writes), so one bad point fails the sweep before anything trains."""
    from ..data.sources import load_examples
    from ..data.tasks import get_task
    from ..loading import load_for_task, quiet_transformers
    from .compress import dry_run_recipe

    ctx.spec = get_task(ctx.task)
    ctx.train_examples = load_examples(ctx.spec, "train", ctx.data, ctx.max_train_samples, D.SUBSET_SEED)
    ctx.n_train = len(ctx.train_examples)
    load_examples(ctx.spec, ctx.spec.eval_splits[0], ctx.data, ctx.max_eval_samples, D.SUBSET_SEED)
    with quiet_transformers():
        net, tokenizer = load_for_task(ctx.teacher, ctx.spec)
    net.eval().requires_grad_(False)
    ctx.teacher_net, ctx.tokenizer = net, tokenizer
    for pt in ctx.plan.points:
        dry_run_recipe(pt.recipe, net, tokenizer, ctx.spec, f"{ctx.plan.source}: point {pt.name!r}")


def check_resume(ctx: Context) -> dict[str, Any]:
    """The sweep.json of the sweep being resumed, after checking it ran with the same settings and
    that every point it started has the same recipe now."""
    from ..recipe import Recipe
    from .rundir import same_path

    try:
        old = json.loads((ctx.out / SWEEP_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot --resume {str(ctx.out)!r}: {SWEEP_FILE} is unreadable ({one_line(str(e), 200)})") from None
    saved, now = old.get("config") or {}, ctx.config()
    diff = [k for k in RESUME_KEYS if saved.get(k) != now.get(k) and not same_path(saved.get(k), now.get(k))]
    if diff:
        raise UserError(
            f"cannot --resume {str(ctx.out)!r} with different settings: it was started with "
            + ", ".join(f"{k}={saved.get(k)!r}" for k in diff) + "; got " + ", ".join(f"{k}={now.get(k)!r}" for k in diff)
        )
    for pt in ctx.plan.points:
        saved_recipe = ctx.out / POINTS_DIR / pt.name / RECIPE_FILE
        if saved_recipe.is_file() and Recipe.from_yaml(saved_recipe.read_text(), str(saved_recipe)) != pt.recipe:
            raise UserError(
                f"cannot --resume: point {pt.name!r} started with another recipe ({saved_recipe}); "
                "keep the sweep file as it was, or use another --out"
            )
    return old


def estimate(ctx: Context, finished: set[str]) -> dict[str, Any]:
    """Steps of the points left to train and their time at a step cost measured now (the first
    remaining point of each recipe entry, stage 0, a few steps after a warm-up)."""
    from .sweepcost import TIMED_STEPS, WARMUP_STEPS, format_duration, measure_step_cost, point_steps

    todo = [p for p in ctx.plan.points if p.name not in finished]
    costs: dict[int, float | None] = {}
    for pt in todo:
        if pt.entry in costs:
            continue
        try:
            costs[pt.entry] = measure_step_cost(pt.recipe, ctx.teacher_net, ctx.tokenizer, ctx.spec, ctx.train_examples)
        except Exception as e:  # the point itself will fail and be recorded; the estimate goes on
            ctx.say(f"step cost of {pt.name}: not measured ({one_line(f'{type(e).__name__}: {e}', 200)})")
            costs[pt.entry] = None
    steps = {p.name: point_steps(p.recipe, ctx.n_train) for p in ctx.plan.points}
    known = [steps[p.name] * costs[p.entry] for p in todo if costs.get(p.entry) is not None]
    seconds = sum(known) if len(known) == len(todo) else None
    source = (f"measured now: {TIMED_STEPS} steps (after {WARMUP_STEPS} warm-up steps) of the first stage of the first "
              "point of each recipe entry, applied to every step of that entry's points")
    est = {"points": len(ctx.plan.points), "finished": len(finished), "to_train": len(todo),
           "steps": sum(steps[p.name] for p in todo), "steps_per_point": steps, "train_examples": ctx.n_train,
           "seconds_per_step": {_entry_name(ctx, e): c for e, c in costs.items()},
           "seconds": seconds, "source": source}
    ctx.say(f"sweep: {len(ctx.plan.points)} points ({len(finished)} finished, {len(todo)} to train), "
            f"{est['steps']:,} training steps on {ctx.n_train:,} examples")
    ctx.say("step cost (" + source + "): " + ", ".join(
        f"{k} {v:.3g} s" if v is not None else f"{k} ?" for k, v in est["seconds_per_step"].items()))
    ctx.say(f"estimate: {format_duration(seconds) if seconds is not None else 'unknown'} of training, "
            "plus evaluation, export and the benchmark")
    return est


def _entry_name(ctx: Context, entry: int) -> str:
    return next(p.entry_name for p in ctx.plan.points if p.entry == entry)


def _initial_result(ctx: Context, est: dict[str, Any], bench: bool) -> dict[str, Any]:
    from .. import __version__
    from .rundir import now

    return {
        "version": SWEEP_VERSION, "kind": "sweep", "compactbert": __version__, "status": "running",
        "sweep_file": str(ctx.plan.source), "description": ctx.plan.description, "created": now(),
        "config": {**ctx.config(), "bench": bench}, "estimate": est, "teacher": None,
        "points": [point_record(ctx, p, "pending") for p in ctx.plan.points], "baselines": [],
        "pareto": {}, "summary": [], "bench": None,
    }


def _write(ctx: Context, result: dict[str, Any]) -> None:
    from ..train.checkpoint import atomic_write_json

    ctx.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ctx.out / SWEEP_FILE, result)


def point_record(ctx: Context, pt: Point, status: str) -> dict[str, Any]:
    """A point's entry in sweep.json, before its results are known."""
    return {
        "name": pt.name, "entry": pt.entry, "group": pt.entry_name, "recipe": pt.recipe_ref, "set": list(pt.overrides),
        "grid": pt.grid,
        "status": status, "error": None, "run_dir": str(ctx.out / POINTS_DIR / pt.name),
        "packed_dir": None, "accuracy": None, "metric": None, "packed_bytes": None, "predicted_bytes": None,
        "steps": None, "train_seconds": None,
    }


def point_finished(run_dir: Path) -> bool:
    """Whether a point's compress run finished (run.json says done and its results are there)."""
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("status") == "done" and (run_dir / EVAL_FILE).is_file() and (run_dir / MODEL_DIR).is_dir()


def run_point(ctx: Context, pt: Point, i: int) -> dict[str, Any]:
    """Train (or skip, or resume) one point, export it, and read its results; a failure is
    recorded in the returned dict (``status: failed``, ``error``) and its traceback in errors/."""
    from ..loading import quiet_transformers
    from .compress import compress

    rec = point_record(ctx, pt, "running")
    run_dir = ctx.out / POINTS_DIR / pt.name
    head = f"[{i + 1}/{len(ctx.plan.points)}] {pt.name}"
    t0 = time.monotonic()
    try:
        if point_finished(run_dir):
            ctx.say(f"{head}: finished before, skipped")
        else:
            resume = is_run_dir(run_dir)
            ctx.say(f"{head}: {'resuming' if resume else 'training'} ({', '.join(pt.overrides) or 'no overrides'})")
            with quiet_transformers():  # no model-saving bars between the training bars
                compress(pt.recipe, ctx.teacher, ctx.spec.name, run_dir, data=ctx.data,
                         max_train_samples=ctx.max_train_samples, max_eval_samples=ctx.max_eval_samples,
                         resume=resume, overwrite=not resume and run_dir.is_dir(), progress=ctx.progress)
        with quiet_transformers():
            packed = export_point(ctx, pt, run_dir)
        rec.update(read_point(run_dir, packed, ctx.spec))
        rec["status"] = "done"
        ctx.say(f"{head}: {rec['metric']} {100 * rec['accuracy']:.2f}%, {rec['packed_bytes']:,} bytes packed "
                f"({(time.monotonic() - t0) / 60:.1f} min)")
    except Exception as e:  # noqa: BLE001 - a failed point is recorded and the sweep goes on
        rec.update(status="failed", error=one_line(str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}", 500))
        errors = ctx.out / ERRORS_DIR
        errors.mkdir(parents=True, exist_ok=True)
        (errors / f"{pt.name}.txt").write_text(traceback.format_exc())
        ctx.say(f"{head}: FAILED: {rec['error']}")
    return rec


def export_point(ctx: Context, pt: Point, run_dir: Path) -> Path:
    """The point's packed export in packed/NAME (kept when it is there already)."""
    from .export import export

    packed = ctx.out / PACKED_DIR / pt.name
    if (packed / MANIFEST_FILE).is_file():
        return packed
    tmp = packed.with_name(packed.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export(run_dir, tmp)
    shutil.rmtree(packed, ignore_errors=True)
    tmp.rename(packed)
    return packed


def main_metric(metrics: dict[str, float], spec) -> str:
    """The metric a sweep compares: accuracy when the task has it, else the task's main metric."""
    return "accuracy" if "accuracy" in metrics else spec.main_metric


def read_point(run_dir: Path, packed: Path, spec) -> dict[str, Any]:
    """A finished point's results: its eval.json metric, predicted and packed bytes, steps, time."""
    from ..bench.result import model_bytes

    ev = json.loads((run_dir / EVAL_FILE).read_text())
    metric = main_metric(ev["metrics"], spec)
    info = json.loads((run_dir / RUN_FILE).read_text())
    size = json.loads((run_dir / SIZE_FILE).read_text()) if (run_dir / SIZE_FILE).is_file() else {}
    elapsed: dict[int, float] = {}
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if isinstance(r.get("elapsed"), (int, float)):
                    elapsed[int(r.get("stage", 0))] = float(r["elapsed"])
    return {
        "packed_dir": str(packed), "accuracy": float(ev["metrics"][metric]), "metric": metric,
        "metrics": ev["metrics"], "n_eval": ev.get("n"), "packed_bytes": model_bytes(packed)[0],
        "predicted_bytes": size.get("compressed_bytes"),
        "steps": sum(s.get("steps", 0) for s in info.get("stage_results", [])) or None,
        "train_seconds": round(sum(elapsed.values()), 1) if elapsed else None,
    }


def teacher_record(ctx: Context) -> dict[str, Any]:
    """The teacher on the points' dev examples (teacher-eval.json, kept on resume) and its FP32 bytes on disk."""
    from ..bench.result import model_bytes
    from ..models import resolve_model
    from ..runs import model_source
    from .evaluate import evaluate

    path = ctx.out / TEACHER_EVAL
    if path.is_file():
        ev = json.loads(path.read_text())
    else:
        ev = evaluate(ctx.teacher, task=ctx.spec.name, data=ctx.data, max_eval_samples=ctx.max_eval_samples, out=path)
    metric = main_metric(ev["metrics"], ctx.spec)
    folder = resolve_model(model_source(ctx.teacher))
    return {
        "name": "teacher", "path": ctx.teacher, "task": ev["task"], "split": ev["split"], "n": ev["n"],
        "metric": metric, "accuracy": float(ev["metrics"][metric]),
        "file_bytes": model_bytes(folder)[0] if Path(folder).exists() else None,
    }


def bench_points(ctx: Context, result: dict[str, Any], options: dict[str, Any]) -> None:
    """Benchmark every finished point and the teacher's baselines in one ``bench`` run (bench.json;
    kept on resume when it holds the same points), and merge the numbers into ``result``. A bench
    that fails is recorded in ``result["bench"]``; the sweep still writes its report."""
    from ..bench.result import FP32_BASELINE
    from .bench import bench

    done = [p for p in result["points"] if p["status"] == "done"]
    if not done:
        return
    path = ctx.out / BENCH_JSON
    wanted = sorted(str(Path(p["packed_dir"]).resolve()) for p in done)
    data = json.loads(path.read_text()) if path.is_file() else None
    if data is None or sorted(str(Path(m["path"]).resolve()) for m in data.get("models", []) if m.get("role") != "baseline") != wanted:
        ctx.say(f"benchmarking {len(done)} point(s) and the teacher's baselines")
        try:
            data = bench([p["packed_dir"] for p in done], baseline=ctx.teacher, task=ctx.spec.name, data=ctx.data,
                         out=path, show=False, max_eval_samples=ctx.max_eval_samples, progress=ctx.progress, **options)
        except Exception as e:  # noqa: BLE001 - the sweep's own results stand without the benchmark
            result["bench"] = {"file": None, "error": one_line(str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}", 500)}
            ctx.say(f"benchmark FAILED: {result['bench']['error']}")
            return
    merge_bench(result, data, FP32_BASELINE)
    result["bench"] = {"file": str(path), "error": None}


def _measured(row: dict[str, Any]) -> dict[str, Any]:
    """A bench row's timing and memory numbers (whatever latency/throughput keys it has), its runtime accuracy."""
    out = {k: v for k, v in row.items() if k.startswith(("latency_", "throughput", "peak_rss"))}
    out["runtime_accuracy"] = row.get("accuracy")
    if row.get("error"):
        out["bench_error"] = row["error"]
    return out


def merge_bench(result: dict[str, Any], data: dict[str, Any], fp32_name: str) -> None:
    """Put a bench result's numbers on the points (matched by packed folder), the FP32 teacher's on
    ``result["teacher"]``, and the other baselines in ``result["baselines"]``."""
    by_path = {str(Path(m["path"]).resolve()): m for m in data.get("models", []) if m.get("path")}
    for p in result["points"]:
        row = by_path.get(str(Path(p["packed_dir"]).resolve())) if p.get("packed_dir") else None
        if row is not None:
            p.update(_measured(row))
    result["baselines"] = []
    for m in data.get("models", []):
        if m.get("role") != "baseline":
            continue
        if m.get("name") == fp32_name and result.get("teacher"):
            result["teacher"].update({k: v for k, v in _measured(m).items() if k != "runtime_accuracy"})
        else:
            result["baselines"].append({"name": m.get("name"), "kind": m.get("kind"), "accuracy": m.get("accuracy"),
                                        "file_bytes": m.get("file_bytes"), **_measured(m)})


def finish(ctx: Context, result: dict[str, Any]) -> dict[str, Any]:
    """The fronts, the summary, the report and the final sweep.json."""
    from ..report.sweep import COSTS, front_names, pick_summary, plot_entries, summary_lines, write_sweep_report
    from .rundir import now

    t = result["teacher"]
    for p in result["points"]:
        if p["status"] == "done":
            p["delta_points"] = 100 * (p["accuracy"] - t["accuracy"])
            p["x_smaller"] = t["file_bytes"] / p["packed_bytes"] if t.get("file_bytes") else None
    entries = plot_entries(result)
    result["pareto"] = {name: front_names(entries, key) for key, name, *_ in COSTS}
    result["summary"] = pick_summary(result["points"], t)
    failed = sum(p["status"] == "failed" for p in result["points"])
    result.update(status="done" if not failed else "done-with-failures", finished=now())
    report = write_sweep_report(result, ctx.out / REPORT_DIR, title=f"compactbert sweep: {ctx.plan.source.name}")
    result["report"] = {"html": str(report["html"]), "markdown": str(report["markdown"]),
                        "plots": [str(p) for p in report["plots"]]}
    _write(ctx, result)
    for line in summary_lines(result):
        ctx.say(line)
    return result
