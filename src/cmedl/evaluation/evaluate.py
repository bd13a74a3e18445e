"""Evaluate folders (or manifests) of predicted masks against reference masks: per-case tables.

Sources (``pred`` and ``ref`` alike):

- a **folder** of mask files (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ...; not recursive): the
  case id is the file name without its suffix (``ct_003.nii.gz`` -> ``ct_003``);
- a **manifest** (a ``.json`` file, or a folder holding ``manifest.json`` and no mask files): the
  ``label`` of every labelled case (optionally of one ``split``), keyed by case id.

Predictions and references are matched by case id; a prediction without a reference (or the
reverse) is an error, as is a pair on different voxel grids (unless ``resample_pred``: the
prediction is resampled onto the reference grid with nearest-neighbour interpolation, SimpleITK),
a non-binary mask without ``label``, NaN voxels or an unreadable file. Every error is one line
naming the file(s); nothing is written unless every case succeeds. The output CSV is checked
before any work (:func:`cmedl.io.outputs.check_output_file`): it must not be one of the masks or
manifests read, nor a folder, and its folder must be writable; a failed write (disk full) is a
one-line error naming it.

With ``label``, a label value that occurs in none of the reference masks is refused (every case would
score DSC 1 and HD95 0 on two empty masks); a prediction without the label where its reference has
it is scored as a missed tumour and reported through ``warn``.

The surface-Dice tolerance of a case is ``tolerance_mm`` if given, else the default of
``modality`` (if given), else of the reference manifest's case modality, else CT (2 mm); see
:data:`cmedl.evaluation.metrics.DEFAULT_TOLERANCE_MM`.

Each case gives one row (a plain dict, see :data:`CSV_COLUMNS`) with every metric of
:func:`~cmedl.evaluation.metrics.compute_all` and
:func:`~cmedl.evaluation.objects.object_metrics`, the spacing (mm, z/y/x), shape and voxel counts.

This module scores cases; finding and pairing the files is :mod:`cmedl.evaluation.pairing`, the
CSV is :mod:`cmedl.evaluation.results_csv` and the summary table :mod:`cmedl.evaluation.summary`.
Their public names are re-exported here.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmedl.errors import GeometryError, InputError, did_you_mean
from cmedl.evaluation.metrics import DEFAULT_TOLERANCE_MM, compute_all
from cmedl.evaluation.objects import DEFAULT_OVERLAP, object_metrics
from cmedl.evaluation.pairing import CasePair, list_masks, match_cases
from cmedl.evaluation.results_csv import (
    CSV_COLUMNS,
    TEXT_COLUMNS,
    read_results_csv,
    write_results_csv,
)
from cmedl.evaluation.summary import (
    SUMMARY_METRICS,
    format_summary,
    format_text_table,
    summary_table,
)
from cmedl.io.outputs import check_output_file, writing
from cmedl.io.volume import Volume, read_volume

__all__ = [
    "CSV_COLUMNS",
    "SUMMARY_METRICS",
    "TEXT_COLUMNS",
    "CasePair",
    "evaluate_case",
    "evaluate_folders",
    "evaluate_pairs",
    "format_summary",
    "format_text_table",
    "list_masks",
    "load_mask",
    "match_cases",
    "read_results_csv",
    "resolve_tolerance",
    "summary_table",
    "write_results_csv",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- one case
def load_mask(path: str | Path, label: int | None = None) -> Volume:
    """Read a mask file as a bool Volume: ``array == label`` if given, else it must be binary (0/1)."""
    vol = read_volume(path)
    arr = vol.array
    if vol.meta.get("has_nonfinite") == "1":
        raise InputError("mask contains NaN or infinite voxels", path)
    if label is not None:
        return vol.with_array(arr == label)
    nonzero = arr != 0
    values = arr[nonzero]
    if values.size and not (values == 1).all():
        shown = np.unique(values)[:6].tolist()
        raise InputError(f"mask is not binary (non-zero values {shown}); pass --label to select one", path)
    return vol.with_array(nonzero)


def _resample_nearest(moving: Volume, reference: Volume) -> Volume:
    img = sitk.Resample(
        moving.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8
    )
    return reference.with_array(sitk.GetArrayFromImage(img).astype(bool))


def resolve_tolerance(tolerance_mm: float | None, modality: str | None, case_modality: str | None) -> float:
    """Surface-Dice tolerance for a case: explicit > ``modality`` default > case modality > CT."""
    if tolerance_mm is not None:
        if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
            raise InputError(f"tolerance must be a non-negative number of mm, got {tolerance_mm}")
        return float(tolerance_mm)
    mod = modality or case_modality or "ct"
    if mod not in DEFAULT_TOLERANCE_MM:
        raise InputError(did_you_mean(mod, DEFAULT_TOLERANCE_MM, "modality"))
    return DEFAULT_TOLERANCE_MM[mod]


def evaluate_case(
    pair: CasePair,
    tolerance_mm: float | None = None,
    modality: str | None = None,
    label: int | None = None,
    resample_pred: bool = False,
    overlap: float = DEFAULT_OVERLAP,
) -> dict[str, object]:
    """Read, check and score one pair; returns one per-case row (keys: :data:`CSV_COLUMNS`)."""
    ref = load_mask(pair.ref, label)
    pred = load_mask(pair.pred, label)
    resampled = False
    diff = pred.geometry_difference(ref)
    if diff is not None:
        if not resample_pred:
            raise GeometryError(
                f"{pair.pred} and {pair.ref} are on different voxel grids: {diff} (pass --resample-pred "
                "to resample the prediction onto the reference grid)"
            )
        pred = _resample_nearest(pred, ref)
        resampled = True
    tol = resolve_tolerance(tolerance_mm, modality, pair.modality)
    spacing = ref.spacing_zyx
    row: dict[str, object] = {
        "case_id": pair.case_id,
        "modality": modality or pair.modality or "",
        "tolerance_mm": tol,
    }
    row.update(compute_all(pred.array, ref.array, spacing, tol))
    row.update(object_metrics(pred.array, ref.array, spacing, overlap=overlap))
    row.update(
        spacing_z_mm=spacing[0], spacing_y_mm=spacing[1], spacing_x_mm=spacing[2],
        shape_zyx="x".join(str(s) for s in ref.shape), resampled=int(resampled),
        pred_path=str(pair.pred), ref_path=str(pair.ref),
    )
    return {c: row[c] for c in CSV_COLUMNS}


def _evaluate_case_star(args: tuple) -> dict[str, object]:  # picklable entry point for workers
    return evaluate_case(*args)


# ---------------------------------------------------------------------------- many cases
def evaluate_pairs(
    pairs: Sequence[CasePair],
    tolerance_mm: float | None = None,
    modality: str | None = None,
    label: int | None = None,
    resample_pred: bool = False,
    overlap: float = DEFAULT_OVERLAP,
    workers: int = 1,
    on_case_done: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Evaluate ``pairs`` (in ``workers`` processes when > 1); rows sorted by case id.

    ``on_case_done(case_id)`` is called as each case finishes (for progress bars). The first
    failing case raises its error and cancels the rest.
    """
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    args = [(p, tolerance_mm, modality, label, resample_pred, overlap) for p in pairs]
    rows: list[dict[str, object]] = []
    if workers == 1 or len(pairs) <= 1:
        for a in args:
            rows.append(_evaluate_case_star(a))
            if on_case_done:
                on_case_done(a[0].case_id)
    else:
        # spawn, not fork: the parent may hold torch/OpenMP threads that a fork would deadlock on.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(pairs)), mp_context=ctx) as pool:
            futures = {pool.submit(_evaluate_case_star, a): a[0].case_id for a in args}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    exc = f.exception()
                    if exc is not None:
                        for g in pending:
                            g.cancel()
                        raise exc
                    rows.append(f.result())
                    if on_case_done:
                        on_case_done(futures[f])
    rows.sort(key=lambda r: str(r["case_id"]))
    return rows


