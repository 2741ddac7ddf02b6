"""XTC at the recipes' full schedules (issue 14): run or continue them, then publish where they are.

For one task (``--task stsb`` or ``sst2``) and a teacher fine-tuned on it, each recipe of
``--recipes`` (default: ``xtc-ternary``, ``xtc-binary``, ``xtc-layer-reduction-binary``) is a
``compactbert compress`` run at the recipe's own schedule (18 epochs per stage), evaluated and
checkpointed once per epoch, in ``runs/xtc-TASK-RECIPE``. ``--jobs N`` runs N recipes side by side
(the cores shared out among them; ``--threads`` to say); a run that exists is continued with
``--resume`` (bit for bit), so a schedule of many hours is carried across sessions. On a CPU the
runs read the teacher's outputs from distillation's cache (``cache_teacher: auto``; in ``runs/cache`` unless ``COMPACTBERT_CACHE`` says
otherwise), computed once for all recipes and sessions: the same teacher and data, the same cache. The device is whatever accelerate picks (a GPU when
there is one): the same command runs the long SST-2 schedules on a GPU machine.

The table (``--table-only`` reads the runs without training): per recipe, the epochs done, the
last dev metric of the training-time model (the per-epoch evaluation, FP32 for models with
activation quantizers), the packed model's metric through compactbert's runtime once the run is
done, the difference to the teacher, bytes on disk and the run's own wall time. The learning curve
(dev metric vs epoch, one line per recipe, stage after stage) goes to ``benchmarks/xtc_full_TASK.png``
with ``--marker RECIPE=VALUE[@EPOCH]`` points (e.g. the 2-epoch numbers published before; at
epoch 2 unless ``@EPOCH`` says where, e.g. ``@19`` for a 1 + 1-epoch run of a two-stage recipe
whose first stage has 18).

Usage::

    python benchmarks/xtc_full.py --task stsb --teacher runs/stsb-teacher --jobs 2
    python benchmarks/xtc_full.py --task stsb --teacher runs/stsb-teacher --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
RECIPES = ["xtc-ternary", "xtc-binary", "xtc-layer-reduction-binary"]
# the main dev metric of each task, and how it is shown (x100)
METRIC = {"stsb": "spearman", "sst2": "accuracy"}
# the largest file a lent machine hands back is 16 MiB: a bigger bundle leaves the packed weights behind
MAX_BUNDLE_BYTES = 15 * 2**20
# a finished run is exported and its packed model evaluated only with this much time left before --deadline
PACK_SECONDS = 90.0
# targets the issue holds the recipes to: points below the teacher
# distillation's teacher-output cache (cache_teacher: auto on a CPU): kept with the runs, which it outlives
CACHE = REPO / "runs" / "cache"
TARGETS = {"xtc-ternary": 0.5, "xtc-binary": 1.0, "xtc-layer-reduction-binary": 2.0}
# the 3-layer binary recipe is also held to: at least this many times smaller than the teacher,
# within this many points (XTC's 50x claim)
SMALL_TARGET = (50.0, 1.5)
# each finished run is also packed with its vocabulary pruned to the training split's tokens, a dev
# token never seen in training read as [UNK] or as the nearest kept token (export --unseen-tokens),
# and its position embeddings cut to the recipe's max_seq_length (all it was trained and evaluated at)
VOCAB_UNSEEN = ("unk", "nearest")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(METRIC))
    p.add_argument("--teacher", required=True, help="run directory of the teacher fine-tuned on --task")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--prefix", default=None, help="run directories are PREFIX + recipe (default runs/xtc-TASK-)")
    p.add_argument("--jobs", type=int, default=2, help="recipes trained side by side")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per run (default: the CPU's cores shared out among --jobs, at least 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra --set for every run (the schedule stays the recipe's unless you change it)")
    p.add_argument("--set-for", nargs=2, action="append", default=[], metavar=("RECIPE", "KEY=VALUE"),
                   help="a --set for one recipe only (e.g. aq-bert stages.0.epochs=9: its 3+3 epochs to 18 in all)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="stop the runs still training this many seconds after the start (they stay resumable from "
                        "their last epoch checkpoint); for a machine lent for a fixed time")
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="after training, one RUN.tar.gz per run in DIR with everything but the FP32 model and the "
                        "checkpoints (curves, logs, eval, size, the packed model): to carry runs off a lent machine")
    p.add_argument("--no-table", action="store_true", help="train (and bundle) only; make the table elsewhere")
    p.add_argument("--extra", action="append", default=[], metavar="LABEL=RUN_DIR[@EPOCHS]",
                   help="a further row (a variant run, e.g. binary=runs/x with float embeddings), below the recipes; "
                        "@EPOCHS draws its curve that many epochs later (a run of a recipe's second stage alone: @18)")
    p.add_argument("--compare-prefix", default=None, metavar="PREFIX",
                   help="the same recipes under another prefix (e.g. runs trained on another machine): dashed curves")
    p.add_argument("--compare-label", default="CPU", help="how the --compare-prefix runs are named in the plot")
    p.add_argument("--table-only", action="store_true", help="read the runs, train nothing")
    p.add_argument("--marker", action="append", default=[], metavar="RECIPE=VALUE[@EPOCH]",
                   help="a point on the curve (e.g. an earlier 2-epoch result) at epoch 2, or at EPOCH "
                        "(stage after stage: 19 is the second stage's first epoch after an 18-epoch first stage)")
    p.add_argument("--note", default="", help="a paragraph appended to the section (@FILE: read from FILE)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="markdown file whose section is replaced ('' to print only)")
    p.add_argument("--section", default=None, metavar="NAME",
                   help="RESULTS section and PNG name (default xtc_full_TASK): runs published apart from that table")
    return p.parse_args(argv)


def run_dir(args, recipe: str) -> Path:
    prefix = args.prefix or str(REPO / "runs" / f"xtc-{args.task}-")
    return Path(prefix + recipe)


def train(args, recipe: str, deadline: float | None = None) -> int:
    """Start or continue one run (``--resume`` when its directory exists); its log next to it.

    ``deadline`` (a ``time.monotonic()`` value): the run is stopped then if still training (SIGTERM,
    then SIGKILL); what it wrote stays (metrics to its last evaluation, checkpoints to its last epoch).
    """
    out = run_dir(args, recipe)
    info = read_json(out / "run.json")
    if info.get("status") == "done":
        if not (out / "packed_eval.json").is_file():  # it ended while no scheduler waited for it
            pack(args, out)
        return 0
    steps = epoch_steps(args)  # (later stages evaluate at each epoch's end by default: the same)
    cmd = [sys.executable, "-m", "compactbert", "compress", recipe, "--teacher", args.teacher, "--task", args.task,
           "--data", args.data, "--out", str(out), "--no-progress", "--set", f"stages.0.eval_every={steps}"]
    for o in args.overrides + [kv for r, kv in args.set_for if r == recipe]:
        cmd += ["--set", o]
    if out.exists():
        cmd.append("--resume")
    threads = str(run_threads(args))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env.setdefault("COMPACTBERT_CACHE", str(CACHE))
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}  # {datetime.now().isoformat(timespec='seconds')} on {where()}, "
                f"{precision(recipe, args.overrides + [kv for r, kv in args.set_for if r == recipe])}, {threads} thread(s)\n")
        f.flush()
        code = wait_until(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO), deadline)
        if code is None:
            f.write(f"\n# stopped at the deadline ({args.deadline:g} s), {datetime.now().isoformat(timespec='seconds')}\n")
            return 0
    if code == 0 and read_json(out / "run.json").get("status") == "done":
        if deadline is None or deadline - time.monotonic() > PACK_SECONDS:
            pack(args, out)
        if args.bundle:  # now, so that it is there even if the machine is taken back before the others end
            bundle(args, recipe)
    return code


def run_threads(args) -> int:
    """Threads for each run: ``--threads``, else the cores this process may use shared out among
    ``--jobs`` (so one job alone gets them all, two on two cores get one each)."""
    if args.threads is not None:
        return max(1, args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, args.jobs))


def pack(args, out: Path) -> None:
    """A finished run's packed directory (``compactbert export``), its bytes and its dev metric
    through compactbert's runtime (``packed_eval.json``), made where the run trained: the FP32
    model it is made from stays there when the run is carried off a lent machine."""
    from compactbert.bench.result import model_bytes

    if not (out / "packed").is_dir():
        subprocess.call([sys.executable, "-m", "compactbert", "export", str(out), "--out", str(out / "packed")], cwd=REPO)
    if (out / "packed").is_dir():
        (out / "packed_bytes.json").write_text(json.dumps({"bytes": model_bytes(out / "packed")[0]}) + "\n")
        packed_metric(args, out, METRIC[args.task])
        vocab_pruned(args, out, METRIC[args.task])


def vocab_pruned(args, out: Path, metric: str) -> dict[str, dict]:
    """For each way of reading unseen tokens (``VOCAB_UNSEEN``): the finished run packed with its
    vocabulary pruned to the training split's tokens and its position embeddings to the recipe's
    ``max_seq_length`` (``packed-vocab-U/``, made once), its dev metric through the runtime and its
    bytes: ``{U: {"metric", "bytes", "kept", "original", "positions"}}``. The dev split's own tokens
    are not kept, so the metric says what the pruning costs on unseen text."""
    from compactbert.bench.result import model_bytes

    if read_json(out / "run.json").get("status") != "done" or not (out / "model").is_dir():
        return {}
    found, positions = {}, recipe_max_length(out)
    for unseen in VOCAB_UNSEEN:
        packed, cached = out / f"packed-vocab-{unseen}", out / f"packed-vocab-{unseen}_eval.json"
        if not packed.is_dir():
            subprocess.call([sys.executable, "-m", "compactbert", "export", str(out), "--out", str(packed),
                             "--prune-vocab", "--vocab-from", "train", "--unseen-tokens", unseen,
                             *(["--max-positions", str(positions)] if positions else []),
                             "--task", args.task, "--data", args.data], cwd=REPO)
        if not packed.is_dir():
            continue
        if not cached.is_file():
            subprocess.call([sys.executable, "-m", "compactbert", "eval", str(packed), "--task", args.task,
                             "--data", args.data, "--out", str(cached)], cwd=REPO)
        m = read_json(cached).get("metrics") or {}
        vocab = read_json(packed / "config.json").get("vocab") or {}
        found[unseen] = {"metric": 100 * float(m[metric]) if metric in m else None, "bytes": model_bytes(packed)[0],
                         "kept": vocab.get("kept"), "original": vocab.get("original_size"), "positions": positions}
    return found


def recipe_max_length(out: Path) -> int | None:
    """The run's ``max_seq_length`` (its recipe.yaml): the positions it was trained and evaluated at."""
    from compactbert.errors import UserError
    from compactbert.recipe import load_plain_yaml

    try:
        recipe, _ = load_plain_yaml((out / "recipe.yaml").read_text(), str(out / "recipe.yaml"))
        n = recipe.get("max_seq_length")
        return int(n) if n else None
    except (OSError, ValueError, TypeError, AttributeError, UserError):
        return None


