"""User-facing errors.

Anything the user can fix (a bad path, an unknown task, a malformed recipe or data file) raises
:class:`UserError`. The CLI prints its message as one line on stderr and exits with status 2, with
no traceback. Bugs raise anything else and keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with user input. The message names the bad value, where it was, and what is valid."""

    exit_code = 2


def did_you_mean(value: str, valid: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid choice, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
