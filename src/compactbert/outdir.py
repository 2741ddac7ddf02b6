"""Output folders that never destroy what a user owns.

A command that writes a folder (``export``, ``report``) decides first, writing nothing
(:func:`check_output`):

* the folder may not be, hold, or lie inside a folder the command reads (the model being exported,
  a run's ``model/``): not even with ``--overwrite``;
* an existing folder that is not empty is replaced only if it holds nothing but this command's own
  earlier output (a packed directory re-exported, a report rewritten), or with ``--overwrite``,
  which replaces the folder as a whole (everything in it is deleted).

Then it writes into a staging folder next to the target and renames it into place
(:func:`staged_output`), as checkpoints do: a failure half-way leaves the old folder as it was.

Example::

    check_output(out, own=is_packed_output, sources=[model_dir], overwrite=False, command="export")
    with staged_output(out) as tmp:
        write_everything_into(tmp)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import UserError, short_repr
from .fileio import user_path

__all__ = ["check_output", "check_not_source", "staged_output", "only_names", "STAGING_MARK"]

STAGING_MARK = ".partial-"


def _resolved(p: str | os.PathLike) -> Path:
    return user_path(p).resolve()


def check_not_source(out: str | os.PathLike, sources: Iterable[str | os.PathLike], option: str = "--out") -> None:
    """Refuse ``out`` when it is one of ``sources``, lies inside one, or holds one.

    Raises:
        UserError: naming the source the output would overwrite.
    """
    o = _resolved(out)
    for src in sources:
        s = _resolved(src)
        if o == s or s in o.parents or o in s.parents:
            how = "is" if o == s else ("lies inside" if s in o.parents else "holds")
            raise UserError(f"{option} {str(out)!r} {how} {str(src)!r}, which this command reads; choose another folder "
                            "(not even --overwrite writes into a command's own input)")


def only_names(names: Iterable[str]) -> Callable[[Path], bool]:
    """An ``own`` test for :func:`check_output`: the folder holds nothing but ``names``."""
    allowed = frozenset(names)
    return lambda folder: all(p.name in allowed for p in folder.iterdir())


def check_output(out: str | os.PathLike, own: Callable[[Path], bool], sources: Iterable[str | os.PathLike] = (),
                 overwrite: bool = False, command: str = "this command", option: str = "--out") -> None:
    """Decide whether ``command`` may write the folder ``out``, writing nothing.

    Args:
        out: the output folder.
        own: true for a folder holding only ``command``'s own earlier output (replaced freely).
        sources: folders the command reads; ``out`` may not be, hold or lie inside any of them.
        overwrite: replace any other non-empty folder as a whole.

    Raises:
        UserError: ``out`` is a file or inside one, a source, or a non-empty folder that is not
            ``command``'s own output (without ``overwrite``); one line saying which.
    """
    p = user_path(out)
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "is a file" if q == p else f"is inside {str(q)!r}, which is a file"
                raise UserError(f"{option} {str(out)!r} {where}; expected a folder")
            break
    check_not_source(out, sources, option)
    if not p.is_dir():
        return
    try:
        entries = sorted(x.name for x in p.iterdir())
        mine = not entries or own(p)
    except OSError as e:
        raise UserError(f"cannot read {option} {str(out)!r}: {e.strerror or e}") from None
    if not mine and not overwrite:
        raise UserError(
            f"{option} {str(out)!r} is not empty and not an earlier {command} output (it holds {short_repr(entries, 120)}); "
            f"choose a new folder, or pass --overwrite to replace the folder and everything in it"
        )


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh staging folder next to ``out``; on success it replaces ``out`` (renamed into place,
    the old folder deleted after), on failure it is deleted and ``out`` is left as it was."""
    target = user_path(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}", dir=target.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the result private
    except OSError as e:
        raise UserError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    try:
        yield tmp
        _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _swap(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first (put back if the
    rename fails) and deleted after."""
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
