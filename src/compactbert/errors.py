"""User-facing errors.

Anything the user can fix (a bad path, an unknown task, a malformed recipe or data file) raises
:class:`UserError`. The CLI prints its message as one line on stderr and exits with status 2, with
no traceback. Bugs raise anything else and keep their traceback.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 2000


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one printable line: line breaks and other control characters escaped, cut to ``limit``.

    Line breaks include what :meth:`str.splitlines` splits on (``\\x1c``-``\\x1e``, ``\\x85``, U+2028,
    U+2029), so a message quoting user data can never spill onto a second line.

    Example:
        >>> one_line("bad value 'a\\nb'")
        "bad value 'a\\\\nb'"
    """
    out = []
    for ch in text[: limit + 1]:  # escapes only lengthen it: the rest would be cut anyway
        if ch == "\t" or (ch.isprintable() and ch not in "\u2028\u2029"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def positive_int(value: object, name: str) -> int:
    """``value`` if it is a positive integer (not a bool), else a :class:`UserError` naming ``name``.

    Example:
        >>> positive_int(0, "batch_size")
        Traceback (most recent call last):
        ...
        compactbert.errors.UserError: batch_size=0 is not valid; valid: a positive integer
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={short_repr(value)} is not valid; valid: a positive integer")
    return value


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting user data in a message.

    Example:
        >>> short_repr("x" * 100, 12)
        "'xxxxxxxx..."
    """
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]  # never build the repr of a huge string
    if isinstance(value, (list, dict, tuple, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a deeply nested value
        return f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(Exception):
    """A problem with user input. The message names the bad value, where it was, and what is valid.

    ``str()`` of the error is always one line (see :func:`one_line`), whatever user data it quotes.
    """

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


def did_you_mean(value: str, valid: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid choice, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
