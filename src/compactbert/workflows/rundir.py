"""The output directory of a run: checked before anything is written, created, resumed, finished.

``finetune`` and ``compress`` share this life cycle: :func:`check_output_dir` (decide, write
nothing), :func:`check_resume_settings` (a resumed run keeps its settings), :func:`start_run`
(``run.json`` + ``config.yaml``, on the main process) and :func:`finish_run` (``status: done``).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs import (
    CONFIG_FILE, EVAL_FILE, MODEL_DIR, RECIPE_FILE, RUN, RUN_FILE, SIZE_FILE, nearest_existing, open_path, read_run,
)

# What a run writes; --overwrite deletes these (and only these) from the output directory.
RUN_ARTIFACTS = (
    RUN_FILE, CONFIG_FILE, RECIPE_FILE, "metrics.jsonl", EVAL_FILE, MODEL_DIR, "checkpoint", "tensorboard",
    "stages", SIZE_FILE,
)


def now() -> str:
    """The local time as run.json records it (ISO 8601, seconds)."""
    return _dt.datetime.now().isoformat(timespec="seconds")


def check_output_dir(out: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                     sources: Iterable[str | os.PathLike] = ()) -> str:
    """Decide what to do with an output directory, without writing anything.

    ``sources`` are the local folders the run reads (the model, the teacher): ``out`` may not be,
    hold or lie inside one of them, whatever ``resume`` and ``overwrite`` say.

    Returns:
        ``"fresh"`` (missing or empty), ``"resume"`` (a run, and ``resume``) or ``"overwrite"``.

    Raises:
        UserError: ``out`` is a file or a source; it exists and is not a run (needs ``overwrite``);
            it is a run and neither ``resume`` nor ``overwrite`` was given; it cannot be created.
    """
    from ..fileio import path_exists, user_path
    from ..outdir import check_not_source

    check_not_source(out, [s for s in sources if path_exists(user_path(s))])
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {str(out)!r} is a file; expected a directory for the run")
    if out.is_dir():
        if open_path(out).kind == RUN:
            if overwrite:
                return "overwrite"
            if resume:
                return "resume"
            raise UserError(
                f"output directory {str(out)!r} already holds a compactbert run; pass --resume to continue it "
                f"or --overwrite to start it again"
            )
        try:
            empty = not any(out.iterdir())
        except OSError as e:
            raise UserError(f"cannot read output directory {str(out)!r}: {e.strerror or e}") from None
        if empty:
            return "fresh"
        if overwrite:
            return "overwrite"
        raise UserError(
            f"output directory {str(out)!r} exists and is not a compactbert run (no {RUN_FILE}); "
            f"choose a new directory or pass --overwrite"
        )
    base = nearest_existing(out)
    if not base.is_dir():
        raise UserError(f"cannot create output directory {str(out)!r}: {str(base)!r} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"cannot create output directory {str(out)!r}: {str(base)!r} is not writable")
    return "fresh"


def same_path(a: Any, b: Any) -> bool:
    """Two spellings of one existing file or folder (``../data`` and ``/work/data``)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_resume_settings(out: Path, config: dict[str, Any], keys: Iterable[str]) -> None:
    """A resumed run must use the settings it started with (for ``keys`` its config.yaml records).

    Raises:
        UserError: naming every setting that differs, what it was and what it is now.
    """
    saved = read_run(out)["config"]
    diff = [k for k in keys if k in saved and saved[k] != config.get(k) and not same_path(saved[k], config.get(k))]
    if diff:
        was = ", ".join(f"{k}={saved[k]!r}" for k in diff)
        now_ = ", ".join(f"{k}={config.get(k)!r}" for k in diff)
        raise UserError(
            f"cannot --resume {str(out)!r} with different settings: it was started with {was}, got {now_}; "
            f"pass the same settings, or --overwrite to start again"
        )


def init_run_dir(out: str | os.PathLike, mode: str) -> Path:
    """Create ``out`` (or clear a previous run's files from it for ``"overwrite"``) and check it is writable.

    Only compactbert's own files (:data:`RUN_ARTIFACTS`) are deleted; anything else stays.
    """
    from ..train.checkpoint import fsync_dir

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output directory {str(out)!r} is not writable: {e.strerror or e}") from None
    if mode == "overwrite":
        for name in RUN_ARTIFACTS:
            for p in [out / name, *out.glob(f"{name}.tmp-*"), *out.glob(f"{name}.old-*")]:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        fsync_dir(out)
    return out


def write_run_files(out: Path, info: dict[str, Any], config: dict[str, Any] | None) -> None:
    """Write ``run.json`` (``info``) and, unless ``config`` is None, ``config.yaml``."""
    import yaml

    from ..train.checkpoint import atomic_write_json, atomic_write_text

    if config is not None:
        atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(out / RUN_FILE, info)


def start_run(out: Path, mode: str, info: dict[str, Any], config: dict[str, Any], state, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Create (or reopen, for ``mode == "resume"``) a run directory on the main process.

    A new run gets ``run.json`` (``info``), ``config.yaml`` (``config``) and the ``extra`` text files;
    a resumed run keeps its files and is marked running again. Returns the run's ``info``.
    """
    if state.is_main_process:
        init_run_dir(out, mode)
        if mode == "resume":
            info = {**read_run(out), "status": "running"}
            info.pop("config", None)
            write_run_files(out, info, None)
        else:
            write_run_files(out, info, config)
            from ..train.checkpoint import atomic_write_text

            for name, text in (extra or {}).items():
                atomic_write_text(out / name, text)
    state.wait_for_everyone()
    return info


def finish_run(out: Path, info: dict[str, Any], **fields: Any) -> None:
    """Mark a run done in its ``run.json``, with ``fields`` (steps, stage results, ...) and the time."""
    info.update(status="done", **fields, finished=now())
    write_run_files(out, info, None)
