"""What a distillation training step costs, per way of running it: the teacher live or cached
(distillation's ``cache_teacher``), FP32 or bf16 autocast.

For each recipe of ``--recipes``, its first stage trains a few dozen steps through
``compactbert compress`` once per arm of ``--arms``. An arm is ``live`` (the teacher runs at every
step, ``cache_teacher: false``) or ``cached`` (its outputs are read from the cache,
``cache_teacher: true``), optionally suffixed ``-fp32`` or ``-bf16`` (the recipe's ``bf16``; without
a suffix, the machine's default: bf16 where it is native). Each run is a fresh process at
``--threads`` threads, and the runs are interleaved in rounds (A, B, A, B, ...). Each run reports
the wall time of its optimizer steps after ``--warmup`` untimed ones; the table shows per recipe and
arm the median over rounds of the per-run median, the spread (min-max) of those, and the first
arm's time over each other arm's (median of the per-round ratios). Caches are built before the
first round, untimed; their size and build time are reported apart.

Usage::

    python benchmarks/teacher_cache_speed.py --teacher runs/sst2-teacher3 --task sst2 --rounds 3
    python benchmarks/teacher_cache_speed.py --teacher runs/sst2-teacher3 --arms cached-fp32 cached-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402
from xtc_full import CACHE, load_recipe, shown_command  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
SECTION = "teacher_cache_speed"
PRECISION_SECTION = "train_precision_speed"  # arms that differ in precision
FULL_STEPS = {"sst2": 37_890, "stsb": 3_240}  # 18 epochs of batch 32


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="run directory of the teacher fine-tuned on --task")
    p.add_argument("--task", default="sst2", choices=sorted(FULL_STEPS))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--recipes", nargs="+", default=["xtc-binary", "xtc-layer-reduction-binary"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps before them")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arms", nargs="+", type=arm, default=["live", "cached"],
                   help="live|cached, optionally -fp32 or -bf16 (default: live cached, the machine's default precision)")
    p.add_argument("--component-batches", type=int, default=60, help="batches for the teacher-part-alone timing")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"),
                   help="markdown file whose section is replaced ('' to print only)")
    p.add_argument("--child", nargs=3, metavar=("RECIPE", "MODE", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def arm(text: str) -> str:
    """Validate an arm name: live|cached with an optional -fp32/-bf16."""
    cache, dash, precision = text.partition("-")
    if cache not in ("live", "cached") or precision not in (("fp32", "bf16") if dash else ("",)):
        raise argparse.ArgumentTypeError(f"arm must be live or cached, optionally -fp32 or -bf16, got {text!r}")
    return text


def arm_settings(name: str) -> list[str]:
    """The recipe's ``--set`` overrides for an arm, the distillation method being at ``{i}``."""
    cache, _, precision = name.partition("-")
    sets = [f"stages.0.methods.{{i}}.cache_teacher={'true' if cache == 'cached' else 'false'}"]
    if precision:
        sets.append(f"bf16={'true' if precision == 'bf16' else 'false'}")
    return sets


def distillation_index(rec) -> int:
    """Position of the distillation method in the recipe's first stage."""
    return next(i for i, m in enumerate(rec.stages[0].methods) if m.type == "distillation")


def child_argv(args, recipe: str, mode: str, out: Path) -> list[str]:
    """``compactbert compress`` arguments of one timed run: the recipe's first stage cut to
    ``--warmup + --steps`` steps, no evaluation, the arm's settings, quantizers compiled."""
    steps_per_epoch = {"sst2": 2105, "stsb": 180}[args.task]
    frac = (args.warmup + args.steps) / steps_per_epoch
    argv = ["compress", recipe, "--teacher", args.teacher, "--task", args.task, "--data", args.data,
            "--out", str(out), "--no-progress", "--set", f"stages.0.epochs={frac:.6f}",
            "--set", f"stages.0.eval_every={10**6}"]
    rec = load_recipe(recipe)
    for setting in arm_settings(mode):
        argv += ["--set", setting.format(i=distillation_index(rec))]
    for j, m in enumerate(rec.stages[0].methods):  # quantizers compiled, as in a full-length run
        if "compile" in type(m).model_fields:
            argv += ["--set", f"stages.0.methods.{j}.compile=true"]
    for later in range(1, len(rec.stages)):  # later stages: as short as a stage can be
        argv += ["--set", f"stages.{later}.epochs={1 / steps_per_epoch:.6f}"]
    return argv


