"""Run the shipped Combining Compressions sweep on SST-2 and publish its table next to the paper's.

``compactbert sweep sweeps/combining-compressions.yaml`` (19 points: KD at 4/3/2 layers, int8 QAT,
magnitude pruning at 50/70/90%, alone and in every combination; 1 epoch per point), each point
exported and benchmarked against the teacher, then a ``sweep_sst2`` section in RESULTS.md: every
point (accuracy, bytes, latency, throughput), the paper's "x smaller within 0.5%" per method and
combination next to ours (with measured speed), and whether the paper's findings hold here (QAT >
KD > MP; combinations super-multiplicative except QAT + MP).

Usage (from the repository root, after benchmarks/finetune_sst2.py made the teacher)::

    .venv/bin/python benchmarks/sweep_sst2.py --teacher runs/sst2-teacher            # hours: every point, 1 epoch
    .venv/bin/python benchmarks/sweep_sst2.py --teacher runs/sst2-teacher --max-train-samples 2000   # shortened
    .venv/bin/python benchmarks/sweep_sst2.py --table-only --out runs/sweep-cc       # rewrite the section

An interrupted run continues with ``--resume`` (finished points are skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402

SWEEP = REPO / "sweeps" / "combining-compressions.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "sweep_sst2"
SST2_TRAIN = 67_349
# (column, the sweep file's entry name)
GROUPS = (("QAT", "qat"), ("KD", "kd"), ("MP", "mp"), ("QAT+KD", "qat-kd"), ("QAT+MP", "qat-mp"),
          ("KD+MP", "kd-mp"), ("all three", "qat-kd-mp"))
# Combining Compressions, maximum size reduction within 0.5% of the baseline, 8 GLUE tasks (../shared/PAPERS.md)
PAPER = {
    "BERT-Mini 45 MB": (3.7, 1.2, 1.1, 4.7, 3.4, 1.8, 7.0),
    "BERT-Tiny 18 MB": (3.4, 1.0, 0.7, 4.0, 2.2, 1.0, 3.9),
}
SINGLES = {"QAT+KD": ("QAT", "KD"), "QAT+MP": ("QAT", "MP"), "KD+MP": ("KD", "MP"), "all three": ("QAT", "KD", "MP")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(REPO / "runs" / "sst2-teacher"))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(REPO / "runs" / "sweep-cc"))
    p.add_argument("--max-train-samples", type=int, default=None, help="shorten every point alike (default: all 67,349)")
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="interleaved benchmark rounds")
    p.add_argument("--n-throughput", type=int, default=10, help="batch-32 calls timed per round and model")
    p.add_argument("--n-latency", type=int, default=50, help="batch-1 calls timed per round and model")
    p.add_argument("--baselines", default="torch-fp32,ort-int8-fused",
                   help="the teacher's variants in the benchmark (comma-separated; 'default' for bench's own list)")
    p.add_argument("--within", type=float, nargs="+", default=[0.5, 2.0],
                   help="points below the teacher each per-method table allows (one table per value)")
    p.add_argument("--table-only", action="store_true", help="train nothing: the section from --out/sweep.json")
    p.add_argument("--results", default=str(RESULTS))
    return p.parse_args(argv)


def _x(v) -> str:
    return "-" if v is None else f"{v:.1f}x"


def best_per_group(result: dict, within: float, key: str) -> dict[str, dict | None]:
    """Per paper column: the finished point of that group within ``within`` points of the teacher
    with the largest ratio ``key`` (``x_smaller`` or ``x_faster``); None when no point qualifies."""
    t = result["teacher"]
    out: dict[str, dict | None] = {}
    for col, group in GROUPS:
        ok = [p for p in result["points"] if p.get("group") == group and p["status"] == "done"
              and (t["accuracy"] - p["accuracy"]) * 100 <= within + 1e-9 and p.get(key) is not None]
        out[col] = max(ok, key=lambda p: p[key]) if ok else None
    return out


def points_table(result: dict) -> list[str]:
    t = result["teacher"]
    lines = ["| point | dev acc | Δ vs teacher | packed bytes | x smaller than FP32 | bs1 p50 ms | x faster (bs1) "
             "| bs32 seq/s | steps | train min |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tl = t.get("latency_ms_bs1_p50")
    tt = t.get("throughput_bs32")
    lines.append(f"| teacher (FP32) | {100 * t['accuracy']:.2f}% | | {t['file_bytes']:,} | 1.0x | "
                 f"{'-' if tl is None else f'{tl:.2f}'} | 1.0x | {'-' if tt is None else f'{tt:.1f}'} | | |")
    for p in result["points"]:
        if p["status"] != "done":
            what = f"failed: {p.get('error')}" if p["status"] == "failed" else f"not run ({p['status']})"
            lines.append(f"| {p['name']} | {what} | | | | | | | | |")
            continue
        ms = p.get("latency_ms_bs1_p50")
        fast = tl / ms if tl and ms else None
        thr = p.get("throughput_bs32")
        minutes = "-" if p.get("train_seconds") is None else f"{p['train_seconds'] / 60:.1f}"
        lines.append(
            f"| {p['name']} | {100 * p['accuracy']:.2f}% | {p['delta_points']:+.2f} | {p['packed_bytes']:,} | "
            f"{_x(p.get('x_smaller'))} | {'-' if ms is None else f'{ms:.2f}'} | {_x(fast)} | "
            f"{'-' if thr is None else f'{thr:.1f}'} | {p.get('steps') or '-'} | {minutes} |")
    return lines


def method_table(result: dict, within: float) -> tuple[list[str], dict[str, float]]:
    """The paper's per-method row(s) and ours; returns ours (1.0 where no point qualifies)."""
    t = result["teacher"]
    for p in result["points"]:
        if p["status"] == "done" and t.get("latency_ms_bs1_p50") and p.get("latency_ms_bs1_p50"):
            p["x_faster"] = t["latency_ms_bs1_p50"] / p["latency_ms_bs1_p50"]
    small, fast = best_per_group(result, within, "x_smaller"), best_per_group(result, within, "x_faster")
    cols = [c for c, _ in GROUPS]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in PAPER.items():
        lines.append(f"| paper, {name}: x smaller | " + " | ".join(f"{v:.1f}x" for v in row) + " |")
    ours = {c: (small[c]["x_smaller"] if small[c] else 1.0) for c in cols}
    lines.append("| **ours, MiniLM-L6: x smaller** | " + " | ".join(
        f"**{ours[c]:.1f}x** ({small[c]['name']})" if small[c] else "1.0x (none)" for c in cols) + " |")
    lines.append("| ours: x faster at batch 1 | " + " | ".join(
        f"{fast[c]['x_faster']:.1f}x ({fast[c]['name']})" if fast[c] else "-" for c in cols) + " |")
    lines.append("| ours: product of the single methods | " + " | ".join(
        "" if c not in SINGLES else f"{_product(ours, SINGLES[c]):.1f}x" for c in cols) + " |")
    return lines, ours


