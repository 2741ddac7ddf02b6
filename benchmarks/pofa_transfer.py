"""Prune Once for All, downstream: one upstream-pruned model transferred to several tasks with its
sparsity pattern locked (then int8 QAT), against the dense model at the same budget and the fully
fine-tuned teacher (issue 12).

For each task of ``--tasks`` this (with ``--run``) trains, where the run is missing:

* ``runs/down-TASK``: ``compactbert compress pofa-downstream --model UPSTREAM --teacher TEACHER``
  (locked-mask fine-tuning with KD, then int8 QAT with the mask still locked), shortened to
  ``--steps`` optimizer steps per stage;
* ``runs/dense200-TASK``: dense MiniLM-L6 fine-tuned for the same total number of steps (the
  reference at equal budget);

then reads every run and writes the table: dev metric of the teacher (fine-tuned on the task's
full schedule), of the dense model at equal budget and of the transfer (its final, int8 model),
the share of the upstream model's zero weights that are still exactly zero after the transfer
(1.0 = the mask stayed locked), the transfer's encoder sparsity and its packed bytes.

Usage::

    python benchmarks/pofa_transfer.py --upstream runs/up-pofa85 --run
    python benchmarks/pofa_transfer.py --upstream runs/up-pofa85            # table only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402
from xtc_full import shown_command  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
METRIC = {"sst2": "accuracy", "stsb": "spearman", "rt": "accuracy"}
TEACHERS = {"sst2": "runs/sst2-teacher", "stsb": "runs/stsb-teacher", "rt": "runs/rt-teacher"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", default="runs/up-pofa85", help="the upstream-pruned run (compress --task corpus)")
    p.add_argument("--tasks", nargs="+", default=list(METRIC), choices=sorted(METRIC))
    p.add_argument("--teacher", action="append", default=[], metavar="TASK=RUN", help="teacher per task")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--steps", nargs=2, type=int, default=[150, 50], metavar=("FINETUNE", "QAT"),
                   help="optimizer steps of the two downstream stages (the recipe says 3 + 1 epochs)")
    p.add_argument("--down-prefix", default="down-", help="transfer runs are runs/PREFIX + task")
    p.add_argument("--run", action="store_true", help="train the runs that are missing")
    p.add_argument("--note", default="")
    p.add_argument("--section", default="pofa_transfer", help="RESULTS section to replace")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="markdown file whose section is replaced ('' to print only)")
    return p.parse_args(argv)


def teachers(args) -> dict[str, str]:
    out = dict(TEACHERS)
    for t in args.teacher:
        task, run = t.split("=", 1)
        out[task] = run
    return out


def data_args(args, task: str) -> list[str]:
    return [] if task == "rt" else ["--data", args.data]  # rt is embedded


def train_missing(args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cb = [sys.executable, "-m", "compactbert"]
    ft, qat = args.steps
    for task in args.tasks:
        down, dense = REPO / "runs" / f"{args.down_prefix}{task}", REPO / "runs" / f"dense200-{task}"
        if not (down / "model").is_dir():
            subprocess.check_call(cb + ["compress", "pofa-downstream", "--model", args.upstream, "--teacher",
                                        teachers(args)[task], "--task", task, *data_args(args, task), "--out", str(down),
                                        "--no-progress", "--overwrite", "--set", "stages.0.epochs=", "--set",
                                        f"stages.0.steps={ft}", "--set", "stages.1.epochs=", "--set",
                                        f"stages.1.steps={qat}"], cwd=REPO, env=env)
        if not (dense / "model").is_dir():
            subprocess.check_call(cb + ["finetune", "--model", "minilm-l6", "--task", task, *data_args(args, task),
                                        "--out", str(dense), "--max-steps", str(ft + qat), "--no-progress",
                                        "--overwrite"], cwd=REPO, env=env)


def metric_of(run: Path, task: str) -> float | None:
    try:
        m = json.loads((run / "eval.json").read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        return None
    return 100 * float(m[METRIC[task]]) if METRIC[task] in m else None


def encoder_weights(model_dir: Path) -> dict[str, "object"]:
    """Encoder Linear weights by their name inside the encoder (``layer.0.attention.self.query``),
    whatever prefix the model class puts before it."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            if ".encoder.layer." in f".{name}" and name.endswith(".weight") and t.dim() == 2:
                out[name[name.index("layer."):]] = t
    return out