def child(args) -> int:
    """One timed run (in its own process): step times to OUT as JSON."""
    import torch

    from compactbert.cli import main as cli_main
    from compactbert.train import step as step_mod

    recipe, mode, out = args.child
    times: list[float] = []
    original = step_mod.Stepper.step

    def timed(self, batch):
        t = time.perf_counter()
        result = original(self, batch)
        times.append(time.perf_counter() - t)
        return result

    step_mod.Stepper.step = timed
    with tempfile.TemporaryDirectory() as tmp:
        argv = child_argv(args, recipe, mode, Path(tmp) / "run")
        code = cli_main(argv)
        if code:
            raise SystemExit(code)
    Path(out).write_text(json.dumps({"times": times[args.warmup: args.warmup + args.steps],
                                     "threads": torch.get_num_threads()}))
    return 0


def component(args, batches: int, bf16: bool) -> tuple[list[float], list[float]]:
    """The teacher's part of a step alone, through distillation's own code on the same batches:
    the live forward and the cache read alternate batch by batch, under bf16 autocast when ``bf16``
    (as the training step runs them). Returns (live, cached) seconds."""
    import copy

    import torch

    from compactbert.api import load_for_task
    from compactbert.data.batching import Collator, batch_order, encode, pad_id_of
    from compactbert.data.sources import load_examples
    from compactbert.methods.base import TrainState
    from compactbert.methods.distill import Distillation

    teacher, tok = load_for_task(args.teacher, args.task)
    feats = encode(load_examples(args.task, "train", args.data), tok, 128)
    student = copy.deepcopy(teacher)
    m = Distillation(alpha=0.0, weights={"logits": 1.0, "hidden": 1.0, "attention": 1.0}, cache_teacher=True)
    state = TrainState(model=student, teacher=teacher, features=feats, steps_per_epoch=1, total_steps=2,
                       extras={"bf16": bf16})
    m.attach(state)
    cache, collate = m._cache, Collator(pad_id_of(student, tok))
    live, cached = [], []
    for idx in batch_order([len(f["input_ids"]) for f in feats], 32, seed=42, epoch=0)[:batches]:
        b = collate([feats[i] for i in idx])
        state.batch, state.batch_index = b, idx
        for store, c in ((live, None), (cached, cache)):
            m._cache = c
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                m._teacher_outputs(state)
            store.append(time.perf_counter() - t)
    return live, cached


def run_child(args, recipe: str, mode: str) -> list[float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--child", recipe, mode, f.name, "--teacher", args.teacher, "--task",
               args.task, "--data", args.data, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        env.setdefault("COMPACTBERT_CACHE", str(CACHE))  # the one the xtc_full.py runs use
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{recipe} ({mode}) failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(f.name).read_text())["times"]


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def precision_of(name: str, default_bf16: bool) -> str:
    """'bf16' or 'fp32': the precision an arm trains at on this machine."""
    suffix = name.partition("-")[2]
    return suffix or ("bf16" if default_bf16 else "fp32")


