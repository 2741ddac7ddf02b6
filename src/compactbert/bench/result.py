"""What a benchmark leaves: one row per model, the ratios between rows, ``bench.json`` and the table.

:func:`model_row` turns one child's measurement into a row; :func:`bench_result` assembles the
``bench.json`` content (see :mod:`compactbert.bench.core` for its keys); :func:`print_bench_table`
shows it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_FILE", "BENCH_VERSION", "FP32_BASELINE", "ORT_INT8_BASELINE", "RUNTIME_BASELINE", "NOT_MODEL_FILES", "model_bytes",
    "compute_ratios", "model_row", "bench_result", "write_result", "print_bench_table",
]

BENCH_FILE = "bench.json"
BENCH_VERSION = 2  # 2: interleaved rounds (rounds, clock, load, each row's spread, ratio ranges)
# The rows every other row is compared with (see compactbert.bench.plan for the baseline kinds).
FP32_BASELINE = "teacher-fp32"
ORT_INT8_BASELINE = "teacher-ort-int8"
RUNTIME_BASELINE = "teacher-runtime"  # the teacher through compactbert's own runtime
# "times better" ratios: (row figure, ratio key, higher is better)
_RATIO_FIGURES = (
    ("throughput_bs32", "throughput_bs32", True),
    ("latency_ms_bs1_p50", "latency_bs1_p50", False),
    ("latency_ms_bs1_p90", "latency_bs1_p90", False),
)

# Files that describe a model folder rather than being part of it: not counted as its bytes.
NOT_MODEL_FILES = {"bench.json", "eval.json", "size.json", "onnx_export.json", "onnx_quantize.json"}
_WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".bin", ".onnx_data", ".data")
# What a child's measurement contributes to a row, under the same names.
_MEASURED = (
    "latency_ms_bs1_p50", "latency_ms_bs1_p90", "latency_ms_bs1_mean", "throughput_bs32", "ms_per_batch_p50",
    "peak_rss_mb", "rss_before_load_mb", "rss_after_load_mb", "load_s", "others_cores",
)


def model_bytes(path: str | os.PathLike) -> tuple[int, int]:
    """``(file_bytes, weights_bytes)`` of a model folder or file.

    ``file_bytes`` is every file of the folder (recursively; weights, config, tokenizer, manifest),
    except reports written about it (``bench.json``, ``eval.json``, ``size.json``, ...).
    ``weights_bytes`` counts only the weight files (``.safetensors``, ``.onnx``, ...). For a single
    file both are its size.
    """
    p = Path(path)
    if p.is_file():
        n = p.stat().st_size
        return n, n
    total = weights = 0
    for f in p.rglob("*"):
        if not f.is_file() or f.name in NOT_MODEL_FILES:
            continue
        n = f.stat().st_size
        total += n
        if f.name.endswith(_WEIGHT_SUFFIXES):
            weights += n
    return total, weights


def model_row(spec, measured: dict[str, Any]) -> dict[str, Any]:
    """The ``bench.json`` row of model ``spec`` (a :class:`compactbert.bench.plan.ModelSpec`) from
    its rounds' measurement (:func:`compactbert.bench.rounds.combine_rounds`); accuracy is filled in
    by :func:`score_row`.

    The timed figures are medians over the rounds; ``spread[figure]`` holds their ``min``, ``max``
    and per-round values, ``rounds`` how many rounds measured the model. A model whose engine is not
    installed has ``skipped`` (the reason) and no figures.
    """
    from .rounds import summarize

    file_bytes, weights_bytes = model_bytes(spec.files)
    row: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "role": spec.role, "path": str(spec.files)}
    row.update({k: measured.get(k) for k in _MEASURED})
    row.update(
        file_bytes=file_bytes, weights_bytes=weights_bytes, accuracy=None, metric=None, metrics=None,
        agreement_vs_fp32=None, kernels=measured.get("kernels"), note=measured.get("note"),
    )
    per_round = measured.get("rounds") or {}
    row["rounds"] = max((len(v) for v in per_round.values()), default=0)
    row["spread"] = {}
    for key, values in per_round.items():
        s = summarize(values)
        if s is not None:
            row["spread"][key] = {"min": s["min"], "max": s["max"], "rounds": values}
    if getattr(spec, "skip", None):
        row["skipped"] = spec.skip
    if "error" in measured:
        row["error"] = measured["error"]
    return row


def score_row(row: dict[str, Any], task, logits, labels) -> bool:
    """Fill the row's task metrics from its ``(n, num_labels)`` logits; False (and an ``error``)
    when the model's output width does not fit the task."""
    from ..data.tasks import compute_metrics

    if logits.shape[-1] != task.num_labels:
        row["error"] = f"{logits.shape[-1]} outputs but task {task.name} needs {task.num_labels}"
        return False
    metrics = compute_metrics(task, logits, labels)
    metric = "accuracy" if "accuracy" in metrics else task.main_metric
    row.update(accuracy=metrics[metric], metric=metric, metrics=metrics)
    return True