def wait_until(proc: subprocess.Popen, deadline: float | None) -> int | None:
    """``proc``'s exit code, or None when it was still running at ``deadline`` (``time.monotonic()``)
    and was stopped then: SIGTERM, and SIGKILL 20 s later."""
    try:
        return proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return None


def where() -> str:
    """The machine a run trains on, for its log and the table: the GPU when torch sees one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return cpu_name()


def load_recipe(recipe: str, overrides: list[str] | None = None):
    """A recipe by file path or by the name of one in ``recipes/``, with ``--set`` overrides."""
    from compactbert.recipe import Recipe

    path = Path(recipe) if Path(recipe).is_file() else REPO / "recipes" / f"{recipe}.yaml"
    return Recipe.load(path, overrides=overrides)


def precision(recipe: str, overrides: list[str]) -> str:
    """How ``compactbert compress`` trains the recipe on this machine: ``"bf16"`` (autocast) where
    the recipe's ``bf16`` is on and the hardware has native bf16, else ``"FP32"``."""
    from compactbert.train.loop import bf16_supported

    return "bf16" if load_recipe(recipe, overrides).bf16 and bf16_supported() else "FP32"


def bundle(args, recipe: str) -> Path | None:
    """``BUNDLE/RUN.tar.gz``: the run without its FP32 model and checkpoints, plus its log."""
    import tarfile

    out = run_dir(args, recipe)
    if not out.is_dir():
        return None
    dest = Path(args.bundle) / f"{out.name}.tar.gz"
    dest.parent.mkdir(parents=True, exist_ok=True)

    def write(with_weights: bool) -> None:
        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            parts = Path(info.name).parts
            if (len(parts) > 1 and parts[1] == "model") or any(p.startswith("checkpoint") for p in parts):
                return None
            if info.name.endswith(".safetensors"):  # FP32 stage models stay; the packed weights come when they fit
                return info if with_weights and len(parts) > 1 and parts[1].startswith("packed") else None
            return info

        with tarfile.open(dest, "w:gz") as tar:
            tar.add(out, arcname=out.name, filter=keep)
            log = out.parent / f"{out.name}.log"
            if log.is_file():
                tar.add(log, arcname=log.name)

    write(with_weights=True)
    if dest.stat().st_size > MAX_BUNDLE_BYTES:  # what a lent machine hands back per file: keep the numbers
        write(with_weights=False)
    return dest


