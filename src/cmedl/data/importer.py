"""Importing DICOM cases into a manifest data set, inspecting files, and splitting manifests.

These are the library functions behind ``cmedl data import | info | split``:

- :func:`import_dicom_case` reads a DICOM series (and optionally one RTSTRUCT ROI), writes
  ``<out>/images/<id>.nii.gz`` (+ ``<out>/labels/<id>.nii.gz`` on exactly the same grid) and
  adds or updates the case in a manifest. Everything is computed before anything is written, and
  files are written to temporaries that are moved into place only when all succeeded.
- :func:`describe_path` summarises an image file, a DICOM folder, an RTSTRUCT or a manifest.
- :func:`split_manifest` assigns train/val/test by patient and rewrites the manifest atomically.

Cohorts (a DICOM cohort folder, ``images/`` + ``labels/`` folders, nnU-Net raw data sets) are imported
by :mod:`cmedl.data.cohort_import`, which shares the manifest helpers here (``_load_or_new_manifest``,
``_relative``, ``_split_for``).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from cmedl.data.manifest import MODALITIES, SPLITS, Case, Manifest, split_by_patient
from cmedl.errors import InputError, did_you_mean
from cmedl.io.dicom import list_dicom_series, read_dicom_series
from cmedl.io.dicom_scan import has_dicom_preamble
from cmedl.io.rtstruct import describe_rois, list_rois, rasterize_roi
from cmedl.io.volume import Volume, atomic_path, read_volume, write_volume

#: DICOM Modality -> manifest modality. CBCT is stored as "CT" in DICOM: pass modality="cbct".
DICOM_MODALITY = {"CT": "ct", "MR": "mr"}
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: percentiles reported by :func:`describe_volume`
PERCENTILES = (1, 5, 50, 95, 99)


# ---------------------------------------------------------------------------------- import
def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` with forward slashes (absolute if on another drive)."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives on Windows
        return path.resolve().as_posix()


def import_dicom_case(
    dicom_dir: str | Path,
    out_dir: str | Path,
    case_id: str,
    *,
    rtstruct: str | Path | None = None,
    roi: str | None = None,
    patient_id: str | None = None,
    modality: str | None = None,
    series_uid: str | None = None,
    manifest: str | Path | None = None,
    replace: bool = False,
    check_reference: bool = True,
) -> Case:
    """Import one DICOM series (and optionally an RTSTRUCT ROI as its label) into a data set.

    Args:
        dicom_dir: folder holding the image series (see :func:`cmedl.io.dicom.read_dicom_series`).
        out_dir: data set folder; writes ``images/<case_id>.nii.gz`` and ``labels/<case_id>.nii.gz``.
        case_id: case identifier (letters, digits, ``._-``); an id already in the manifest (or
            whose image file exists) is an error unless ``replace``.
        rtstruct: RTSTRUCT file whose ROI becomes the label (uint8 0/1, same grid as the image).
        roi: ROI name; may be omitted when the RTSTRUCT has exactly one ROI.
        patient_id: defaults to the DICOM PatientID, else ``case_id``.
        modality: ``ct``, ``cbct`` or ``mr``; default from the DICOM Modality (CT -> ct,
            MR -> mr). Cone-beam CT is stored as CT in DICOM, so pass ``cbct`` explicitly.
        series_uid: SeriesInstanceUID when the folder holds several series.
        manifest: manifest JSON to update (created if missing); default ``<out_dir>/manifest.json``.
            Case paths are stored relative to the manifest's folder.
        replace: replace the case ``case_id`` (its entry, image and label; it keeps its split). Its
            old label file is removed when the new import has no label.
        check_reference: refuse an RTSTRUCT drawn in another frame of reference (see
            :func:`cmedl.io.rtstruct.rasterize_roi`).

    Returns:
        The Case written to the manifest.

    Raises:
        InputError: bad id/modality/ROI, an existing case without ``replace``, unreadable DICOM,
            an ROI that rasterises to an empty mask. Nothing is written then (no image without its
            mask, no manifest change).
    """
    modality = _check_import_args(case_id, modality, rtstruct, roi)
    out_dir = Path(out_dir)
    manifest_path, man = _load_or_new_manifest(manifest, out_dir)
    image_path = out_dir / "images" / f"{case_id}.nii.gz"
    label_path = out_dir / "labels" / f"{case_id}.nii.gz"
    old = _check_new_case(man, manifest_path, case_id, image_path, replace)
    image = read_dicom_series(dicom_dir, series_uid=series_uid)
    if modality is None:
        modality = _dicom_modality(image, dicom_dir)
    label = None if rtstruct is None else _roi_label(rtstruct, roi, image, check_reference)
    patient = patient_id or image.meta.get("PatientID") or case_id
    root = manifest_path.parent
    case = Case(
        id=case_id,
        patient_id=str(patient),
        modality=modality,
        image=_relative(image_path, root),
        label=None if label is None else _relative(label_path, root),
        split=_split_for(man, patient, case_id),
    )
    man.add(case, replace=True)
    # All inputs are read and checked; now write image (+ label) to temporaries, move them
    # into place together, then save the manifest (itself atomic).
    with contextlib.ExitStack() as stack:
        tmp_image = stack.enter_context(atomic_path(image_path))
        write_volume(image, tmp_image)
        if label is not None:
            tmp_label = stack.enter_context(atomic_path(label_path))
            write_volume(image.with_array(label), tmp_label)
    man.save(manifest_path)
    stale = None if old is None or label is not None else man.label_path(old)
    if stale is not None and stale == label_path.resolve():  # only the label this importer wrote
        stale.unlink(missing_ok=True)
    return case


def _check_new_case(
    man: Manifest, manifest_path: Path, case_id: str, image_path: Path, replace: bool
) -> Case | None:
    """The case ``case_id`` being replaced (None: a new id). Without ``replace``, an id already in
    the manifest, or an image file already at ``image_path``, is an InputError."""
    old = next((c for c in man.cases if c.id == case_id), None)
    if replace:
        return old
    if old is not None:
        raise InputError(
            f"case id '{case_id}' is already in the manifest (patient {old.patient_id}, image "
            f"{old.image}); choose another --id, or pass --replace to replace that case",
            manifest_path,
        )
    if image_path.exists():
        raise InputError(
            f"exists but case '{case_id}' is not in {manifest_path}; choose another --id, or pass "
            "--replace to overwrite it",
            image_path,
        )
    return None


def _check_import_args(
    case_id: str, modality: str | None, rtstruct: str | Path | None, roi: str | None
) -> str | None:
    """Validate the case id, modality and ROI arguments; return the modality in lower case."""
    if not _CASE_ID.match(case_id):
        raise InputError(f"invalid case id '{case_id}': use letters, digits, '.', '_' and '-'")
    if modality is not None:
        modality = modality.lower()
        if modality not in MODALITIES:
            raise InputError(did_you_mean(modality, MODALITIES, "modality"))
    if roi is not None and rtstruct is None:
        raise InputError(f"ROI '{roi}' given without an RTSTRUCT file (--rtstruct)")
    return modality


def _load_or_new_manifest(manifest: str | Path | None, out_dir: Path) -> tuple[Path, Manifest]:
    """The manifest path (default ``<out_dir>/manifest.json``; a folder means its manifest.json)
    and the manifest loaded from it, or a new empty one named after ``out_dir``."""
    manifest_path = Path(manifest) if manifest is not None else out_dir / "manifest.json"
    if manifest_path.is_dir():
        manifest_path = manifest_path / "manifest.json"
    man = (
        Manifest.load(manifest_path)
        if manifest_path.exists()
        else Manifest(name=out_dir.resolve().name)
    )
    return manifest_path, man


def _dicom_modality(image: Volume, dicom_dir: str | Path) -> str:
    """Manifest modality from the series' DICOM Modality (CT -> ct, MR -> mr)."""
    dicom_mod = image.meta.get("Modality", "")
    if dicom_mod.upper() not in DICOM_MODALITY:
        raise InputError(
            f"cannot infer the modality from DICOM Modality '{dicom_mod}'; pass modality (ct, cbct or mr)",
            dicom_dir,
        )
    return DICOM_MODALITY[dicom_mod.upper()]