def component_precision(arms: list[str], default_bf16: bool) -> str | None:
    """The precision at which both a live and a cached arm run (the teacher-part timing needs both)."""
    live = {precision_of(a, default_bf16) for a in arms if a.startswith("live")}
    cached = {precision_of(a, default_bf16) for a in arms if a.startswith("cached")}
    both = sorted(live & cached)
    return both[0] if both else None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    os.environ.setdefault("COMPACTBERT_CACHE", str(CACHE))
    from compactbert.methods.teacher_cache import cache_root
    from compactbert.train.loop import bf16_supported

    default_bf16 = bf16_supported()
    precision = {a: precision_of(a, default_bf16) for a in args.arms}
    before = set((cache_root() / "teacher-outputs").glob("*/meta.json"))
    t0 = time.monotonic()
    for p in sorted({precision[a] for a in args.arms if a.startswith("cached")}):
        for recipe in args.recipes:  # builds the caches no run built yet (untimed)
            run_child(args, recipe, f"cached-{p}")
    built = set((cache_root() / "teacher-outputs").glob("*/meta.json")) - before
    build_note = (f"built by this script in {time.monotonic() - t0:.0f} s (with short runs)"
                  if built else "already there (built by an earlier run)")
    sizes = {p.parent.name: sum(f.stat().st_size for f in p.parent.iterdir()) for p in
             (cache_root() / "teacher-outputs").glob("*/meta.json")}
    for folder in (cache_root() / "teacher-outputs").glob("*/meta.json"):  # in the page cache, as after a long
        with open(folder.parent / "data.f16", "rb") as f:                  # run's first epoch
            while f.read(1 << 24):
                pass
    torch_threads(args.threads)
    part = component_precision(args.arms, default_bf16)
    c_live, c_cached = component(args, args.component_batches, part == "bf16") if part else ([], [])
    per: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for recipe in args.recipes:
            for name in args.arms:
                t = statistics.median(run_child(args, recipe, name))
                per.setdefault((recipe, name), []).append(t)
                print(f"round {r + 1}: {recipe} {name}: {t:.3f} s/step", flush=True)
    shown = {a: f"{a.partition('-')[0]} {precision[a]}" for a in args.arms}
    by_precision = len(set(precision.values())) > 1
    title = ("## Distillation training steps in FP32 and bf16 autocast" if by_precision else
             "## Distillation with the teacher's outputs cached")
    first = args.arms[0]
    lines = [
        f"{title} (`benchmarks/teacher_cache_speed.py`)",
        "",
        f"Measured {datetime.now():%Y-%m-%d %H:%M} on {cpu_name()}, {args.threads} thread(s) per run, "
        f"one run at a time, on a machine otherwise idle (training paused).",
        f"Command: `{shown_command('benchmarks/teacher_cache_speed.py', sys.argv[1:] if argv is None else argv)}`.",
        f"Each run: the recipe's first stage on {args.task} with teacher `{args.teacher}`, {args.warmup} untimed then "
        f"{args.steps} timed optimizer steps (batch 32; quantizers compiled, as `compile: auto` does for full-length "
        f"runs), in a fresh process; {args.rounds} interleaved rounds "
        f"({', '.join(shown[a] for a in args.arms)}, ...), the cache files read once before them (a full-length run "
        "reads every example each epoch, so after its first epoch the file is in the page cache). 'live': the "
        "teacher runs at every step; 'cached': its outputs come from distillation's cache; 'bf16': the recipe's bf16 "
        "autocast (weights and optimizer in FP32). Cells: median over rounds of each run's median step time "
        f"[min-max over rounds]; speed-up: median of the per-round ratios of `{shown[first]}` to the arm. Hours: "
        f"{FULL_STEPS[args.task]:,} steps (18 epochs) at that rate.",
        "",
        "| recipe (first stage) | " + " | ".join(f"{shown[a]}, s/step" for a in args.arms) + " | "
        + " | ".join(f"speed-up of {shown[a]}" for a in args.arms[1:]) + " | "
        + " | ".join(f"18 epochs {shown[a]}" for a in args.arms) + " |",
        "|---|" + "---|" * (3 * len(args.arms) - 1),
    ]
    hours = FULL_STEPS[args.task] / 3600
    for recipe in args.recipes:
        times = {a: per[(recipe, a)] for a in args.arms}
        cells = [f"{statistics.median(t):.3f} [{min(t):.3f}-{max(t):.3f}]" for t in times.values()]
        ratios = [f"**{statistics.median(x / y for x, y in zip(times[first], times[a])):.2f}x**"
                  for a in args.arms[1:]]
        total = [f"{statistics.median(t) * hours:.1f} h" for t in times.values()]
        lines.append(f"| {recipe} | " + " | ".join(cells + ratios + total) + " |")
    if c_live:
        lines += ["", f"The teacher's part alone ({len(c_live)} batches of epoch 0, {part}, in one process, the live "
                  "forward and the cache read alternating batch by batch, through distillation's `_teacher_outputs`): "
                  f"live {statistics.median(c_live) * 1000:.0f} ms [{min(c_live) * 1000:.0f}-{max(c_live) * 1000:.0f}], "
                  f"cached {statistics.median(c_cached) * 1000:.1f} ms [{min(c_cached) * 1000:.1f}-"
                  f"{max(c_cached) * 1000:.1f}] per batch (median [min-max])."]
    if sizes:
        size_txt = ", ".join(f"{v / 2**30:.2f} GiB" for v in sizes.values())
        lines += ["", f"The caches (float16, in `$COMPACTBERT_CACHE`, one per teacher, data and precision): {size_txt}; "
                  f"{build_note}. Every run with the same teacher, training data and precision reuses its cache (both "
                  "stages of a two-stage recipe, the other recipes, resumed runs)."]
    publish("\n".join(lines), args.results or None, PRECISION_SECTION if by_precision else SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
