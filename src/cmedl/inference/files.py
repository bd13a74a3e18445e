"""What ``cmedl segment`` and ``cmedl translate`` share: input and output checks done once before any
work, output names, the per-case loop (one case's failure is reported and the next case goes on),
atomic per-case writes, progress, and errors that name the input being processed.

Inputs (:func:`collect_inputs`): image files (NIfTI, NRRD, MHA), DICOM series folders, and folders of
them: a folder that holds DICOM images itself is one series (one input); any other folder stands for
the image files directly inside it plus its sub-folders that hold a DICOM series (not recursive
further), in name order. :func:`manifest_inputs` gives the cases of a manifest split instead, named by
case id (so that ``cmedl evaluate`` pairs the masks with the manifest's labels).

Reruns: with ``skip_finished``, a case whose every planned output exists is skipped (reported through
``on_skip``): outputs are written atomically, the mask last, so an existing mask means a finished case.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cmedl.data.manifest import SPLITS, Manifest
from cmedl.errors import CmedlError, InputError, did_you_mean
from cmedl.io.atomic import atomic_path
from cmedl.io.dicom import list_dicom_series
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
        skipped: first outputs of the cases skipped as finished by an earlier run.
    """

    def __init__(self, written: list[Path], failures: list[tuple[Path, CmedlError]], total: int,
                 out_dir: Path, not_processed: Sequence[Path] = (), skipped: Sequence[Path] = ()) -> None:
        self.written, self.failures, self.not_processed = written, failures, list(not_processed)
        self.skipped = list(skipped)
        if total == 1 and len(failures) == 1:  # one input: its own one-line error
            super().__init__(str(failures[0][1]))
            self.path = failures[0][1].path
            return
        names = ", ".join(str(p) for p, _ in failures[:5]) + (", ..." if len(failures) > 5 else "")
        stopped = (f"; stopped after a failed write, {len(self.not_processed)} input(s) not processed"
                   if self.not_processed else "")
        done = f", {len(self.skipped)} already done" if self.skipped else ""
        super().__init__(f"{len(failures)} of {total} inputs failed ({names}; each reported above){stopped}; "
                         f"{len(written)} case(s) written to {out_dir}{done}")


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


