"""The uncompressed teacher (and, optionally, packed models on every backend) on the engines a user
would pick instead of compressing, measured in interleaved rounds, and its section of RESULTS.md.

Every model is measured once per round (``--rounds``, 3 by default, each round rotated by one), each
in a fresh process with ``--threads`` threads; every figure is the median over the rounds with its
min-max, and every ratio is taken round by round. The machine's load is recorded: the 1-minute load
average before and after, and the cores other processes used while each model was timed. A run with
contended timings is **not published** (bench.json is still written) unless ``--force``: a busy
machine changes the ranking, not just the numbers.

Baselines (``compactbert bench``'s defaults): PyTorch FP32 eager, PyTorch bf16 (labelled emulated on
a CPU without native bf16), ONNX Runtime dynamic int8 (default and transformer-optimized), OpenVINO
FP32, its default precision and NNCF int8 (300 training sentences; ``pip install compactbert[bench]``),
and the teacher through compactbert's own runtime.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_engines.py --teacher runs/rt-teacher --task rt --threads 2
    .venv/bin/python benchmarks/bench_engines.py --teacher runs/sst2-teacher --task sst2 \\
        --data ../shared/data/glue --packed runs/packed-sst2/xtc-ternary --backends compactbert,openvino
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402
from roofline import config_flops, measure_peaks, roofline_lines  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(REPO / "runs" / "rt-teacher"), help="the fine-tuned FP32 teacher (run or model folder)")
    p.add_argument("--task", default="rt")
    p.add_argument("--data", default=None, help="task data (default: the task's default source)")
    p.add_argument("--packed", nargs="*", default=[], help="packed directories to measure too")
    p.add_argument("--backends", default="compactbert", help="backends for the packed models (comma-separated)")
    p.add_argument("--baselines", default=None, help="teacher variants (comma-separated; default: bench's defaults)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per timing row")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-latency", type=int, default=50)
    p.add_argument("--n-throughput", type=int, default=10)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-engines" / "bench.json"))
    p.add_argument("--results", default=str(RESULTS), help="markdown file whose section is replaced ('' to print only)")
    p.add_argument("--max-load", type=float, default=None,
                   help="refuse to start above this 1-minute load average (default: the number of CPUs - threads + 0.5)")
    p.add_argument("--force", action="store_true", help="publish even when other processes contended the timings")
    p.add_argument("--from-json", default=None,
                   help="measure nothing: publish an earlier run's bench.json (its command given by --command)")
    p.add_argument("--command", default=None, help="with --from-json: the command that measured it")
    p.add_argument("--note", default="", help="a paragraph under the table (what the models are)")
    p.add_argument("--section", default="bench_engines",
                   help="RESULTS section to replace (e.g. one per CPU kind, so one machine's run keeps another's)")
    return p.parse_args(argv)


def _cell(row: dict, figure: str, spec: str) -> str:
    from compactbert.bench.result import fmt_spread

    return fmt_spread(row, figure, spec)


def table(result: dict) -> str:
    """The markdown table of a bench.json: one row per model, medians with their min-max."""
    from compactbert.bench.result import fmt, fmt_ratio

    ratios = result["ratios"]
    rows = [
        "| model (engine) | bs1 p50 ms | bs32 seq/s | x FP32 eager (bs32) | x teacher through compactbert (bs32) | "
        "dev acc | same class as FP32 | size | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["models"]:
        if r.get("skipped") or r.get("error"):
            rows.append(f"| {r['name']} ({r['kind']}) | - | - | - | - | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        v32 = ratios["vs_fp32"].get(r["name"], {})
        vrt = ratios["vs_teacher_runtime"].get(r["name"], {})
        acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f}"
        rows.append(
            f"| {r['name']} ({r['kind']}) | {_cell(r, 'latency_ms_bs1_p50', '.2f')} | {_cell(r, 'throughput_bs32', '.1f')} "
            f"| {fmt_ratio(v32, 'throughput_bs32') if v32 else '1.00x'} | {fmt_ratio(vrt, 'throughput_bs32') if vrt else '-'} "
            f"| {acc} | {fmt(r.get('agreement_vs_fp32'), '.2%')} | {r['file_bytes'] / 1e6:.1f} MB | {r.get('note') or ''} |"
        )
    return "\n".join(rows)


def _rounds(row: dict, figure: str) -> list[float]:
    spread = (row.get("spread") or {}).get(figure) or {}
    return list(spread.get("rounds") or ([row[figure]] if row.get(figure) is not None else []))


def versus_best(result: dict) -> str:
    """Each compressed model against the strongest baseline engine on the uncompressed teacher (our
    own runtime on the teacher excluded), at batch 32 (throughput) and batch 1 (p50 latency): the
    ratio round by round (higher = faster), its median, min-max, and max/min spread."""
    import statistics

    ok = [r for r in result["models"] if not (r.get("skipped") or r.get("error"))]
    baselines = [r for r in ok if r.get("role") == "baseline" and not str(r.get("kind", "")).startswith("packed")]
    if not baselines:
        return ""
    best32 = max(baselines, key=lambda r: r["throughput_bs32"])
    best1 = min(baselines, key=lambda r: r["latency_ms_bs1_p50"])
    lines = [f"Against the strongest baseline engine on the uncompressed teacher, round by round: at batch 32 "
             f"`{best32['name']}` ({best32['throughput_bs32']:.1f} seq/s), at batch 1 `{best1['name']}` "
             f"({best1['latency_ms_bs1_p50']:.2f} ms). x > 1: faster than it.", "",
             "| model (engine) | x best at bs32: median (min-max) | spread max/min | x best at bs1: median (min-max) | spread max/min |",
             "|---|---|---|---|---|"]

    def cell(values: list[float]) -> tuple[str, str]:
        if not values:
            return "-", "-"
        med = statistics.median(values)
        return f"{med:.2f}x ({min(values):.2f}-{max(values):.2f})", f"{max(values) / min(values):.2f}"

    for r in ok:
        if r.get("role") == "baseline":
            continue
        t, tb = _rounds(r, "throughput_bs32"), _rounds(best32, "throughput_bs32")
        lat, lb = _rounds(r, "latency_ms_bs1_p50"), _rounds(best1, "latency_ms_bs1_p50")
        a = cell([x / y for x, y in zip(t, tb)])
        b = cell([y / x for x, y in zip(lat, lb)])
        lines.append(f"| {r['name']} ({r['kind']}) | {a[0]} | {a[1]} | {b[0]} | {b[1]} |")
    return "\n".join(lines)


def section(result: dict, command: str, section_name: str, note: str = "") -> str:
    m, load = result["machine"], result["load"]
    kernels = "\n".join(f"- `{r['name']}`: {r.get('skipped') or r.get('error') or r.get('kernels')}" for r in result["models"])
    avg = load.get("loadavg_start") or [None]
    end = load.get("loadavg_end") or [None]
    others = "-" if load.get("others_cores_max") is None else f"{load['others_cores_max']:.2f}"
    return f"""## Engines on the uncompressed teacher, interleaved rounds (`benchmarks/bench_engines.py`)

