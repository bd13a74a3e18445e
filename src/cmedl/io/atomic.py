"""Atomic file output: the one write path of every file cmedl writes.

:func:`atomic_path` yields a path inside a hidden temporary folder ``.cmedl-tmp-<pid>-<host>-<random>/``
next to the target; the file keeps its final name there (so writers that pick the format by suffix
still work) but matches none of the target folder's globs (``*.nii.gz`` lists no temporaries). When
the block succeeds the file gets the normal mode (``0o666 & ~umask``), is flushed to disk (``fsync``)
and renamed into place with ``os.replace``; otherwise the temporary folder is removed. So a crash, a
kill or a full disk never leaves a partial file under the final name, and a previous good file is
only replaced by a complete new one. Temporary folders of dead processes on this host (a killed
write) are removed by the next write into the same folder, as are leftovers of the earlier
``.<name>.XXXXXXXX.tmp*`` scheme for the file being written.

Any ``OSError`` while writing (``ENOSPC``, ``EDQUOT``, ``EACCES``, ...) becomes one
:class:`~cmedl.errors.InputError` line naming the final path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cmedl.errors import CmedlError, InputError

TMP_PREFIX = ".cmedl-tmp-"
#: this host, so that a temporary folder on a shared file system is only judged by its own host
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TMP_RE = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)-([0-9a-f]{{8}})-")
#: leftovers of the pre-folder scheme (``.<name>.XXXXXXXX.tmp<suffix>``) older than this are removed
_LEGACY_AGE_S = 3600.0
_FULL = {errno.ENOSPC, errno.EDQUOT}


def write_error(exc: BaseException) -> str:
    """The one-line reason of a failed write, with a disk-full hint where that is the likely cause."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"could not write ({reason}{': disk full?' if exc.errno in _FULL else ''})"
    return f"could not write ({exc})"


def normal_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` gives a new file (read without changing the umask)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)  # not thread-safe, hence only where /proc is missing
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> None:
    """Remove temporary folders of dead processes of this host in ``folder`` and, when ``name`` is
    given, old leftovers of the earlier temporary-file scheme for the target ``name``."""
    legacy = (
        re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}\.tmp(\.[A-Za-z.]+)?$") if name else None
    )
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        m = _TMP_RE.match(entry.name)
        pid = int(m.group(1)) if m and m.group(2) == _HOST else None
        with contextlib.suppress(OSError):
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif legacy and legacy.match(entry.name) and entry.is_file(follow_symlinks=False) and (
                time.time() - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_AGE_S
            ):
                os.unlink(entry.path)


def _fsync(path: Path) -> None:
    """Flush a file to disk: a full disk or an I/O error on delayed write-back shows up here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Best effort: make the rename durable (not every OS or file system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for ``path``; move it onto ``path`` only if the block succeeds.

    Raises:
        InputError: naming ``path`` when the folder cannot be created or the file cannot be written
            (an ``OSError`` inside the block or while moving it into place). An error that names
            the temporary file (a nested writer) is re-raised naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{_HOST}-", dir=path.parent))
    except OSError as exc:
        raise InputError(write_error(exc), path) from None
    tmp = tmp_dir / path.name
    try:
        try:
            yield tmp
            os.chmod(tmp, normal_mode())
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        except OSError as exc:
            raise InputError(write_error(exc), path) from None
        except CmedlError as exc:
            if exc.path is not None and exc.path.parent == tmp_dir:  # a nested writer named our temporary
                raise InputError(str(exc)[len(str(exc.path)) + 2:], path) from None
            raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