def _roi_label(
    rtstruct: str | Path, roi: str | None, image: Volume, check_reference: bool = True
) -> np.ndarray:
    """ROI ``roi`` of ``rtstruct`` (the only one when None) rasterised on the image grid; must not
    be empty."""
    if roi is None:
        names = list_rois(rtstruct)
        if len(names) != 1:
            raise InputError(
                f"has {len(names)} ROIs; choose one with --roi: {', '.join(names)}", rtstruct
            )
        roi = names[0]
    label = rasterize_roi(rtstruct, roi, image, check_reference=check_reference)
    if not label.any():
        raise InputError(
            f"ROI '{roi}' rasterises to an empty mask on the image grid (contours outside the image?)",
            rtstruct,
        )
    return label


def _split_for(man: Manifest, patient: str, case_id: str) -> str:
    """A patient's cases share one split: join the patient's split, else keep the replaced case's
    (default ``train``)."""
    split = next((c.split for c in man.cases if c.patient_id == patient and c.id != case_id), None)
    return split or next((c.split for c in man.cases if c.id == case_id), "train")


# ---------------------------------------------------------------------------------- info
def orientation_code(direction: tuple[float, ...]) -> str:
    """Three-letter orientation (SimpleITK's DICOMOrientImageFilter), e.g. ``LPS`` for identity."""
    return str(sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction)))