def _product(ours: dict[str, float], names: tuple[str, ...]) -> float:
    out = 1.0
    for n in names:
        out *= ours[n]
    return out


def findings(ours: dict[str, float], within: float) -> list[str]:
    """Whether the paper's two findings hold in ``ours`` (x smaller within the tolerance)."""
    order = sorted(("QAT", "KD", "MP"), key=lambda c: -ours[c])
    text = f"{order[0]} ({ours[order[0]]:.1f}x)"
    for a, b in zip(order, order[1:]):
        text += (" = " if round(ours[a], 1) == round(ours[b], 1) else " > ") + f"{b} ({ours[b]:.1f}x)"
    holds = round(ours["QAT"], 1) > round(ours["KD"], 1) > round(ours["MP"], 1)
    lines = [f"- Single methods, largest reduction within {within:g} points first: {text}"
             + ("; the paper's order QAT > KD > MP holds." if holds else "; the paper found QAT > KD > MP.")]
    for combo, parts in SINGLES.items():
        prod = _product(ours, parts)
        kind = "super-multiplicative" if ours[combo] > prod * 1.05 else (
            "sub-multiplicative" if ours[combo] < prod / 1.05 else "about multiplicative")
        paper = "sub-multiplicative in the paper" if combo == "QAT+MP" else "super-multiplicative in the paper"
        lines.append(f"- {combo}: {ours[combo]:.1f}x vs {prod:.1f}x for the product of its parts: {kind} ({paper}).")
    return lines


def section(result: dict, args: argparse.Namespace) -> str:
    from compactbert.report.sweep import summary_lines

    t, est = result["teacher"], result["estimate"]
    n_train, limit = est.get("train_examples"), result["config"].get("max_train_samples")
    short = ("the full SST-2 training set" if limit is None else
             f"**--max-train-samples {limit}** ({n_train:,} of {SST2_TRAIN:,} training sentences)")
    steps = sorted({p["steps"] for p in result["points"] if p.get("steps")})
    bench = "no benchmark (--no-bench)" if not result["config"].get("bench") else (
        f"benchmarked together with the teacher's baselines ({args.baselines}), 2 threads, {args.rounds} interleaved "
        f"rounds ({args.n_throughput} batch-32 and {args.n_latency} batch-1 calls per model and round), medians")
    per_method = []
    for within in args.within:
        table, ours = method_table(result, within)
        per_method += [f"### Largest size reduction within {within:g} points of the teacher, per method", "",
                       *table, "", *findings(ours, within), ""]
    out = [
        "## Combining Compressions on MiniLM-L6 / SST-2: the sweep (`benchmarks/sweep_sst2.py`)", "",
        f"{datetime.now():%Y-%m-%d}, {cpu_name()}. `compactbert sweep sweeps/combining-compressions.yaml` "
        f"({len(result['points'])} points, 1 epoch per point, no augmentation: the file says how it shortens the paper), trained on "
        f"{short}: {', '.join(map(str, steps))} steps per point; dev accuracy on {t['n']} SST-2 dev sentences; "
        f"{bench}. Sizes are the packed export's bytes on disk; \"x smaller\" is against the FP32 teacher "
        f"({t['file_bytes']:,} bytes of safetensors), as in the paper (fp16 storage alone gives 2.0x).", "",
        f"Teacher: {100 * t['accuracy']:.2f}%.", "",
        *points_table(result), "",
        *per_method,
        "### Pick this (from the sweep's own summary)", "", *[f"- {s}" for s in summary_lines(result)[1:]],
    ]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.table_only:
        from compactbert import api

        options = {} if args.baselines == "default" else {"baselines": [b for b in args.baselines.split(",") if b]}
        options.update(rounds=args.rounds, n_throughput=args.n_throughput, n_latency=args.n_latency)
        api.sweep(SWEEP, args.teacher, "sst2", out, data=args.data, resume=args.resume,
                  max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                  bench=not args.no_bench, progress=False, bench_options=options)
    result = json.loads((out / "sweep.json").read_text())
    publish(section(result, args), args.results, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