def epoch_steps(args) -> int:
    """Optimizer steps per epoch of the task's training set at the recipes' batch size (32)."""
    from compactbert.data.sources import load_examples
    from compactbert.data.tasks import get_task

    n = len(load_examples(get_task(args.task), "train", args.data))
    return -(-n // 32)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def curve(out: Path, metric: str) -> tuple[list[tuple[float, float]], list[float], float]:
    """``([(cumulative epoch, dev metric x100)], [epochs per stage so far], wall seconds)`` of a run."""
    points, stage_epochs, wall = [], [], 0.0
    offset = 0.0
    for stage in sorted((out / "stages").glob("*"), key=lambda p: int(p.name.split("-")[0])):
        records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()] \
            if (stage / "metrics.jsonl").is_file() else []
        records = [r for r in records if "metrics" in r and metric in r["metrics"]]
        for r in records:
            points.append((offset + float(r["epoch"]), 100 * float(r["metrics"][metric])))
        if records:
            wall += float(records[-1].get("elapsed") or 0.0)
            stage_epochs.append(float(records[-1]["epoch"]))
            offset += float(records[-1]["epoch"])
    return points, stage_epochs, wall


def packed_metric(args, out: Path, metric: str) -> float | None:
    """The packed model's dev metric through compactbert's runtime (evaluated once, cached)."""
    packed, cached = out / "packed", out / "packed_eval.json"
    if not packed.is_dir() or read_json(out / "run.json").get("status") != "done":
        return None
    if not cached.is_file():
        subprocess.call([sys.executable, "-m", "compactbert", "eval", str(packed), "--task", args.task,
                         "--data", args.data, "--out", str(cached)], cwd=REPO)
    m = read_json(cached).get("metrics") or {}
    return 100 * float(m[metric]) if metric in m else None


