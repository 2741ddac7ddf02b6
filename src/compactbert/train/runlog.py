"""What a training run logs: ``metrics.jsonl`` (one JSON line per evaluation), TensorBoard (optional)
and the progress bar. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt_io

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def loggable(extras: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable entries of ``state.extras`` (settings such as ``bf16`` left out)."""
    out = {}
    for k, v in extras.items():
        if k == "bf16":
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


class RunLog:
    """``metrics.jsonl`` and TensorBoard of one run.

    Args:
        run_dir: the run directory.
        is_main: only the main process writes.
        tensorboard: also write TensorBoard logs.
        resumed_step: the checkpoint's step when resuming (records after it are dropped), else None
            (a fresh log).
    """

    def __init__(self, run_dir: Path, is_main: bool, tensorboard: bool, resumed_step: int | None):
        self.path, self.is_main = run_dir / METRICS_FILE, is_main
        self.history: list[dict[str, Any]] = []
        if resumed_step is not None:  # keep what happened up to the checkpoint
            self.history = [r for r in read_metrics(run_dir) if r.get("step", math.inf) <= resumed_step]
        self.writer = None
        if is_main:
            ckpt_io.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resumed_step)

    @property
    def last_metrics(self) -> dict[str, float] | None:
        return self.history[-1]["metrics"] if self.history else None

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def evaluation(self, record: dict[str, Any], bar: Any, total_steps: int) -> None:
        """Keep ``record``; the main process appends it to metrics.jsonl and prints a line above ``bar``."""
        self.history.append(record)
        if not self.is_main:
            return
        append_jsonl(self.path, record)
        metrics = record["metrics"]
        bar.write(
            f"step {record['step']}/{total_steps}  epoch {record['epoch']:.2f}  loss {record['loss']:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"eval/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, enabled: bool, name: str):
    """The run's tqdm bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, desc=f"train {name}", unit="step", dynamic_ncols=True,
        file=sys.stderr,
    )
