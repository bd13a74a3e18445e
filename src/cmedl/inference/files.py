"""What ``cmedl segment`` and ``cmedl translate`` share: input and output checks done once before any
work, output names, the per-case loop (one case's failure is reported and the next case goes on),
atomic per-case writes, progress, and errors that name the input being processed.

Many inputs: each finished case is written atomically (all its files appear together, the mask
last), a failing case is reported as one line naming its input (``on_failure``; default:
``error: <line>`` on stderr) and the loop goes on with the next; after the loop a
:class:`CasesFailed` carries the written paths and the failures. A write that fails for a reason that
every later write would share (disk full, quota, read-only file system) stops the loop.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cmedl.errors import CmedlError, InputError
from cmedl.io.atomic import atomic_path
from cmedl.io.outputs import check_output_folder, is_fatal_write_error, writing
from cmedl.io.volume import IMAGE_SUFFIXES, Volume, write_volume

#: the CLI flag (and keyword ``allow_modality_mismatch``) that skips the modality plausibility check
ALLOW_MISMATCH_HINT = "; pass --allow-modality-mismatch to process it anyway"


class CasesFailed(InputError):
    """Some inputs of a multi-input command failed (each was reported when it failed).

    Attributes:
        written: output paths of the cases that succeeded (masks for segment), in input order.
        failures: ``[(input path, error), ...]`` in input order.
        not_processed: inputs left out after a write failure that every later write would share.
    """

    def __init__(self, written: list[Path], failures: list[tuple[Path, CmedlError]], total: int,
                 out_dir: Path, not_processed: Sequence[Path] = ()) -> None:
        self.written, self.failures, self.not_processed = written, failures, list(not_processed)
        if total == 1 and len(failures) == 1:  # one input: its own one-line error
            super().__init__(str(failures[0][1]))
            self.path = failures[0][1].path
            return
        names = ", ".join(str(p) for p, _ in failures[:5]) + (", ..." if len(failures) > 5 else "")
        stopped = (f"; stopped after a failed write, {len(self.not_processed)} input(s) not processed"
                   if self.not_processed else "")
        super().__init__(f"{len(failures)} of {total} inputs failed ({names}; each reported above){stopped}; "
                         f"{len(written)} case(s) written to {out_dir}")


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


def check_inputs(
    inputs: Sequence[str | Path], out_dir: str | Path, suffixes: Sequence[str] = (".nii.gz",)
) -> list[tuple[Path, str]]:
    """Validate inputs and outputs before any work: every input exists, case names are unique (they name
    the outputs), and :func:`cmedl.io.outputs.check_output_folder` accepts ``out_dir`` with the planned
    ``<out_dir>/<case><suffix>`` files (none overwrites an input or another output; the folder can be
    written). Returns ``[(path, case), ...]``."""
    if not inputs:
        raise InputError("no input volumes given")
    out_dir = Path(out_dir)
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
    planned = [out_dir / f"{name}{suffix}" for _, name in cases for suffix in suffixes]
    check_output_folder(out_dir, inputs=[p for p, _ in cases], planned=planned)
    return cases


def progress_bar(items: list[Any], desc: str, enabled: bool) -> Any:
    """A per-volume progress bar (tqdm; hidden when not ``enabled`` or not on a terminal)."""
    return tqdm(items, desc=desc, unit="volume", disable=None if enabled else True)


@contextlib.contextmanager
def errors_naming(path: Path, device: torch.device) -> Iterator[None]:
    """Re-raise user errors of the block that name no file as naming input ``path``; out-of-memory and
    unreadable inputs as one-line errors."""
    try:
        yield
    except CmedlError as exc:
        raise (exc if exc.path is not None else InputError(str(exc), path)) from None
    except torch.OutOfMemoryError:
        raise InputError(f"out of memory on {device}; lower --batch-size", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path) from None


def write_case(outputs: Sequence[tuple[Volume, Path]]) -> list[Path]:
    """Write one case's volumes all-or-nothing: each to a temporary file first, then all renamed into
    place (the first, e.g. the mask, last). A failed write (disk full, ...) leaves none of them and raises
    a one-line :class:`InputError` naming the file."""
    with contextlib.ExitStack() as stack:
        for volume, target in outputs:
            with writing(target):
                tmp = stack.enter_context(atomic_path(target))
                write_volume(volume, tmp)
        target = outputs[0][1]
        stack_exit = stack.pop_all()
    with writing(target):
        stack_exit.close()  # the renames, last entered first
    return [t for _, t in outputs]


def report_failure(exc: CmedlError) -> None:
    """Default per-case report: ``error: <line>`` on stderr, above any progress bar."""
    tqdm.write(f"error: {exc}", file=sys.stderr)


def run_cases(
    cases: list[tuple[Path, str]],
    work: Callable[[Path, str], list[tuple[Volume, Path]]],
    out_dir: Path,
    device: torch.device,
    *,
    desc: str,
    progress: bool,
    on_failure: Callable[[CmedlError], None] | None = None,
) -> list[Path]:
    """For each input: ``work(path, case)`` -> the volumes to write (first: the returned output), written
    with :func:`write_case`. Failures are reported and skipped (see the module docstring).

    Returns:
        The first output of every case, in input order.

    Raises:
        CasesFailed: after the loop, when any case failed.
    """
    report = on_failure or report_failure
    written: list[Path] = []
    failures: list[tuple[Path, CmedlError]] = []
    not_processed: list[Path] = []
    for k, (path, name) in enumerate(progress_bar(cases, desc, progress)):
        try:
            with errors_naming(path, device):
                outputs = work(path, name)
            written.append(write_case(outputs)[0])
            del outputs
        except CmedlError as exc:
            failures.append((path, exc))
            if len(cases) > 1:
                report(exc)
            if is_fatal_write_error(exc):
                not_processed = [p for p, _ in cases[k + 1:]]
                break
    if failures:
        raise CasesFailed(written, failures, len(cases), out_dir, not_processed)
    return written


__all__ = [
    "ALLOW_MISMATCH_HINT", "CasesFailed", "case_name", "check_batch_size", "check_inputs", "errors_naming",
    "progress_bar", "report_failure", "run_cases", "write_case",
]
