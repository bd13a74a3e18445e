"""Shared helpers for CLI commands: one-line errors and a console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from cmedl.errors import CmedlError

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


def handle_errors(fn: F) -> F:
    """Turn a :class:`CmedlError` into ``error: <one line>`` on stderr and exit status 1.

    Commands are thin: they parse arguments and call one typed function; any user error
    raised below surfaces here as one line and a non-zero exit. An ``OSError`` that escaped the
    library (the commands that write turn theirs into InputError: :mod:`cmedl.io.outputs`) is
    printed the same way, ``error: <file>: <reason>``, instead of a traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CmedlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(code=1) from None
        except OSError as exc:  # a file-system failure that no library layer named (disk full, permission)
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]