def recipe_epochs(out: Path, recipe_name: str) -> list[float]:
    from compactbert.errors import UserError
    from compactbert.recipe import load_plain_yaml

    try:
        f = out / "recipe.yaml" if (out / "recipe.yaml").is_file() else REPO / "recipes" / f"{recipe_name}.yaml"
        recipe, _ = load_plain_yaml(f.read_text(), str(f))
        return [float(s.get("epochs") or 0) for s in recipe.get("stages", [])]
    except (OSError, ValueError, AttributeError, UserError):
        return []


def run_status(out: Path) -> str:
    """done / in progress (resumable) / stopped (its checkpoints stayed where it trained) / not started."""
    status = read_json(out / "run.json").get("status")
    if status != "running":
        return status or "not started"
    if any((out / "stages").glob("*/checkpoint*")):
        return "in progress (resumable)"
    if not any(p.stat().st_size for p in (out / "stages").glob("*/metrics.jsonl")):
        return "started; no epoch finished yet (nothing to resume from)"
    return "stopped: checkpoints stayed on the machine it trained on"


def row(args, label: str, out: Path, metric: str) -> dict:
    from compactbert.bench.result import model_bytes

    points, done, wall = curve(out, metric)
    size = read_json(out / "size.json")
    packed_bytes = read_json(out / "packed_bytes.json").get("bytes") or (
        model_bytes(out / "packed")[0] if (out / "packed" / "manifest.json").is_file() else None)
    return {
        "recipe": label, "out": out, "points": points, "done": done, "planned": recipe_epochs(out, label), "wall": wall,
        "where": ran_on(out), "status": run_status(out), "last": points[-1][1] if points else None,
        "best": max((p[1] for p in points), default=None), "packed": packed_metric(args, out, metric),
        # the packed directory's bytes; else what `compactbert size` predicted for it (marked ~)
        "bytes": packed_bytes or size.get("predicted_files_bytes"), "predicted": not packed_bytes,
        "vocab": vocab_pruned(args, out, metric) if packed_bytes else {},
    }