def evaluate_folders(
    pred: str | Path,
    ref: str | Path,
    out: str | Path | None = None,
    *,
    tolerance_mm: float | None = None,
    modality: str | None = None,
    label: int | None = None,
    resample_pred: bool = False,
    split: str | None = None,
    overlap: float = DEFAULT_OVERLAP,
    workers: int = 1,
    progress: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Evaluate every case of ``pred`` against ``ref`` (folders or manifests; see module docstring).

    Args:
        pred, ref: folder of masks or manifest, each.
        out: per-case CSV to write (atomically, only if every case succeeds); None to skip.
        tolerance_mm: surface-Dice tolerance for all cases (default: per modality).
        modality: ``ct``, ``cbct`` or ``mr``: default tolerance for all cases.
        label: evaluate ``mask == label`` (for label maps); default: masks must be binary.
        resample_pred: resample predictions on another grid onto the reference (nearest neighbour).
        split: only this split of manifests.
        overlap: object detection threshold (fraction of a reference object covered).
        workers: parallel processes.
        progress: show a progress bar on stderr.
        warn: receives one-line warnings (default: this module's logger), e.g. predictions without
            ``label``.

    Returns:
        Per-case rows (dicts keyed by :data:`CSV_COLUMNS`), sorted by case id.

    Raises:
        InputError: one line naming the offending file: unmatched cases, bad masks, a label in no
            reference, an output that is an input or cannot be written.
    """
    if modality is not None and modality not in DEFAULT_TOLERANCE_MM:
        raise InputError(did_you_mean(modality, DEFAULT_TOLERANCE_MM, "modality"))
    if tolerance_mm is not None:
        resolve_tolerance(tolerance_mm, None, None)
    pairs = match_cases(pred, ref, split)
    if out is not None:
        read = {Path(pred), Path(ref), *(p.pred for p in pairs), *(p.ref for p in pairs)}
        check_output_file(out, inputs=sorted(read))
    kwargs = {
        "tolerance_mm": tolerance_mm, "modality": modality, "label": label,
        "resample_pred": resample_pred, "overlap": overlap, "workers": workers,
    }
    if progress:
        # lazy: rich is only needed for the optional progress bar and is slow to import
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
        ) as bar:
            task = bar.add_task("", total=len(pairs))
            rows = evaluate_pairs(pairs, **kwargs, on_case_done=lambda cid: bar.update(task, advance=1, description=cid))  # type: ignore[arg-type]
    else:
        rows = evaluate_pairs(pairs, **kwargs)  # type: ignore[arg-type]
    if label is not None:
        _check_label_found(rows, pairs, label, ref, warn or logger.warning)
    if out is not None:
        with writing(out):
            write_results_csv(rows, out)
    return rows


def _check_label_found(rows: Sequence[dict[str, object]], pairs: Sequence[CasePair], label: int,
                       ref: str | Path, warn: Callable[[str], None]) -> None:
    """Refuse a label in no reference mask; warn about predictions without it where the reference has it."""
    if rows and not any(int(r["n_voxels_ref"]) for r in rows):  # type: ignore[call-overload]
        first = pairs[0].ref
        values = np.unique(read_volume(first).array)
        shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if values.size > 8 else "")
        raise InputError(
            f"label {label} occurs in none of the {len(rows)} reference mask(s) (values in {first.name}: "
            f"{shown}); every case would score DSC 1 on two empty masks: check --label", ref)
    missing = [str(r["pred_path"]) for r in rows
               if int(r["n_voxels_ref"]) and not int(r["n_voxels_pred"])]  # type: ignore[call-overload]
    if missing:
        few = ", ".join(missing[:3]) + (f", ... ({len(missing)} predictions)" if len(missing) > 3 else "")
        warn(f"label {label} occurs in no voxel of {len(missing)} prediction(s) whose reference has it "
             f"({few}); they score as missed tumours: check --label")
