"""Exceptions raised for bad user input.

Every error that a user can cause (a corrupt file, a mismatched grid, an unknown ROI name)
is raised as a :class:`CmedlError` whose message is ONE line naming the file and the problem,
e.g. ``"/data/ct.nii.gz: image is 2D (shape (512, 512)); a 3D volume is required"``.
The CLI prints that line to stderr and exits with status 1 (see :mod:`cmedl.cli`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class CmedlError(Exception):
    """Base class of all user-facing errors: the message is one line."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        message = " ".join(str(message).split())  # guarantee a single line
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = None if path is None else Path(path)


class InputError(CmedlError, ValueError):
    """A file or argument given by the user cannot be used (unreadable, wrong shape, ...)."""


class GeometryError(InputError):
    """Two images that must share a voxel grid do not."""


class ConfigError(CmedlError, ValueError):
    """A configuration value is invalid."""


def did_you_mean(name: str, choices: Iterable[str], what: str = "name") -> str:
    """Build ``"unknown <what> 'x'; did you mean 'y'? (choices: a, b, c)"``."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{name}'{hint} (choices: {', '.join(choices)})"
