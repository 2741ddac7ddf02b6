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
    "BENCH_FILE", "BENCH_VERSION", "FP32_BASELINE", "ORT_INT8_BASELINE", "NOT_MODEL_FILES", "model_bytes",
    "compute_ratios", "model_row", "bench_result", "write_result", "print_bench_table",
]

BENCH_FILE = "bench.json"
BENCH_VERSION = 1
# The rows every other row is compared with (see compactbert.bench.plan for the baseline kinds).
FP32_BASELINE = "teacher-fp32"
ORT_INT8_BASELINE = "teacher-ort-int8"

# Files that describe a model folder rather than being part of it: not counted as its bytes.
NOT_MODEL_FILES = {"bench.json", "eval.json", "size.json", "onnx_export.json", "onnx_quantize.json"}
_WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".bin", ".onnx_data", ".data")
# What a child's measurement contributes to a row, under the same names.
_MEASURED = (
    "latency_ms_bs1_p50", "latency_ms_bs1_p90", "latency_ms_bs1_mean", "throughput_bs32", "ms_per_batch_p50",
    "peak_rss_mb", "rss_before_load_mb", "rss_after_load_mb", "load_s",
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
    its child's measurement; accuracy is filled in by :func:`score_row`."""
    file_bytes, weights_bytes = model_bytes(spec.files)
    row: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "role": spec.role, "path": str(spec.files)}
    row.update({k: measured.get(k) for k in _MEASURED})
    row.update(
        file_bytes=file_bytes, weights_bytes=weights_bytes, accuracy=None, metric=None, metrics=None,
        agreement_vs_fp32=None, kernels=measured.get("kernels"),
    )
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


def compute_ratios(models: list[dict], baseline: str) -> dict[str, dict[str, float]]:
    """Every other model compared with the model named ``baseline``, as "times better" ratios.

    Returns:
        ``{model: {"throughput_bs32": this/base, "latency_bs1_p50": base/this, "latency_bs1_p90":
        base/this, "file_bytes": base/this, "weights_bytes": base/this, "peak_rss": base/this,
        "accuracy_delta": this - base (absolute, same unit as accuracy)}}``; a ratio whose inputs
        are missing is left out. Empty when the baseline is not among ``models``.
    """
    base = next((m for m in models if m.get("name") == baseline), None)
    if base is None:
        return {}

    def div(a, b):
        return (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 and a > 0 else None

    out: dict[str, dict[str, float]] = {}
    for m in models:
        if m["name"] == baseline:
            continue
        r = {
            "throughput_bs32": div(m.get("throughput_bs32"), base.get("throughput_bs32")),
            "latency_bs1_p50": div(base.get("latency_ms_bs1_p50"), m.get("latency_ms_bs1_p50")),
            "latency_bs1_p90": div(base.get("latency_ms_bs1_p90"), m.get("latency_ms_bs1_p90")),
            "file_bytes": div(base.get("file_bytes"), m.get("file_bytes")),
            "weights_bytes": div(base.get("weights_bytes"), m.get("weights_bytes")),
            "peak_rss": div(base.get("peak_rss_mb"), m.get("peak_rss_mb")),
        }
        if isinstance(m.get("accuracy"), (int, float)) and isinstance(base.get("accuracy"), (int, float)):
            r["accuracy_delta"] = m["accuracy"] - base["accuracy"]
        out[m["name"]] = {k: v for k, v in r.items() if v is not None}
    return out


def bench_result(plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``bench.json`` content of ``plan`` (a :class:`compactbert.bench.plan.BenchPlan`) and its rows."""
    from .machine import machine_info

    s, task = plan.settings, plan.task
    inputs_desc = (
        f"timing rows: {s.seq_len} real tokens each, no padding, cut from the {task.name} {plan.split} text"
        if task is not None else f"timing rows: {s.seq_len} random non-special token ids each, no padding"
    )
    if task is not None:
        inputs_desc += (f"; accuracy: {len(plan.examples)} {plan.split} examples, length-sorted batches of "
                        f"{s.batch_size}, padded per batch")
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
        "machine": machine_info(s.threads),
        "models": rows,
        "ratios": {
            "baselines": {"fp32": FP32_BASELINE, "ort_int8": ORT_INT8_BASELINE},
            "vs_fp32": compute_ratios(rows, FP32_BASELINE),
            "vs_ort_int8": compute_ratios(rows, ORT_INT8_BASELINE),
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


def print_bench_table(result: dict[str, Any], console=None, path: str | os.PathLike | None = None) -> None:
    """Print the models side by side (rich table), the kernels each used and where the JSON is."""
    import sys

    from rich.console import Console
    from rich.table import Table

    from .machine import flags_summary

    if console is None:
        # Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    m = result.get("machine") or {}
    title = (
        f"bench: {result.get('threads')} threads, seq {result.get('seq_len')}, batch {result.get('batch_size')}"
        + (f", {result['task']} {result.get('split')} (n={result.get('n_eval')})" if result.get("task") else "")
        + f" - {m.get('cpu', '?')} [{flags_summary(m)}]"
    )
    vs32 = (result.get("ratios") or {}).get("vs_fp32", {})
    vsq = (result.get("ratios") or {}).get("vs_ort_int8", {})
    table = Table(title=title, title_justify="left")
    for col, just in (
        ("model", "left"), ("kind", "left"), ("bs1 p50 ms", "right"), ("bs1 p90 ms", "right"),
        (f"bs{result.get('batch_size', 32)} seq/s", "right"), ("x fp32", "right"), ("x ort-int8", "right"), ("peak RSS MB", "right"),
        ("size", "right"), ("x smaller", "right"), ("accuracy", "right"),
    ):
        table.add_column(col, justify=just)
    for e in result.get("models", []):
        acc = e.get("accuracy")
        acc_s = "-" if acc is None else f"{100 * acc:.2f}" + ("" if e.get("metric") in (None, "accuracy") else f" ({e['metric']})")
        r32, rq = vs32.get(e["name"], {}), vsq.get(e["name"], {})
        table.add_row(
            e["name"] + (" [red](failed)[/red]" if e.get("error") else ""), e.get("kind", ""),
            fmt(e.get("latency_ms_bs1_p50"), ".2f"), fmt(e.get("latency_ms_bs1_p90"), ".2f"),
            fmt(e.get("throughput_bs32"), ".1f"), fmt(r32.get("throughput_bs32"), ".2f", "x"),
            fmt(rq.get("throughput_bs32"), ".2f", "x"), fmt(e.get("peak_rss_mb"), ".0f"),
            _fmt_bytes(e.get("file_bytes")), fmt(r32.get("file_bytes"), ".1f", "x"), acc_s,
        )
    console.print(table)
    for e in result.get("models", []):
        line = e.get("error") or e.get("kernels") or "-"
        console.print(f"  [bold]{e['name']}[/bold]: {line}", highlight=False)
    load = m.get("loadavg_1m")
    if isinstance(load, (int, float)) and m.get("logical_cpus") and load > 0.5 * m["logical_cpus"]:
        console.print(
            f"[yellow]note: the 1-minute load average was {load:.1f} on {m['logical_cpus']} CPUs when the "
            f"benchmark started; other work skews the timings[/yellow]"
        )
    if path is not None:
        console.print(f"wrote {path}")
