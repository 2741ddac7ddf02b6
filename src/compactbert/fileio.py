"""Small file helpers shared by the data cache and the packed format."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import UserError


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Put ``data`` at ``path`` atomically: readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same folder, which is fsynced, given permission bits
    ``mode`` (mkstemp makes it private) and renamed over ``path``; on any failure it is removed.
    The folder entry itself is not fsynced.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_user_text(path: str | os.PathLike, what: str, max_bytes: int, hint: str = "") -> str:
    """The text of a small UTF-8 file the user named (a leading BOM is dropped).

    ``what`` names the file in messages (``"recipe file"``); ``hint`` (what a valid file is) is
    appended to the "does not exist" and "is larger than" messages.

    Raises:
        UserError: the file is missing, unreadable, larger than ``max_bytes`` or not UTF-8; the
            message names the file (and, for bad bytes, the line).
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    if not p.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist{tail}")
    try:
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise UserError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise UserError(f"{what} {str(path)!r} is larger than {max_bytes // 1024} KiB{tail}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the {what} as UTF-8"
        ) from None


def read_user_json(path: str | os.PathLike, what: str, max_bytes: int) -> object:
    """The parsed JSON of a file the user handed us (a run's ``run.json``, a ``bench.json``, ...),
    read only up to ``max_bytes``.

    Raises:
        UserError: the file is missing, unreadable, larger than ``max_bytes``, not UTF-8, not JSON
            or nested too deeply; one line naming the file.
    """
    import json

    text = read_user_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {str(path)!r} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise UserError(f"{what} {str(path)!r} is nested too deeply to be one of ours") from None


def user_path(text: str | os.PathLike) -> Path:
    """``Path(text)`` with a leading ``~`` expanded; unchanged when that user (or home) is unknown."""
    p = Path(text)
    try:
        return p.expanduser()
    except (RuntimeError, KeyError):  # "~nouser/x": left as is, so it is reported as missing
        return p


def path_exists(path: Path) -> bool:
    """``path.exists()``, but False instead of an exception for names the OS refuses (too long)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output folder that is a file, or lies below one, before anything is written.

    Raises:
        UserError: ``path`` (or a folder it would be created in) exists and is not a directory.
    """
    _check_parents(Path(path).expanduser(), str(path), option, "a folder")


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output file path that is a folder, or lies below a file, before anything is written.

    Raises:
        UserError: ``path`` is an existing directory, or a folder above it is a file.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{option} {str(path)!r} is a folder; expected a file path")
    _check_parents(p.parent, str(path), option, "a file path")


def _check_parents(p: Path, shown: str, option: str, expected: str) -> None:
    """UserError when the nearest existing one of ``p`` and its parents is not a directory."""
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "is a file" if str(q) == shown else f"is inside {str(q)!r}, which is a file"
                raise UserError(f"{option} {shown!r} {where}; expected {expected}")
            return