def describe_volume(volume: Volume, max_voxels: int = 2_000_000) -> dict[str, Any]:
    """Geometry and intensity summary of a volume.

    Percentiles are computed on a regular subsample of at most ``max_voxels`` voxels (exact for
    smaller volumes); min/max are exact. Keys: shape (z, y, x), spacing/origin (x, y, z) mm,
    orientation, dtype, min, max, percentiles {p: value}, nonzero (voxel count).
    """
    arr = volume.array
    flat = arr.reshape(-1)
    step = max(1, int(np.ceil(flat.size / max_voxels)))
    sample = flat[::step].astype(np.float64)
    finite = sample[np.isfinite(sample)]
    pct = np.percentile(finite, PERCENTILES) if finite.size else np.full(len(PERCENTILES), np.nan)
    return {
        "shape": volume.shape,
        "spacing": volume.spacing,
        "origin": volume.origin,
        "orientation": orientation_code(volume.direction),
        "direction": volume.direction,
        "dtype": str(arr.dtype),
        "min": float(np.nanmin(arr)) if arr.size else float("nan"),
        "max": float(np.nanmax(arr)) if arr.size else float("nan"),
        "percentiles": {int(p): float(v) for p, v in zip(PERCENTILES, pct)},
        "nonzero": int(np.count_nonzero(arr)),
        "meta": {k: v for k, v in volume.meta.items() if k != "source"},
    }


def describe_manifest(manifest: Manifest) -> dict[str, Any]:
    """Case counts: total, per modality, per split, per (modality, split), labelled, patients."""
    per: dict[str, dict[str, int]] = {m: dict.fromkeys(SPLITS, 0) for m in MODALITIES}
    for c in manifest.cases:
        per[c.modality][c.split] += 1
    return {
        "name": manifest.name,
        "cases": len(manifest.cases),
        "patients": len({c.patient_id for c in manifest.cases}),
        "labelled": sum(c.label is not None for c in manifest.cases),
        "per_modality_split": {m: s for m, s in per.items() if sum(s.values())},
        "per_split": {s: sum(per[m][s] for m in MODALITIES) for s in SPLITS},
        "seed": manifest.seed,
    }


def describe_path(path: str | Path, series_uid: str | None = None) -> dict[str, Any]:
    """Summarise whatever ``path`` is, as a dict with ``kind`` and kind-specific keys.

    - ``kind="manifest"`` (a ``.json`` file): :func:`describe_manifest`.
    - ``kind="rtstruct"``: ``rois`` = list of {number, name, contours, frame_of_reference_uid}.
    - ``kind="dicom_folder"`` with several image series and no ``series_uid``: ``series`` = list
      of SeriesInfo, no volume.
    - ``kind="volume"`` (image file or a DICOM folder with one image series):
      :func:`describe_volume` plus ``series`` (all series found, for a DICOM folder); in a folder
      with several series, ``series_uid`` chooses the one described.

    Raises:
        InputError: path missing or unreadable (the message names it), ``series_uid`` for a file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if series_uid is not None and not path.is_dir():
        raise InputError("is a file; a series UID (--series-uid) chooses a series of a DICOM folder", path)
    if path.is_dir():
        series = list_dicom_series(path)
        images = [s for s in series if s.is_image]
        if len(images) > 1 and series_uid is None:
            return {"kind": "dicom_folder", "path": str(path), "series": series}
        info = describe_volume(read_dicom_series(path, series_uid=series_uid))
        return {"kind": "volume", "path": str(path), "series": series, **info}
    if path.suffix.lower() == ".json":
        return {"kind": "manifest", "path": str(path), **describe_manifest(Manifest.load(path))}
    if has_dicom_preamble(path) or path.suffix.lower() == ".dcm":
        try:
            modality = str(
                pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "")
            ).upper()
        except Exception:  # noqa: BLE001
            raise InputError("not a readable DICOM file", path) from None
        if modality == "RTSTRUCT":
            rois = [
                {
                    "number": r.number,
                    "name": r.name,
                    "contours": r.n_contours,
                    "frame_of_reference_uid": r.frame_of_reference_uid,
                }
                for r in describe_rois(path)
            ]
            return {"kind": "rtstruct", "path": str(path), "rois": rois}
    return {"kind": "volume", "path": str(path), **describe_volume(read_volume(path))}


# ---------------------------------------------------------------------------------- split
def split_manifest(
    manifest_path: str | Path,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    out: str | Path | None = None,
) -> Manifest:
    """Assign train/val/test by patient (:func:`split_by_patient`) and save atomically.

    Writes to ``out`` (default: the manifest itself); case paths are re-expressed relative to
    the output's folder, so the written manifest points at the same files. Returns it.
    """
    src = Path(manifest_path)
    man = Manifest.load(src)
    dest = Path(out) if out is not None else (src / "manifest.json" if src.is_dir() else src)
    new_root = dest.parent
    cases = split_by_patient(man.cases, fractions=fractions, seed=seed)
    if new_root.resolve() != man.root.resolve():
        for c in cases:
            c.image = _rebase(c.image, man.root, new_root)
            c.label = None if c.label is None else _rebase(c.label, man.root, new_root)
            c.paired_mr = None if c.paired_mr is None else _rebase(c.paired_mr, man.root, new_root)
    man.cases = cases
    man.seed = seed
    man.save(dest)
    return man


def _rebase(rel: str, old_root: Path, new_root: Path) -> str:
    p = Path(rel)
    return rel if p.is_absolute() else _relative(old_root / p, new_root)
