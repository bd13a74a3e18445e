"""What ``cmedl segment`` and ``cmedl translate`` share: input and argument checks done once before any
work, output names, progress and errors that name the input being processed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cmedl.errors import CmedlError, InputError
from cmedl.io.volume import IMAGE_SUFFIXES


def case_name(path: str | Path) -> str:
    """Case name of an input: the file name without its image suffix (``ct.nii.gz`` -> ``ct``),
    or the folder name of a DICOM series."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return name
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_batch_size(batch_size: int | None) -> None:
    """None (the default) or a positive number of slices/windows per pass."""
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")


def check_inputs(inputs: Sequence[str | Path], out_dir: str | Path) -> list[tuple[Path, str]]:
    """Validate inputs and output folder before any work: every input exists, case names are
    unique (they name the outputs), ``out_dir`` is not a file. Returns ``[(path, case), ...]``."""
    if not inputs:
        raise InputError("no input volumes given")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output path exists and is not a folder", out_dir)
    cases: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError("no such file or folder", path)
        name = case_name(path)
        if name in seen:
            raise InputError(
                f"gives the same case name '{name}' as {seen[name]}; outputs would overwrite each other", path)
        seen[name] = path
        cases.append((path, name))
    return cases


def progress_bar(items: list[Any], desc: str, enabled: bool) -> Any:
    """A per-volume progress bar (tqdm; hidden when not ``enabled`` or not on a terminal)."""
    return tqdm(items, desc=desc, unit="volume", disable=None if enabled else True)


@contextlib.contextmanager
def errors_naming(path: Path, device: torch.device) -> Iterator[None]:
    """Re-raise user errors of the block that name no file as naming input ``path``; out-of-memory as a
    one-line error."""
    try:
        yield
    except CmedlError as exc:
        raise (exc if exc.path is not None else InputError(str(exc), path)) from None
    except torch.OutOfMemoryError:
        raise InputError(f"out of memory on {device}; lower --batch-size", path) from None


__all__ = ["case_name", "check_batch_size", "check_inputs", "errors_naming", "progress_bar"]
