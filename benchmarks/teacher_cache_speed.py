"""What caching the teacher's outputs saves per training step (distillation's ``cache_teacher``).

For each recipe of ``--recipes``, its first stage trains a few dozen steps through
``compactbert compress``, once with the teacher run live at every step (``cache_teacher: false``)
and once reading its outputs from the cache (``cache_teacher: true``). Each run is a fresh process
at ``--threads`` threads, and the runs are interleaved in rounds (live, cached, live, cached, ...).
Each run reports the wall time of its optimizer steps after ``--warmup`` untimed ones; the table
shows per recipe and mode the median over rounds of the per-run median, the spread (min-max) of
those, and the live/cached ratio (median of the per-round ratios). The cache is built before the
first round, untimed; its size and build time are reported apart.

Usage::

    python benchmarks/teacher_cache_speed.py --teacher runs/sst2-teacher3 --task sst2 --rounds 3
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
from xtc_full import CACHE, shown_command  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
SECTION = "teacher_cache_speed"
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
    p.add_argument("--component-batches", type=int, default=60, help="batches for the teacher-part-alone timing")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"),
                   help="markdown file whose section is replaced ('' to print only)")
    p.add_argument("--child", nargs=3, metavar=("RECIPE", "MODE", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load(recipe: str):
    from compactbert.recipe import Recipe

    path = Path(recipe) if Path(recipe).is_file() else REPO / "recipes" / f"{recipe}.yaml"
    return Recipe.load(path)


def distillation_index(recipe: str) -> int:
    """Position of the distillation method in the recipe's first stage."""
    return next(i for i, m in enumerate(load(recipe).stages[0].methods) if m.type == "distillation")


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
    steps_per_epoch = {"sst2": 2105, "stsb": 180}[args.task]
    frac = (args.warmup + args.steps) / steps_per_epoch
    i = distillation_index(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["compress", recipe, "--teacher", args.teacher, "--task", args.task, "--data", args.data,
                "--out", str(Path(tmp) / "run"), "--no-progress", "--set", f"stages.0.epochs={frac:.6f}",
                "--set", f"stages.0.eval_every={10**6}", "--set", f"stages.0.methods.{i}.cache_teacher={mode}"]
        for j, m in enumerate(load(recipe).stages[0].methods):  # quantizers compiled, as in a full-length run
            if "compile" in type(m).model_fields:
                argv += ["--set", f"stages.0.methods.{j}.compile=true"]
        for later in range(1, len(load(recipe).stages)):  # later stages: as short as a stage can be
            argv += ["--set", f"stages.{later}.epochs={1 / steps_per_epoch:.6f}"]
        code = cli_main(argv)
        if code:
            raise SystemExit(code)
    Path(out).write_text(json.dumps({"times": times[args.warmup: args.warmup + args.steps],
                                     "threads": torch.get_num_threads()}))
    return 0


def component(args, batches: int) -> tuple[list[float], list[float]]:
    """The teacher's part of a step alone, through distillation's own code on the same batches:
    the live forward and the cache read alternate batch by batch. Returns (live, cached) seconds."""
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
                       extras={"bf16": False})
    m.attach(state)
    cache, collate = m._cache, Collator(pad_id_of(student, tok))
    live, cached = [], []
    for idx in batch_order([len(f["input_ids"]) for f in feats], 32, seed=42, epoch=0)[:batches]:
        b = collate([feats[i] for i in idx])
        state.batch, state.batch_index = b, idx
        for store, c in ((live, None), (cached, cache)):
            m._cache = c
            t = time.perf_counter()
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    os.environ.setdefault("COMPACTBERT_CACHE", str(CACHE))
    from compactbert.methods.teacher_cache import cache_root

    before = set((cache_root() / "teacher-outputs").glob("*/meta.json"))
    t0 = time.monotonic()
    for recipe in args.recipes:  # builds the cache if no run built it yet (untimed)
        run_child(args, recipe, "true")
    built = set((cache_root() / "teacher-outputs").glob("*/meta.json")) - before
    build_note = (f"built by this script in {time.monotonic() - t0:.0f} s (with {len(args.recipes)} short runs)"
                  if built else "already there (built by an earlier run)")
    sizes = {p.parent.name: sum(f.stat().st_size for f in p.parent.iterdir()) for p in
             (cache_root() / "teacher-outputs").glob("*/meta.json")}
    for folder in (cache_root() / "teacher-outputs").glob("*/meta.json"):  # in the page cache, as after a long
        with open(folder.parent / "data.f16", "rb") as f:                  # run's first epoch
            while f.read(1 << 24):
                pass
    torch_threads(args.threads)
    c_live, c_cached = component(args, args.component_batches)
    per: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for recipe in args.recipes:
            for mode in ("false", "true"):
                t = statistics.median(run_child(args, recipe, mode))
                per.setdefault((recipe, mode), []).append(t)
                print(f"round {r + 1}: {recipe} cache_teacher={mode}: {t:.3f} s/step", flush=True)
    lines = [
        "## Distillation with the teacher's outputs cached (`benchmarks/teacher_cache_speed.py`)",
        "",
        f"Measured {datetime.now():%Y-%m-%d %H:%M} on {cpu_name()}, {args.threads} thread(s) per run, "
        f"one run at a time, on a machine otherwise idle (training paused).",
        f"Command: `{shown_command('benchmarks/teacher_cache_speed.py', sys.argv[1:] if argv is None else argv)}`.",
        f"Each run: the recipe's first stage on {args.task} with teacher `{args.teacher}`, {args.warmup} untimed then "
        f"{args.steps} timed optimizer steps (batch 32; quantizers compiled, as `compile: auto` does for full-length "
        f"runs), in a fresh process; {args.rounds} interleaved rounds "
        "(live, cached, live, cached, ...), the cache file read once before them (a full-length run reads "
        "every example each epoch, so after its first epoch the file is in the page cache). Cells: median over rounds of each run's median step time "
        f"[min-max over rounds]; speed-up: median of the per-round live/cached ratios. Hours: "
        f"{FULL_STEPS[args.task]:,} steps (18 epochs) at that rate.",
        "",
        "| recipe (first stage) | teacher live, s/step | teacher cached, s/step | speed-up | 18 epochs live | 18 epochs cached |",
        "|---|---|---|---|---|---|",
    ]
    for recipe in args.recipes:
        live, cached = per[(recipe, "false")], per[(recipe, "true")]
        ratio = statistics.median(a / b for a, b in zip(live, cached))
        ml, mc = statistics.median(live), statistics.median(cached)
        hours = FULL_STEPS[args.task] / 3600
        lines.append(f"| {recipe} | {ml:.3f} [{min(live):.3f}-{max(live):.3f}] | {mc:.3f} [{min(cached):.3f}-"
                     f"{max(cached):.3f}] | **{ratio:.2f}x** | {ml * hours:.1f} h | {mc * hours:.1f} h |")
    lines += ["", f"The teacher's part alone ({len(c_live)} batches of epoch 0, in one process, the live forward and the "
              "cache read alternating batch by batch, through distillation's `_teacher_outputs`): live "
              f"{statistics.median(c_live) * 1000:.0f} ms [{min(c_live) * 1000:.0f}-{max(c_live) * 1000:.0f}], cached "
              f"{statistics.median(c_cached) * 1000:.1f} ms [{min(c_cached) * 1000:.1f}-{max(c_cached) * 1000:.1f}] per "
              "batch (median [min-max])."]
    size_txt = ", ".join(f"{v / 2**30:.2f} GiB" for v in sizes.values())
    lines += ["", f"The cache (float16, in `$COMPACTBERT_CACHE`): {size_txt}; {build_note}. Every run with the same "
              "teacher and training data reuses it (both stages of a two-stage recipe, the other recipes, resumed runs)."]
    publish("\n".join(lines), args.results or None, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