def add_agreement(rows: list[dict[str, Any]], preds: dict[str, Any], task) -> None:
    """``agreement_vs_fp32``: the share of examples where a model predicts the FP32 teacher's class."""
    if FP32_BASELINE not in preds or task is None or task.is_regression:
        return
    ref = preds[FP32_BASELINE].argmax(-1)
    for row in rows:
        if row["name"] in preds:
            row["agreement_vs_fp32"] = float((preds[row["name"]].argmax(-1) == ref).mean())


def _div(a, b):
    return (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 and a > 0 else None


def _ratio_ranges(m: dict, base: dict) -> dict[str, list[float]]:
    """``{ratio key + "_range": [min, max]}`` of the round-by-round ratios (rounds are paired: the
    two models were measured in the same round)."""
    from .rounds import paired_ratios

    out = {}
    for figure, key, higher in _RATIO_FIGURES:
        a = ((m.get("spread") or {}).get(figure) or {}).get("rounds")
        b = ((base.get("spread") or {}).get(figure) or {}).get("rounds")
        if a and b and len(a) == len(b):
            ratios = paired_ratios(a, b, higher)
            if ratios:
                out[f"{key}_range"] = [min(ratios), max(ratios)]
    return out


def compute_ratios(models: list[dict], baseline: str) -> dict[str, dict[str, float]]:
    """Every other model compared with the model named ``baseline``, as "times better" ratios.

    Returns:
        ``{model: {"throughput_bs32": this/base, "latency_bs1_p50": base/this, "latency_bs1_p90":
        base/this, "file_bytes": base/this, "weights_bytes": base/this, "peak_rss": base/this,
        "accuracy_delta": this - base (absolute, same unit as accuracy)}}``; a ratio whose inputs
        are missing is left out. Ratios of medians; with rounds, ``<ratio>_range`` is the ``[min,
        max]`` of the same ratio taken round by round. Empty when the baseline is not among ``models``.
    """
    base = next((m for m in models if m.get("name") == baseline), None)
    if base is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for m in models:
        if m["name"] == baseline:
            continue
        r = {key: (_div(m.get(f), base.get(f)) if higher else _div(base.get(f), m.get(f)))
             for f, key, higher in _RATIO_FIGURES}
        r.update(
            file_bytes=_div(base.get("file_bytes"), m.get("file_bytes")),
            weights_bytes=_div(base.get("weights_bytes"), m.get("weights_bytes")),
            peak_rss=_div(base.get("peak_rss_mb"), m.get("peak_rss_mb")),
        )
        if isinstance(m.get("accuracy"), (int, float)) and isinstance(base.get("accuracy"), (int, float)):
            r["accuracy_delta"] = m["accuracy"] - base["accuracy"]
        r.update(_ratio_ranges(m, base))
        out[m["name"]] = {k: v for k, v in r.items() if v is not None}
    return out


def load_summary(rows: list[dict[str, Any]], cpus: int | None, threads: int,
                 loadavg_start: list[float] | None = None, loadavg_end: list[float] | None = None) -> dict[str, Any]:
    """``bench.json``'s ``load``: the load averages before and after, the cores other processes used
    while models were timed (median and max over every model and round), the (model, round) pairs
    timed under contention and one ``warning`` line (None on a quiet machine)."""
    from .load import TOLERANCE_CORES, contention_warning
    from .rounds import summarize

    seen, contended = [], []
    for row in rows:
        values = ((row.get("spread") or {}).get("others_cores") or {}).get("rounds") or []
        for r, v in enumerate(values):
            if isinstance(v, (int, float)):
                seen.append(v)
                if contention_warning(v, cpus, threads) is not None:
                    contended.append({"model": row["name"], "round": r, "others_cores": round(v, 3)})
    s = summarize(seen)
    warning = None
    if contended:
        worst = max(contended, key=lambda c: c["others_cores"])
        warning = contention_warning(worst["others_cores"], cpus, threads,
                                     f"{worst['model']} (round {worst['round'] + 1}; "
                                     f"{len(contended)} of {len(seen)} timings contended)")
    return {
        "loadavg_start": loadavg_start, "loadavg_end": loadavg_end,
        "others_cores_median": s["median"] if s else None, "others_cores_max": s["max"] if s else None,
        "tolerance_cores": TOLERANCE_CORES, "contended": contended, "warning": warning,
    }


def bench_result(plan, rows: list[dict[str, Any]], load: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``bench.json`` content of ``plan`` (a :class:`compactbert.bench.plan.BenchPlan`), its
    rows and the machine's ``load`` (:func:`load_summary`; computed from the rows when None)."""
    from .machine import machine_info

    s, task = plan.settings, plan.task
    inputs_desc = (
        f"timing rows: {s.seq_len} real tokens each, no padding, cut from the {task.name} {plan.split} text"
        if task is not None else f"timing rows: {s.seq_len} random non-special token ids each, no padding"
    )
    if task is not None:
        inputs_desc += (f"; accuracy: {len(plan.examples)} {plan.split} examples, length-sorted batches of "
                        f"{s.batch_size}, padded per batch")
    machine = machine_info(s.threads)
    if load is None:
        load = load_summary(rows, machine.get("logical_cpus"), s.threads)
    return {
        "version": BENCH_VERSION,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "task": task.name if task is not None else None,
        "split": plan.split,
        "n_eval": len(plan.examples) if task is not None else None,
        "threads": s.threads,
        "seq_len": s.seq_len,
        "batch_size": s.batch_size,
        "n_warmup": s.n_warmup,
        "n_latency": s.n_latency,
        "n_throughput": s.n_throughput,
        "inputs": inputs_desc,
        "isolated": bool(s.isolate),
        "rounds": s.rounds,
        "clock": s.clock,
        "machine": machine,
        "load": load,
        "models": rows,
        "ratios": {
            "baselines": {"fp32": FP32_BASELINE, "ort_int8": ORT_INT8_BASELINE, "teacher_runtime": RUNTIME_BASELINE},
            "vs_fp32": compute_ratios(rows, FP32_BASELINE),
            "vs_ort_int8": compute_ratios(rows, ORT_INT8_BASELINE),
            "vs_teacher_runtime": compute_ratios(rows, RUNTIME_BASELINE),
        },
    }


def write_result(result: dict[str, Any], path: Path) -> None:
    """Write ``bench.json`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Display


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}" if n / div < 100 else f"{n / div:.0f} {unit}"
    return f"{n} B"


def fmt(x: Any, spec: str, suffix: str = "") -> str:
    """``x`` formatted with ``spec`` (and ``suffix``), or ``"-"`` when it is not a number."""
    return "-" if not isinstance(x, (int, float)) else format(x, spec) + suffix


def fmt_spread(row: dict[str, Any], figure: str, spec: str) -> str:
    """``"median (min-max)"`` of a row's figure; just the value without rounds or spread."""
    value = fmt(row.get(figure), spec)
    sp = (row.get("spread") or {}).get(figure)
    if value == "-" or not sp or row.get("rounds", 0) < 2:
        return value
    return f"{value} ({format(sp['min'], spec)}-{format(sp['max'], spec)})"


def fmt_ratio(r: dict[str, Any], key: str) -> str:
    """``"2.31x (2.2-2.4)"``: a ratio of medians with the range of its round-by-round values."""
    value = fmt(r.get(key), ".2f", "x")
    rng = r.get(f"{key}_range")
    if value == "-" or not rng:
        return value
    return f"{value} ({rng[0]:.2f}-{rng[1]:.2f})"


def _table_title(result: dict[str, Any]) -> str:
    from .machine import flags_summary

    m = result.get("machine") or {}
    return (
        f"bench: {result.get('threads')} threads, seq {result.get('seq_len')}, batch {result.get('batch_size')}, "
        f"{result.get('rounds', 1)} interleaved round(s), {result.get('clock', 'wall')} clock"
        + (f", {result['task']} {result.get('split')} (n={result.get('n_eval')})" if result.get("task") else "")
        + f" - {m.get('cpu', '?')} [{flags_summary(m)}]"
    )


def print_bench_table(result: dict[str, Any], console=None, path: str | os.PathLike | None = None) -> None:
    """Print the models side by side (rich table): medians with their min-max over the rounds,
    ratios against the FP32 teacher, ORT int8 and the teacher through compactbert's runtime; then
    the kernels each used, skipped engines, the machine's load and where the JSON is."""
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        # Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 260)
    ratios = result.get("ratios") or {}
    vs = [ratios.get(k, {}) for k in ("vs_fp32", "vs_ort_int8", "vs_teacher_runtime")]
    table = Table(title=_table_title(result), title_justify="left")
    for col, just in (
        ("model", "left"), ("kind", "left"), ("bs1 p50 ms", "right"), (f"bs{result.get('batch_size', 32)} seq/s", "right"),
        ("x fp32", "right"), ("x ort-int8", "right"), ("x teacher-runtime", "right"), ("peak RSS MB", "right"),
        ("size", "right"), ("x smaller", "right"), ("accuracy", "right"), ("agree", "right"),
    ):
        table.add_column(col, justify=just)
    for e in result.get("models", []):
        acc = e.get("accuracy")
        acc_s = "-" if acc is None else f"{100 * acc:.2f}" + ("" if e.get("metric") in (None, "accuracy") else f" ({e['metric']})")
        status = " [red](failed)[/red]" if e.get("error") else " [yellow](skipped)[/yellow]" if e.get("skipped") else ""
        r32, rq, rrt = (v.get(e["name"], {}) for v in vs)
        table.add_row(
            escape(e["name"]) + status, e.get("kind", ""), fmt_spread(e, "latency_ms_bs1_p50", ".2f"),
            fmt_spread(e, "throughput_bs32", ".1f"), fmt_ratio(r32, "throughput_bs32"), fmt_ratio(rq, "throughput_bs32"),
            fmt_ratio(rrt, "throughput_bs32"), fmt(e.get("peak_rss_mb"), ".0f"), _fmt_bytes(e.get("file_bytes")),
            fmt(r32.get("file_bytes"), ".1f", "x"), acc_s, fmt(e.get("agreement_vs_fp32"), ".2%"),
        )
    console.print(table)
    for e in result.get("models", []):
        line = e.get("skipped") or e.get("error") or e.get("kernels") or "-"
        if e.get("note") and not e.get("skipped"):
            line += f" ({e['note']})"
        console.print(f"  [bold]{escape(e['name'])}[/bold]: {escape(line)}", highlight=False)
    _print_load(result, console)
    if path is not None:
        console.print(f"wrote {path}")


def _print_load(result: dict[str, Any], console) -> None:
    m, load = result.get("machine") or {}, result.get("load") or {}
    avg = load.get("loadavg_start") or ([m["loadavg_1m"]] if isinstance(m.get("loadavg_1m"), (int, float)) else None)
    others = load.get("others_cores_max")
    console.print(
        f"load: 1-min average {fmt(avg[0] if avg else None, '.2f')} at the start"
        + (f", {fmt((load.get('loadavg_end') or [None])[0], '.2f')} at the end" if load.get("loadavg_end") else "")
        + (f"; other processes used up to {others:.2f} of {m.get('logical_cpus')} cores while timing"
           if isinstance(others, (int, float)) else ""),
        highlight=False,
    )
    if load.get("warning"):
        console.print(f"[yellow]warning: {load['warning']}[/yellow]", highlight=False)