def mask_kept(upstream: Path, down: Path) -> tuple[float, float, float]:
    """``(share of upstream zeros still zero, upstream sparsity, transfer sparsity)`` over the
    encoder's Linear weights."""
    up, dn = encoder_weights(upstream / "model"), encoder_weights(down / "model")
    zeros_up = kept = total = zeros_dn = 0
    for name, w in up.items():
        if name not in dn:
            continue
        z = w == 0
        zeros_up += int(z.sum())
        kept += int((dn[name][z] == 0).sum())
        zeros_dn += int((dn[name] == 0).sum())
        total += w.numel()
    if not total:
        return float("nan"), float("nan"), float("nan")
    return kept / max(zeros_up, 1), zeros_up / total, zeros_dn / total


def packed_bytes(run: Path) -> int | None:
    try:
        return int(json.loads((run / "size.json").read_text())["compressed_bytes"])
    except (OSError, ValueError, KeyError):
        return None


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run:
        train_missing(args)
    upstream = REPO / args.upstream if not Path(args.upstream).is_absolute() else Path(args.upstream)
    up_info = json.loads((upstream / "run.json").read_text())
    up_metrics = (up_info.get("stage_results") or [{}])[-1].get("metrics", {})
    lines = [
        "## Prune Once for All, downstream: one upstream-pruned model, transferred with its mask locked "
        "(`benchmarks/pofa_transfer.py`, issue 12)",
        "",
        f"Updated {datetime.now():%Y-%m-%d %H:%M} on {cpu_name()} (one thread per run). Command: "
        f"`{shown_command('benchmarks/pofa_transfer.py', argv if argv is not None else sys.argv[1:])}`.",
        f"Upstream model `{args.upstream}` (recipe `pofa-upstream`, {up_info.get('stage_results', [{}])[-1].get('steps', '?')} "
        f"steps on the embedded `general-en` corpus; STS-B dev by embedding cosine "
        f"{fmt(up_metrics.get('spearman_cosine'))}). Transfers: `pofa-downstream` with {args.steps[0]} + "
        f"{args.steps[1]} steps (locked-mask fine-tuning + KD from the task's teacher, then int8 QAT, mask locked); "
        f"the recipe says 3 + 1 epochs. 'dense, same steps': MiniLM-L6 fine-tuned for {sum(args.steps)} steps. "
        "Dev metric x100 (accuracy; STS-B Spearman).",
        "",
        "| task | teacher (full fine-tune) | dense, same steps | 85%-sparse transfer (+int8) | Δ vs teacher | "
        "Δ vs dense same steps | upstream zeros still zero | encoder sparsity | packed bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in args.tasks:
        down, dense = REPO / "runs" / f"{args.down_prefix}{task}", REPO / "runs" / f"dense200-{task}"
        t, d, s = metric_of(REPO / teachers(args)[task], task), metric_of(dense, task), metric_of(down, task)
        kept, _, sp = mask_kept(upstream, down) if (down / "model").is_dir() else (None, None, None)
        lines.append(
            f"| {task} | {fmt(t)} | {fmt(d)} | {fmt(s)} | {fmt(None if None in (s, t) else s - t, '+.2f')} | "
            f"{fmt(None if None in (s, d) else s - d, '+.2f')} | {fmt(kept, '.4f')} | {fmt(sp, '.1%')} | "
            f"{'-' if packed_bytes(down) is None else f'{packed_bytes(down):,}'} |")
    if args.note:
        lines += ["", args.note]
    body = "\n".join(lines) + "\n"
    print(body)
    publish(body, args.results, args.section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