def rows(args) -> tuple[list[dict], float, int]:
    from compactbert.bench.result import model_bytes

    metric = METRIC[args.task]
    teacher_bytes = model_bytes(Path(args.teacher) / "model")[0]
    teacher = 100 * float((read_json(Path(args.teacher) / "eval.json").get("metrics") or {}).get(metric, "nan"))
    out_rows = [row(args, recipe, run_dir(args, recipe), metric) for recipe in args.recipes]
    for spec in args.extra:
        label, path, offset = parse_extra(spec)
        r = row(args, label, Path(path), metric)
        out_rows.append({**r, "extra": True, "points": [(x + offset, y) for x, y in r["points"]]})
    return out_rows, teacher, teacher_bytes


def parse_extra(spec: str) -> tuple[str, str, float]:
    """``LABEL=RUN_DIR[@EPOCHS]`` -> ``(label, run_dir, epochs its curve is shifted by)``."""
    label, _, path = spec.partition("=")
    head, sep, tail = path.rpartition("@")
    if sep and tail.isdigit():
        return label, head, float(tail)
    return label, path, 0.0


def compare_rows(args) -> list[dict]:
    """The same recipes under ``--compare-prefix`` (e.g. the CPU runs beside GPU ones): curves only."""
    if not args.compare_prefix:
        return []
    metric = METRIC[args.task]
    return [row(args, r, Path(args.compare_prefix + r), metric) for r in args.recipes]


def ran_on(out: Path) -> str:
    """Where a run trained: the machines its log names (one per start or continuation), with the
    precision and threads it trained with there where the log says (``CPU (bf16, 2 thread(s))``;
    older logs: ``CPU (bf16)``, ``CPU``)."""
    log = out.parent / f"{out.name}.log"
    seen: list[str] = []
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("$ "):
                host = line.split("  # ", 1)[-1].partition(" on ")[2].strip()
                tags = []  # from the right: "N thread(s)" (newer logs), then the precision
                for known in (lambda t: t.endswith(" thread(s)") and t.split()[0].isdigit(),
                              lambda t: t in ("bf16", "FP32")):
                    head, sep, tag = host.rpartition(", ")
                    if sep and known(tag):
                        host = head
                        tags.insert(0, tag)
                host = host if "CUDA" in host else "CPU"  # where() names a GPU with its CUDA version
                host += f" ({', '.join(tags)})" if tags else ""
                if host not in seen:
                    seen.append(host)
    return ", ".join(seen) or "-"