def _holds_dicom_images(folder: Path) -> bool:
    """Whether files directly inside ``folder`` are DICOM images (it is then one series input)."""
    try:
        return any(info.is_image for info in list_dicom_series(folder))
    except CmedlError:
        return False


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The volumes to process: files as given, DICOM series folders as given, other folders expanded to
    their image files and DICOM-series sub-folders (see the module docstring).

    Raises:
        InputError: an input does not exist, or a folder holds no volume.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError("no such file or folder", path)
        if not path.is_dir() or _holds_dicom_images(path):
            out.append(path)
            continue
        children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        found = [p for p in children if (p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
                 or (p.is_dir() and _holds_dicom_images(p))]
        if not found:
            raise InputError("holds no image volumes (NIfTI, NRRD, MHA) or DICOM series, nor sub-folders "
                             "holding one", path)
        out.extend(found)
    return out


def manifest_inputs(manifest: str | Path, split: str | None, modality: str | Sequence[str] | None = None,
                    ) -> list[tuple[Path, str]]:
    """``[(image path, case id), ...]`` of the manifest's cases of ``split`` (all splits: None) and
    ``modality`` (any: None), in manifest order.

    Raises:
        InputError: the manifest is unreadable or invalid, the split unknown, or no case selected.
    """
    man = Manifest.load(manifest)
    if split is not None and split not in SPLITS:
        raise InputError(did_you_mean(str(split), SPLITS, "split"), man.source)
    cases = man.select(split=split, modality=modality)
    if not cases:
        what = " and ".join(w for w in (f"split '{split}'" if split else "", f"modality {modality}" if modality
                                        else "") if w) or "any split"
        raise InputError(f"has no case of {what}", man.source)
    return [(man.image_path(c), c.id) for c in cases]


def check_inputs(
    inputs: Sequence[str | Path] | Sequence[tuple[Path, str]], out_dir: str | Path,
    suffixes: Sequence[str] = (".nii.gz",),
) -> list[tuple[Path, str]]:
    """Validate inputs and outputs before any work: every input exists (folders are expanded by
    :func:`collect_inputs`; ``(path, case)`` pairs are taken as they are), case names are unique (they
    name the outputs), and :func:`cmedl.io.outputs.check_output_folder` accepts ``out_dir`` with the
    planned ``<out_dir>/<case><suffix>`` files (none overwrites an input or another output; the folder
    can be written). Returns ``[(path, case), ...]``."""
    if not inputs:
        raise InputError("no input volumes given")
    if all(isinstance(item, tuple) for item in inputs):
        named = [(Path(p), str(n)) for p, n in inputs]  # type: ignore[misc]
    else:
        named = [(p, case_name(p)) for p in collect_inputs(inputs)]  # type: ignore[arg-type]
    out_dir = Path(out_dir)
    cases: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for path, name in named:
        if not path.exists():
            raise InputError("no such file or folder", path)
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


def report_skip(path: Path, outputs: Sequence[Path]) -> None:
    """Default report of a finished case skipped on a rerun: one line on stdout, above any progress bar."""
    tqdm.write(f"skipped {path}: already done ({outputs[0]} exists; --overwrite to redo)")


@dataclass
class CaseOutputs:
    """What the work of one case returns to :func:`run_cases`.

    Attributes:
        volumes: ``[(volume, path), ...]`` written together by :func:`write_case` (the first last).
        files: files the work already wrote itself (e.g. DICOM exports, each atomic); removed again if
            writing ``volumes`` fails, so the case is left with none of its files.
        first: the case's output to return (default: the first volume's path, else the first file).
    """

    volumes: list[tuple[Volume, Path]]
    files: list[Path] = field(default_factory=list)
    first: Path | None = None


def _write_outputs(outputs: list[tuple[Volume, Path]] | CaseOutputs) -> Path:
    case = outputs if isinstance(outputs, CaseOutputs) else CaseOutputs(outputs)
    try:
        written = write_case(case.volumes) if case.volumes else []
    except BaseException:
        for path in case.files:  # the case is all or nothing: drop what the work wrote
            path.unlink(missing_ok=True)
        raise
    return case.first or (written or case.files)[0]


def run_cases(
    cases: list[tuple[Path, str]],
    work: Callable[[Path, str], list[tuple[Volume, Path]] | CaseOutputs],
    out_dir: Path,
    device: torch.device,
    *,
    desc: str,
    progress: bool,
    on_failure: Callable[[CmedlError], None] | None = None,
    skip_finished: Callable[[str], Sequence[Path]] | None = None,
    on_skip: Callable[[Path, Sequence[Path]], None] | None = None,
) -> list[Path]:
    """For each input: ``work(path, case)`` -> the volumes to write (first: the returned output), written
    with :func:`write_case`, or a :class:`CaseOutputs`. Failures are reported and skipped (see the module
    docstring). With ``skip_finished`` (case -> its planned outputs), a case whose planned outputs all
    exist is not processed again; ``on_skip`` (default :func:`report_skip`) reports it.

    Returns:
        The first output of every case, skipped ones included, in input order.

    Raises:
        CasesFailed: after the loop, when any case failed.
    """
    report = on_failure or report_failure
    written: list[Path] = []
    failures: list[tuple[Path, CmedlError]] = []
    not_processed: list[Path] = []
    skipped: list[Path] = []
    for k, (path, name) in enumerate(progress_bar(cases, desc, progress)):
        planned = list(skip_finished(name)) if skip_finished is not None else []
        if planned and all(p.is_file() for p in planned):
            (on_skip or report_skip)(path, planned)
            skipped.append(planned[0])
            written.append(planned[0])
            continue
        try:
            with errors_naming(path, device):
                outputs = work(path, name)
            written.append(_write_outputs(outputs))
            del outputs
        except CmedlError as exc:
            failures.append((path, exc))
            if len(cases) > 1:
                report(exc)
            if is_fatal_write_error(exc):
                not_processed = [p for p, _ in cases[k + 1:]]
                break
    if failures:
        raise CasesFailed([p for p in written if p not in skipped], failures, len(cases), out_dir, not_processed,
                          skipped)
    return written


__all__ = [
    "ALLOW_MISMATCH_HINT", "CaseOutputs", "CasesFailed", "case_name", "check_batch_size", "check_inputs",
    "collect_inputs", "errors_naming", "manifest_inputs", "progress_bar", "report_failure", "report_skip",
    "run_cases", "write_case",
]
