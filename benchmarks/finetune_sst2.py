"""Fine-tune MiniLM-L6 on the full SST-2 and record dev accuracy, wall time and training speed.

What it measures, all in one invocation on the same machine:

1. **Training steps/s, FP32 vs bf16 autocast.** Two short timing windows of the real training loop
   (:func:`compactbert.train.loop.train`) on the *same* first batches of SST-2 (batch 32, dynamic
   padding, length-grouped), one in FP32 and one with bf16 autocast. The first ``--warmup-steps``
   steps of each window are not timed (one-off kernel selection). The FP32 window is short by
   design; it only gives the speed ratio.
2. **The full fine-tuning run** in bf16 autocast (``compactbert.finetune``): dev accuracy of the best
   checkpoint, wall time, and average steps/s over the whole run (this one includes the periodic
   evaluations and checkpoints).

The result replaces the ``finetune_sst2`` section of ``benchmarks/RESULTS.md`` (other sections
are kept).

Usage (from the repository root)::

    .venv/bin/python benchmarks/finetune_sst2.py                    # the benchmark (hours on 2 busy cores)
    .venv/bin/python benchmarks/finetune_sst2.py --max-steps 20 --timing-steps 5 --warmup-steps 2
                                                                    # smoke run: prints, writes no RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "finetune_sst2"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GLUE root or SST-2 folder (default: %(default)s)")
    p.add_argument("--model", default="minilm-l6", help="model to fine-tune (default: %(default)s)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-sst2"), help="run directory (replaced)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4, help="peak LR; small models like a higher one than BERT-base")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=500, help="evaluate the dev set every N steps")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-steps", type=int, default=None, help="cap the full run (smoke test); implies no RESULTS.md")
    p.add_argument("--timing-steps", type=int, default=40, help="timed steps per precision in the speed windows")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before each speed window")
    p.add_argument("--from-run", default=None,
                   help="take the fine-tuning result from this finished run directory (made by `compactbert finetune` "
                        "with the same settings) instead of training again; only the speed windows run")
    p.add_argument("--results", default=None, help=f"markdown file to update (default: {RESULTS} unless --max-steps)")
    return p.parse_args(argv)


def speed_window(model_name: str, features, precision: Literal["fp32", "bf16"], args) -> float:
    """Training steps/s of the real loop over the first steps of epoch 0, in one precision."""
    import torch
    from pydantic import PrivateAttr

    from compactbert.api import load_for_task, quiet_transformers
    from compactbert.methods.base import Method, TrainState
    from compactbert.train.loop import TrainConfig, train

    class StepClock(Method):
        """Records the wall-clock time at the start of every optimizer step."""

        type: Literal["step_clock"] = "step_clock"
        _times: list = PrivateAttr(default_factory=list)

        def _on_step(self, state: TrainState) -> None:
            self._times.append(time.perf_counter())

    torch.manual_seed(args.seed)
    model, tokenizer = load_for_task(model_name, "sst2")
    clock = StepClock()
    steps = args.warmup_steps + args.timing_steps + 1  # +1: the clock reads at the start of each step
    cfg = TrainConfig(
        max_steps=steps, lr=args.lr, batch_size=args.batch_size, bf16=(precision == "bf16"), seed=args.seed,
        max_seq_length=args.max_seq_length, progress=False, save_every=10**9, warmup_ratio=0.0,
    )
    with tempfile.TemporaryDirectory() as run_dir, quiet_transformers():
        train(model, tokenizer, "sst2", features, None, cfg, run_dir, methods=[clock])
    t = clock._times
    return args.timing_steps / (t[args.warmup_steps + args.timing_steps] - t[args.warmup_steps])


def cpu_name() -> str:
    """The machine for a RESULTS header: the CPU model with the flags that decide its kernels
    (AVX-512, VNNI, AMX, native bf16, or their absence) and, where training ran on CUDA (accelerate
    picks the GPU when torch sees one), the GPU."""
    import torch

    from compactbert.bench.machine import cpu_info, flags_summary

    info = cpu_info()
    line = f"{info['cpu'] or platform.processor() or 'unknown CPU'} ({flags_summary(info)})"
    if torch.cuda.is_available():
        line += f", training on {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return line


def write_section(path: Path, body: str, section: str = SECTION) -> None:
    """Replace (or append) the ``section`` block of a results markdown file, keeping the others."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def publish(body: str, results: str | None, section: str = SECTION) -> None:
    """Print a results section and, when ``results`` names a file, write it there."""
    print(body)
    if results:
        write_section(Path(results), body, section)
        print(f"wrote section {section!r} of {results}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import compactbert
    from compactbert.api import load_for_task
    from compactbert.data.batching import encode
    from compactbert.data.sources import load_examples
    from compactbert.train.loop import bf16_supported

    if not bf16_supported():
        print("warning: this CPU has no native bf16; the bf16 numbers will be slow", file=sys.stderr)
    t0 = time.perf_counter()
    train_examples = load_examples("sst2", "train", args.data)
    _, tokenizer = load_for_task(args.model, "sst2")
    features = encode(train_examples, tokenizer, args.max_seq_length)
    print(f"SST-2 train: {len(features)} examples, encoded in {time.perf_counter() - t0:.1f}s", flush=True)

    speed = {}
    for precision in ("fp32", "bf16"):
        speed[precision] = speed_window(args.model, features, precision, args)
        print(f"{precision}: {speed[precision]:.2f} training steps/s (batch {args.batch_size})", flush=True)

    t0 = time.perf_counter()
    if args.from_run:
        run = Path(args.from_run)
        cfg = compactbert.api.read_run(run)["config"]
        for key in ("epochs", "lr", "batch_size", "max_seq_length", "seed"):
            if cfg.get(key) != getattr(args, key):
                raise SystemExit(f"--from-run {run}: its {key} is {cfg.get(key)!r}, not {getattr(args, key)!r}")
        wall = None
        args.eval_every = cfg.get("eval_every") or args.eval_every
    else:
        run = compactbert.finetune(
            args.model, "sst2", data=args.data, out=args.out, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, max_seq_length=args.max_seq_length, seed=args.seed, bf16=True,
            eval_every=args.eval_every, max_steps=args.max_steps, overwrite=True, warmup_ratio=0.06,
        )
        wall = time.perf_counter() - t0
    result = json.loads((run / "eval.json").read_text())
    info = json.loads((run / "run.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_seconds = records[-1]["elapsed"]
    acc = result["metrics"]["accuracy"]
    wall = wall if wall is not None else train_seconds
    print(f"dev accuracy {acc:.4f} (best step {info['best_step']} of {info['steps']}), wall time {wall / 60:.1f} min")

    smoke = args.max_steps is not None
    body = f"""## Fine-tuning MiniLM-L6 on SST-2 (`benchmarks/finetune_sst2.py`)

{"**Smoke run (--max-steps): not a benchmark.**" if smoke else ""}
Measured {datetime.now().strftime("%Y-%m-%d")} on {cpu_name()}, {torch.get_num_threads()} threads,
torch {torch.__version__}, compactbert {compactbert.__version__}.
Command: `python benchmarks/finetune_sst2.py {" ".join(sys.argv[1:] if argv is None else argv)}`

| | value |
|---|---|
| model | {args.model} (all-MiniLM-L6-v2, 6 layers, hidden 384) |
| data | SST-2 train {len(features):,} sentences, dev {result["n"]} |
| settings | {args.epochs:g} epochs, batch {args.batch_size}, lr {args.lr:g} (warm-up 6%, linear decay), AdamW, bf16 autocast, dynamic padding |
| steps | {info["steps"]:,} |
| **dev accuracy** (best checkpoint, step {info["best_step"]:,}) | **{acc * 100:.2f}%** |
| wall time of the fine-tuning run | {wall / 60:.1f} min ({train_seconds / 60:.1f} min in the training loop){" (from the run's metrics.jsonl: --from-run)" if args.from_run else ""} |
| average speed of the whole run (incl. evaluations every {args.eval_every} steps and checkpoints) | {info["steps"] / train_seconds:.2f} steps/s |
| training steps/s, FP32 (timing window of {args.timing_steps} steps) | {speed["fp32"]:.2f} |
| training steps/s, bf16 autocast (same window, same batches) | {speed["bf16"]:.2f} |
| bf16 speed-up over FP32 (same run) | **{speed["bf16"] / speed["fp32"]:.2f}x** |

The FP32 and bf16 numbers come from two short windows of the same training loop over the same first
{args.warmup_steps + args.timing_steps} batches, after {args.warmup_steps} untimed warm-up steps each; the FP32
window is kept short on purpose (the full run is bf16 only).
"""
    publish(body, args.results or (None if smoke else str(RESULTS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