def plot(args, table_rows: list[dict], teacher: float, path: Path, compare: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colour = {}
    for i, r in enumerate(table_rows):
        colour[r["recipe"]] = f"C{i % 10}"
        if r["points"]:
            xs, ys = zip(*r["points"])
            style = dict(linestyle=":", marker="x", markersize=3) if r.get("extra") else dict(marker=".")
            ax.plot(xs, ys, color=colour[r["recipe"]], label=r["recipe"], **style)
    for r in compare or []:
        if r["points"]:
            xs, ys = zip(*r["points"])
            ax.plot(xs, ys, color=colour.get(r["recipe"], "k"), linestyle="--", linewidth=1, alpha=0.7,
                    label=f"{r['recipe']} ({args.compare_label})")
    for m in args.marker:
        recipe, value, epoch = parse_marker(m)
        ax.scatter([epoch], [value], marker="*", s=120, zorder=5, color=colour.get(recipe, "k"),
                   label=f"{recipe}: earlier short run" + ("" if epoch == 2.0 else f" (at epoch {epoch:g})"))
    ax.axhline(teacher, color="grey", linestyle="--", linewidth=1, label=f"teacher {teacher:.2f}")
    ax.set_xlabel("epoch (stage after stage)")
    ax.set_ylabel(f"dev {METRIC[args.task]} x100")
    ax.set_title(f"XTC recipes on {args.task.upper()} at their own schedules")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_marker(spec: str) -> tuple[str, float, float]:
    """``RECIPE=VALUE[@EPOCH]`` -> ``(recipe, value, epoch)``; the epoch is 2 unless given."""
    recipe, _, rest = spec.partition("=")
    value, _, epoch = rest.partition("@")
    try:
        return recipe, float(value), float(epoch) if epoch else 2.0
    except ValueError:
        raise SystemExit(f"--marker {spec!r}: expected RECIPE=VALUE or RECIPE=VALUE@EPOCH (numbers)") from None


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def section_name(args) -> str:
    """The RESULTS section (and learning-curve PNG) a table goes to."""
    return args.section or f"xtc_full_{args.task}"


def section(args, table_rows: list[dict], teacher: float, teacher_bytes: int, png: Path, command: str,
            compare: list[dict] | None = None) -> str:
    metric = METRIC[args.task]
    lines = [
        f"## XTC at the recipes' full schedules on {args.task.upper()} (`benchmarks/xtc_full.py`, issue 14)"
        + (f": `{args.section}`" if args.section else ""),
        "",
        f"Updated {datetime.now():%Y-%m-%d %H:%M}; CPU here: {cpu_name()}. Each run trains in its own process "
        "(on a CPU with the threads 'ran on' says; one each where no count is given), several side by side on one machine: 'ran on' names it, and 'wall h' is the run's own "
        f"training time there while sharing it. Command: `{command}`.",
        f"Teacher `{args.teacher}`: dev {metric} {teacher:.2f}. Dev {metric} x100 of the training-time model "
        "after each epoch (FP32); 'packed' is the packed directory through compactbert's runtime, once a run is done. "
        "Target: points below the teacher the issue holds each recipe to. "
        f"x smaller: the teacher's FP32 model files ({teacher_bytes:,} bytes) over the packed directory's "
        "(~: no packed directory came back; the size `compactbert size` predicts for it).",
        "",
        "| recipe | epochs done / planned | last dev | best dev | packed | Δ vs teacher (last) | target | packed bytes | x smaller | wall h | ran on | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table_rows:
        done = " + ".join(f"{e:g}" for e in r["done"]) or "0"
        planned = " + ".join(f"{e:g}" for e in r["planned"]) or "?"
        delta = None if r["last"] is None else r["last"] - teacher
        target = TARGETS.get(r["recipe"])
        approx = "~" if r.get("predicted") else ""
        size = f"{approx}{int(r['bytes']):,} | {approx}{teacher_bytes / r['bytes']:.1f}x" if r["bytes"] else "- | -"
        lines.append(
            f"| {r['recipe']} | {done} / {planned} | {fmt(r['last'])} | {fmt(r['best'])} | {fmt(r['packed'])} | "
            f"{fmt(delta, '+.2f')} | {'-' if target is None else f'-{target:g}'} | "
            f"{size} | "
            f"{r['wall'] / 3600:.2f} | {r['where']} | {r['status']} |")
    lines += vocab_table(table_rows, teacher, teacher_bytes)
    lines += ["", f"![learning curves]({png.name})", ""]
    for r in table_rows:
        if r["points"]:
            lines.append(f"- `{r['recipe']}` per epoch: " + " -> ".join(f"{y:.1f}" for _, y in r["points"]))
    for r in compare or []:
        if r["points"]:
            lines.append(f"- `{r['recipe']}` ({args.compare_label}, `{r['out']}`, {r['status']}, {r['where']}) per epoch: "
                         + " -> ".join(f"{y:.1f}" for _, y in r["points"]))
    if args.note:
        lines += ["", Path(args.note[1:]).read_text().strip() if args.note.startswith("@") else args.note]
    return "\n".join(lines) + "\n"


def vocab_table(table_rows: list[dict], teacher: float, teacher_bytes: int) -> list[str]:
    """The finished runs packed with the vocabulary pruned to the training split's tokens."""
    done = [r for r in table_rows if r.get("vocab")]
    if not done:
        return []
    x, pts = SMALL_TARGET
    lines = ["", "Vocabulary pruned to the tokens of the training split and position embeddings to the recipe's "
             "max_seq_length (`compactbert export RUN --prune-vocab --vocab-from train --unseen-tokens unk|nearest "
             "--max-positions N`): a dev token training never saw reads as [UNK] or as the kept token with the closest "
             "embedding, so the dev metric measures what the pruning costs; inputs are cut at N tokens, as in training. "
             f"Target: at least {x:g}x smaller within {pts:g} points (XTC's claim for layer reduction + 1 bit).", "",
             "| recipe | tokens kept | positions | unseen tokens read as | packed | Δ vs teacher | bytes | x smaller |",
             "|---|---|---|---|---|---|---|---|"]
    for r in done:
        for unseen, v in r["vocab"].items():
            delta = None if v["metric"] is None else v["metric"] - teacher
            kept = "-" if v["kept"] is None else f"{v['kept']:,} / {v['original']:,}"
            lines.append(f"| {r['recipe']} | {kept} | {v.get('positions') or 'all'} | {'[UNK]' if unseen == 'unk' else unseen} | {fmt(v['metric'])} | "
                         f"{fmt(delta, '+.2f')} | {v['bytes']:,} | {teacher_bytes / v['bytes']:.1f}x |")
    return lines


def shown_command(script: str, argv: list[str]) -> str:
    """The command line as run, without the ``--note`` text (it is printed under the table)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--note":
            skip = True
            continue
        if a.startswith("--note="):
            continue
        out.append(a)
    return shlex.join(["python", script, *out])


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.table_only:
        deadline = None if args.deadline is None else time.monotonic() + args.deadline
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            codes = list(pool.map(lambda r: train(args, r, deadline), args.recipes))
        if any(codes):
            print(f"some runs failed (exit codes {codes}); see runs/*.log", file=sys.stderr)
    if args.bundle:  # the runs that ended bundled themselves (train); the ones stopped or failed now
        for recipe in args.recipes:
            out = run_dir(args, recipe)
            if run_status(out) != "done" or not (Path(args.bundle) / f"{out.name}.tar.gz").is_file():
                print("bundled:", bundle(args, recipe))
    if args.no_table:
        return 0
    table_rows, teacher, teacher_bytes = rows(args)
    compare = compare_rows(args)
    name = section_name(args)
    png = REPO / "benchmarks" / f"{name}.png"
    plot(args, table_rows, teacher, png, compare)
    command = shown_command("benchmarks/xtc_full.py", argv if argv is not None else sys.argv[1:])
    body = section(args, table_rows, teacher, teacher_bytes, png, command, compare)
    print(body)
    publish(body, args.results, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