Measured {result['date'][:10]} on {cpu_name()}, {m.get('logical_cpus')} logical CPUs, {result['threads']} threads,
torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino')}, nncf {m.get('nncf')}.
Command: `{command}`
{result['task']} {result['split']} (n={result['n_eval']}); timing rows of {result['seq_len']} real tokens; {result['rounds']}
interleaved rounds (every model once per round, rotated), each model in a fresh process; median (min-max)
over the rounds, ratios taken round by round; {result['clock']} clock.
Load: 1-minute average {avg[0]} before, {end[0]} after; other processes used at most {others} cores while a
model was timed ({len(load.get('contended') or [])} contended timings).

{table(result)}

{versus_best(result)}
{(chr(10) + note + chr(10)) if note else ''}
Kernels:
{kernels}

Roofline (FLOPs of a batch-32 forward of {result['seq_len']} tokens over the measured batch-32 time, against
the peak of one product measured right after, same threads; `benchmarks/roofline.py`):
{chr(10).join(result.get('roofline') or ['(not measured)'])}
"""


def main(argv=None) -> int:
    args = parse_args(argv)
    from compactbert.api import bench  # (compactbert.bench is also the package of that name)
    from compactbert.bench.result import print_bench_table

    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        if result["load"].get("warning") and not args.force:
            print(f"not published: {result['load']['warning']}", file=sys.stderr)
            return 3
        publish(section(result, args.command or "(not recorded)", args.section, args.note), args.results or None,
                args.section)
        return 0
    cpus = os.cpu_count() or 1
    limit = args.max_load if args.max_load is not None else max(cpus - args.threads, 0) + 0.5
    load1 = os.getloadavg()[0]
    if load1 > limit and not args.force:
        print(f"not starting: the 1-minute load average is {load1:.2f} (> {limit:.2f}) on {cpus} CPUs; other work "
              f"would contend the timings. Rerun when the machine is idle (or --force).", file=sys.stderr)
        return 3
    extra = {}
    if args.baselines is not None:
        extra["baselines"] = [b for b in args.baselines.split(",") if b]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = bench(
        args.packed or None, baseline=args.teacher, task=args.task, data=args.data, threads=args.threads,
        out=args.out, show=False, rounds=args.rounds, seq_len=args.seq_len, n_latency=args.n_latency, n_throughput=args.n_throughput,
        max_eval_samples=args.max_eval_samples, clock=args.clock,
        backends=[b for b in args.backends.split(",") if b], **extra,
    )
    print_bench_table(result, path=args.out)
    for r in result["models"]:
        r["flops"] = config_flops(r["path"] if r.get("role") != "baseline" else args.teacher, args.seq_len, 32)
    result["roofline"] = roofline_lines(measure_peaks(args.threads), result["models"], args.seq_len)
    print("\n".join(result["roofline"]))
    Path(args.out).write_text(json.dumps(result, indent=1))  # with the roofline, for --from-json
    command = "python benchmarks/bench_engines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if result["load"].get("warning") and not args.force:
        print(f"not published: {result['load']['warning']}", file=sys.stderr)
        return 3
    publish(section(result, command.strip(), args.section, args.note), args.results or None, args.section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
