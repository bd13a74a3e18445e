"""The one output-path check of every command that writes, and one-line errors for failed writes.

A command that writes files must never overwrite its own inputs, must fail before any work when its
output cannot be written, and must turn a write that fails half-way (disk full, permission denied,
folder removed) into a one-line :class:`~cmedl.errors.InputError` naming the path, not a traceback.
Every writing command (``segment``, ``translate``, ``evaluate``, ``compare``, ``train``, ``demo``)
does the same three things, and a new one (``export``, ``study``, ``report``, ...) must too:

1. **Before any work** (before loading a model, reading volumes or generating data), check the output:

   - a folder output (``--out`` of segment, translate, train, demo):
     ``check_output_folder(out, inputs=[...], planned=[out / "case.nii.gz", ...])``;
   - a single-file output (``--out`` of evaluate, compare):
     ``check_output_file(out, inputs=[...])``.

   ``inputs`` are every file or folder the command reads; ``planned`` are the files it will write
   inside the folder, when known (segment: ``<case>.nii.gz`` per input). Refused, each as one line
   starting with the offending path:

   - an output that is an input, or a planned file that would overwrite one (same resolved path, or
     the same file through a link: :func:`os.path.samefile`), e.g. ``cmedl segment scans/a.nii.gz
     --out scans`` (the mask would replace the CT) or ``cmedl compare a.csv b.csv --out b.csv``;
   - two planned outputs with the same path (they would overwrite each other);
   - a folder output that is an existing file, a file output (or planned file) that is an existing
     folder;
   - an output under a path component that is a file (``--out results.csv/run1``);
   - an output whose folder cannot be created or written (permission, read-only file system): the
     nearest existing folder is probed with an anonymous temporary file, so nothing is left behind.

2. **Write atomically** (:func:`cmedl.io.atomic.atomic_path`, :func:`cmedl.io.volume.write_volume`).

3. **Wrap the writes** in ``with writing(path):`` so an ``OSError`` (and the ``RuntimeError`` with which
   SimpleITK and ``torch.save`` report a failed write) becomes ``InputError("<path>: cannot write
   (No space left on device)")``.

The checks allow on purpose: an output folder that already holds files (re-running a command
replaces its own earlier outputs), and outputs inside an input folder (e.g. a DICOM series folder:
its reader skips files that are not DICOM).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cmedl.errors import CmedlError, InputError

__all__ = ["check_output_file", "check_output_folder", "is_fatal_write_error", "write_error", "writing"]

#: Errors after which writing more outputs is pointless (every later write fails the same way).
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as written
        return path.absolute()


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (resolved paths, or links to one file)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest existing ancestor (absolute)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def _check_creatable(path: Path, shown: Path) -> None:
    """``path`` (a file or folder to be written) can be created: no ancestor is a file, and its nearest
    existing folder is writable."""
    anchor = path.absolute() if path.is_dir() else _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise InputError(f"cannot be created: {anchor} is a file, not a folder", shown)
    reason = None
    if not os.access(anchor, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(anchor) else "permission denied"
    else:
        try:
            with tempfile.TemporaryFile(dir=anchor):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc)
    if reason is not None:
        where = "" if anchor == path.absolute() else f" (in {anchor})"
        raise InputError(f"cannot write here{where}: {reason}", shown)


def _check_not_inputs(outputs: Iterable[Path], inputs: Iterable[str | Path]) -> None:
    """No output is an input; no two outputs are the same path."""
    inputs = [Path(p) for p in inputs]
    seen: dict[Path, Path] = {}
    for out in outputs:
        for inp in inputs:
            if _same(out, inp):
                raise InputError(
                    "is an input of this command and would be overwritten by an output; choose another --out", out)
        key = _resolved(out)
        if key in seen:
            raise InputError(f"would be written twice (also as {seen[key]}); outputs would overwrite each other", out)
        seen[key] = out


def check_output_folder(
    folder: str | Path, *, inputs: Iterable[str | Path] = (), planned: Iterable[str | Path] = ()
) -> Path:
    """Check a folder output before any work (see the module docstring); returns it as a Path.

    Args:
        folder: the output folder (created later by the writes; nothing is created here).
        inputs: every file or folder the command reads.
        planned: the files the command will write inside ``folder`` (when known).

    Raises:
        InputError: one line starting with the offending path.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("exists and is a file; a folder is needed for the outputs", folder)
    inputs = list(inputs)
    planned = [Path(p) for p in planned]
    _check_not_inputs([folder, *planned], inputs)
    for p in planned:
        if p.is_dir():
            raise InputError("is a folder, but the command writes a file of this name", p)
    _check_creatable(folder, folder)
    return folder


def check_output_file(path: str | Path, *, inputs: Iterable[str | Path] = ()) -> Path:
    """Check a single-file output before any work (see the module docstring); returns it as a Path.

    Raises:
        InputError: one line starting with ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; a file name is needed for this output", path)
    _check_not_inputs([path], inputs)
    _check_creatable(path, path)
    return path


def write_error(exc: BaseException, path: str | Path) -> InputError:
    """The one-line error of a failed write of ``path`` (disk full, permission denied, ...)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
    else:  # SimpleITK / torch.save: the last line of a long message is the useful one
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = (lines[-1] if lines else type(exc).__name__)[:200]
    return InputError(f"cannot write ({reason})", path)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write in the block into a one-line :class:`InputError` naming ``path``.

    Catches ``OSError`` and ``RuntimeError`` (SimpleITK and ``torch.save`` report I/O failures as
    RuntimeError), so wrap only the writes, never computations. User errors pass through unchanged.
    """
    try:
        yield
    except CmedlError:
        raise
    except (OSError, RuntimeError) as exc:
        raise write_error(exc, path) from exc


def is_fatal_write_error(exc: BaseException) -> bool:
    """Whether a failed write means the others will fail too (disk full, quota, read-only)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FATAL_WRITE_ERRNOS:
            return True
        if "No space left on device" in str(exc):  # SimpleITK and torch.save report it as RuntimeError
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False
