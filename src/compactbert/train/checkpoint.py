"""Atomic checkpoints: save, find, load and resume.

A checkpoint is a folder ``run_dir/checkpoint/`` holding

=====================  =============================================================================
``model.safetensors``  the student's weights (and buffers) at that step
``optimizer.pt``       optimizer and LR-scheduler state (``torch.save``; read back only with
                       ``torch.load(weights_only=True)``, which unpickles nothing but tensors and
                       plain containers)
``rng_state.pt``       python / numpy / torch RNG states, one entry per process
``train_state.json``   step, epoch, position in the epoch's batch list, best metric so far, ...
=====================  =============================================================================

Nothing ever writes into ``checkpoint/`` itself. A new checkpoint is written into a fresh
``checkpoint.tmp-XXXX/`` (every file fsynced), and only then swapped in with two renames::

    checkpoint/ -> checkpoint.old-XXXX/      (the previous, complete one is kept ...)
    checkpoint.tmp-XXXX/ -> checkpoint/      (... until the new, complete one has its name)

so whatever is called ``checkpoint/`` is always complete. A process killed between the two renames
leaves ``checkpoint.old-XXXX/`` (complete) and no ``checkpoint/``: :func:`recover_dir` renames it
back. ``*.tmp-*`` folders are unfinished writes and are deleted. The best model folder
(``run_dir/model/``) is swapped in the same way by :func:`replace_dir`.

Example:
    >>> with staged_dir(run_dir / "model") as tmp:   # doctest: +SKIP
    ...     save_model(model, tokenizer, tmp)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..fileio import replace_file

CHECKPOINT_DIR = "checkpoint"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
STATE_FILE = "train_state.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)


# --------------------------------------------------------------------------------------------------
# Atomic files and folders


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename or a new file) to disk. A no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same folder, which is fsynced and renamed over ``path``.
    """
    path = Path(path)
    replace_file(path, data, 0o666 & ~_umask())  # ordinary output files, as the umask allows
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_dir(staged: Path, target: Path) -> Path:
    """Give the complete folder ``staged`` the name ``target``, replacing an existing ``target``.

    The previous ``target`` is renamed aside (``target.old-XXXX``) first and deleted only after the
    new one has its name, so a crash at any point leaves a complete folder to recover.
    """
    staged, target = Path(staged), Path(target)
    fsync_dir(staged)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
        os.rmdir(old)  # only the unique name is wanted
        os.rename(target, old)
    os.rename(staged, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh ``target.tmp-XXXX/`` folder to fill; on success it replaces ``target``.

    On an exception the temporary folder is deleted and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        umask = _umask()
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)  # writers such as mkstemp create private files
                _fsync_file(f)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates a private folder
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(target: str | os.PathLike) -> Path | None:
    """Clean up after an interrupted :func:`replace_dir` / :func:`staged_dir` of ``target``.

    Deletes unfinished ``target.tmp-*`` folders; if ``target`` is missing but a complete
    ``target.old-*`` exists (killed between the two renames), renames the newest one back.
    Stale ``target.old-*`` folders next to an existing ``target`` are deleted.

    Returns:
        ``target`` if it exists afterwards, else None.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return None
    for tmp in parent.glob(f"{target.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    olds = sorted(parent.glob(f"{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds:
        os.rename(olds.pop(), target)
        fsync_dir(parent)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    return target if target.exists() else None


# --------------------------------------------------------------------------------------------------
# RNG states (stored as tensors and plain containers so that weights_only loading can read them)


def get_rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) RNG states."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": (py_version, torch.tensor(py_state, dtype=torch.int64), py_gauss),
        "numpy": (np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(int(x) for x in py_state.tolist()), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class ResumeState:
    """Where a run stands; stored as ``train_state.json``.

    Attributes:
        step: optimizer steps done.
        epoch: the epoch in progress (0-based).
        batch_in_epoch: how many batches of that epoch's batch list are done.
        best_metric: best value of the task's main metric so far (None before the first eval).
        best_step: the step that reached it.
        elapsed: training seconds so far (wall time, summed over resumed sessions).
        loss_sum: sum of the (global) training losses since the last evaluation.
        loss_count: how many steps that sum covers.
        total_steps: the run's planned number of steps (checked on resume).
        world_size: number of processes that wrote the checkpoint.
        done: True once the last step has been taken.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    elapsed: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0
    total_steps: int = 0
    world_size: int = 1
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResumeState":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: ResumeState,
    rng_states: list[dict[str, Any]],
) -> Path:
    """Write ``run_dir/checkpoint/`` atomically (see the module docstring).

    Args:
        run_dir: the run directory.
        model: the unwrapped student; its whole ``state_dict`` (weights and buffers) is saved.
        optimizer: the optimizer (its ``state_dict``).
        scheduler: the LR scheduler (its ``state_dict``).
        state: step / epoch / position / best metric.
        rng_states: one :func:`get_rng_state` per process, in process order.

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_model as save_safetensors

    run_dir = Path(run_dir)
    with staged_dir(run_dir / CHECKPOINT_DIR) as tmp:
        save_safetensors(model, str(tmp / WEIGHTS_FILE))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
        torch.save(rng_states, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    return run_dir / CHECKPOINT_DIR


def find_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The run's complete checkpoint folder (recovering an interrupted swap first), or None."""
    ckpt = recover_dir(Path(run_dir) / CHECKPOINT_DIR)
    if ckpt is None:
        return None
    missing = [f for f in CHECKPOINT_FILES if not (ckpt / f).is_file()]
    if missing:  # cannot happen with our writer; refuse rather than resume from a partial folder
        raise RuntimeError(f"checkpoint {ckpt} is missing {', '.join(missing)}")
    return ckpt


def read_state(ckpt: str | os.PathLike) -> ResumeState:
    """Read ``train_state.json`` of a checkpoint folder."""
    return ResumeState.from_dict(json.loads((Path(ckpt) / STATE_FILE).read_text()))


def load_weights(ckpt: str | os.PathLike, model: torch.nn.Module) -> None:
    """Load the checkpoint's weights into ``model`` (strict: same modules as when saved)."""
    from safetensors.torch import load_model as load_safetensors

    load_safetensors(model, str(Path(ckpt) / WEIGHTS_FILE), strict=True)


def load_optimizer(ckpt: str | os.PathLike, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Restore optimizer and scheduler state (``torch.load`` with ``weights_only=True``)."""
    blob = torch.load(Path(ckpt) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])


def load_rng_states(ckpt: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-process RNG states of a checkpoint (``torch.load`` with ``weights_only=True``)."""
    return torch.load(Path(ckpt) / RNG_FILE, map_location="cpu", weights_only=True)
