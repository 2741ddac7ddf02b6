"""The `compactbert` command line. It only parses arguments and calls :mod:`compactbert.api`.

User errors (:class:`compactbert.errors.UserError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import typer

from .errors import UserError

app = typer.Typer(
    name="compactbert",
    help="Make pre-trained transformer encoders small and fast for a task.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. Returns the exit status."""
    try:
        app(args=argv, standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:  # click's own usage errors already printed their message
        return e.code if isinstance(e.code, int) else 2
    except Exception as e:  # click usage errors (bad option, missing argument)
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


def _entry() -> None:  # pragma: no cover - thin wrapper for `python -m compactbert`
    sys.exit(main())
