"""Writing a cohort without touching the folder it goes to until it is complete.

:func:`generate_cohort <cmedl.data.phantom.cohort.generate_cohort>` writes every file into a staging
folder beside ``out`` (same parent, so moves are renames on one file system):

1. :func:`check_destination` refuses, before any work, what the new cohort could not replace
   safely: a file where a folder is needed, a folder where a file goes, an existing file or
   manifest without ``overwrite``.
2. :func:`staging_folder` yields the staging folder and removes it whatever happens, so a failed
   or interrupted run leaves ``out`` exactly as it was.
3. :func:`commit` moves the finished files in: a new ``out`` is one rename of the whole folder; into
   an existing ``out`` file by file (the manifest last), each replaced file first set aside and put
   back if a move fails. Only files of the same name are replaced; nothing else in ``out`` is
   deleted.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cmedl.errors import InputError

MANIFEST = "manifest.json"


def check_destination(out: Path, files: Sequence[str], overwrite: bool) -> None:
    """Refuse an ``out`` the cohort's ``files`` (paths relative to ``out``) cannot be moved into:
    InputError naming the offending path; nothing is changed."""
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise InputError(f"is not a folder, so the cohort folder {out} cannot be made in it", above)
    if (out / MANIFEST).exists() and not overwrite:
        raise InputError("already holds a manifest.json; choose another folder or pass overwrite", out)
    for rel in files:
        dest = out / rel
        for parent in reversed(dest.relative_to(out).parents[:-1]):
            if (out / parent).exists() and not (out / parent).is_dir():
                raise InputError("is not a folder but the cohort writes files into it (nothing was changed)",
                                 out / parent)
        if dest.is_dir():
            raise InputError("is a folder where the cohort writes a file; move it away (nothing was changed)",
                             dest)
        if (dest.exists() or dest.is_symlink()) and not overwrite:
            raise InputError("already exists; choose another folder or pass overwrite to replace it", dest)


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A new empty folder beside ``out`` (``.<name>.partial-<random>``), removed on exit."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
        stage.mkdir()
    except OSError as exc:
        raise InputError(f"cannot create a folder here ({exc.strerror})", out.parent) from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit(stage: Path, out: Path, files: Sequence[str]) -> None:
    """Move ``files`` (relative paths, the manifest last) from ``stage`` into ``out``.

    A missing ``out`` becomes ``stage`` by one rename. Otherwise each existing file of the same name
    is set aside in ``stage`` (deleted with it afterwards); if any move fails, every move is undone
    and the old files are put back, then the error is raised (an OSError as InputError).
    """
    if not out.exists():
        try:
            os.rename(stage, out)
            return
        except OSError:
            pass  # created meanwhile (or a rename across devices): move file by file
    aside = stage / ".replaced"
    placed: list[str] = []
    set_aside: list[str] = []
    try:
        for rel in files:
            dest = out / rel
            if dest.is_dir() and not dest.is_symlink():
                raise InputError("is a folder where the cohort writes a file (nothing was changed)", dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() or dest.is_symlink():
                (aside / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, aside / rel)
                set_aside.append(rel)
            os.replace(stage / rel, dest)
            placed.append(rel)
    except BaseException as exc:
        _undo(stage, out, aside, placed, set_aside)
        if isinstance(exc, OSError):
            raise InputError(
                f"cannot move the new cohort into place ({exc.strerror}); the old files were kept", out
            ) from None
        raise


def _undo(stage: Path, out: Path, aside: Path, placed: list[str], set_aside: list[str]) -> None:
    """Take the placed files out of ``out`` and put the set-aside old files back (best effort)."""
    for rel in reversed(placed):
        try:
            os.replace(out / rel, stage / rel)
        except OSError:
            pass
    for rel in reversed(set_aside):
        try:
            os.replace(aside / rel, out / rel)
        except OSError:
            pass
