"""``cmedl data import`` for every layout: one DICOM series, a DICOM cohort, ``images/`` + ``labels/``
folders, or an nnU-Net raw data set (layouts: :mod:`cmedl.data.import_layouts`).

:func:`import_data` is the one library function behind the command. A single DICOM series goes to
:func:`cmedl.data.importer.import_dicom_case` unchanged. A cohort is imported in three steps:

1. **Plan** from file names and headers only (:func:`~cmedl.data.import_layouts.plan_folders`,
   :func:`~cmedl.data.import_layouts.plan_nnunet`, :func:`~cmedl.data.dicom_cohort.plan_dicom_cohort`),
   then check the whole plan before any voxel is read: the output folder (``check_output_folder``),
   duplicate case ids, ids already in the manifest or image files already in ``images/`` (both need
   ``replace``).
2. **Read and write** each case: image (+ label as a 0/1 ``uint8`` mask on exactly the image's grid)
   written as ``images/<id>.nii.gz`` (+ ``labels/<id>.nii.gz``) into hidden temporaries
   (:func:`~cmedl.io.atomic.atomic_path`), all held open until the end. An image-file data set is
   all or nothing: the first bad file stops the import with its one-line error and nothing is
   written. A DICOM cohort goes on past a broken patient (reported on its line), except after a
   write failure that every later write would share (disk full).
3. **Commit**: the temporaries are moved into place, then the manifest is saved once (atomically),
   so it never names a missing file. New patients join their patient's split, else ``train``
   (nnU-Net ``imagesTs``: ``test``); ``cmedl data split`` assigns train/val/test by patient.
   A DICOM cohort with failed patients then raises :class:`CohortImportFailed` (non-zero exit).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmedl.data.dicom_cohort import plan_dicom_cohort
from cmedl.data.import_layouts import (
    LAYOUTS,
    PlannedCase,
    check_modality,
    detect_layout,
    plan_folders,
    plan_nnunet,
)
from cmedl.data.importer import _load_or_new_manifest, _relative, _split_for, import_dicom_case
from cmedl.data.manifest import Case, Manifest, check_patient_splits
from cmedl.errors import CmedlError, InputError, did_you_mean
from cmedl.io.dicom import read_dicom_series
from cmedl.io.image import Volume, check_same_geometry
from cmedl.io.outputs import check_output_file, check_output_folder, is_fatal_write_error, writing
from cmedl.io.rtstruct import rasterize_roi
from cmedl.io.volume import atomic_path, read_volume, write_volume


@dataclass
class ImportResult:
    """What an import did: the cases written (in order), and per unit (patient or file) why it was
    skipped or failed."""

    layout: str
    cases: list[Case] = field(default_factory=list)
    manifest: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    units: int = 0  # patients (DICOM cohort) or image files
    seconds: float = 0.0

    @property
    def patients(self) -> int:
        return len({c.patient_id for c in self.cases})


class CohortImportFailed(InputError):
    """Some patients of a DICOM cohort failed (each reported on its line); the rest were imported."""

    def __init__(self, result: ImportResult, source: Path) -> None:
        self.result = result
        names = ", ".join(n for n, _ in result.failed[:5]) + (", ..." if len(result.failed) > 5 else "")
        super().__init__(f"{len(result.failed)} of {result.units} patients failed ({names}; each "
                         f"reported above); {len(result.cases)} case(s) imported into {result.manifest}",
                         source)


@dataclass
class _Unit:
    """What one report line covers: a patient folder (DICOM) or one case (image files)."""

    name: str
    cases: list[PlannedCase]
    skipped: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: the layout-specific arguments each layout takes
_OPTIONS = {
    "dicom-series": {"case_id", "rtstruct", "roi", "patient_id", "series_uid"},
    "dicom-cohort": {"roi", "roi_pattern", "include_unlabelled"},
    "folders": {"label_value"},
    "nnunet": {"label_value"},
}


def import_data(
    source: str | Path,
    out: str | Path,
    *,
    layout: str = "auto",
    case_id: str | None = None,
    rtstruct: str | Path | None = None,
    roi: str | None = None,
    roi_pattern: str | None = None,
    patient_id: str | None = None,
    modality: str | None = None,
    series_uid: str | None = None,
    label_value: int | None = None,
    include_unlabelled: bool = False,
    manifest: str | Path | None = None,
    replace: bool = False,
    check_reference: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> ImportResult:
    """Import ``source`` into the data set ``out`` (``images/``, ``labels/``, manifest).

    Args:
        source: a DICOM series folder, a DICOM cohort folder, an ``images/`` + ``labels/`` folder or an
            nnU-Net raw data set (``layout`` ``auto`` tells them apart: :func:`detect_layout`).
        case_id, rtstruct, patient_id, series_uid: the single-series import only (``case_id`` needed).
        roi: ROI name (DICOM); roi_pattern: a regular expression over ROI names (DICOM cohort; several
            matches are united).
        modality: ct, cbct or mr: the cases' modality (image files: needed unless nnU-Net's channel name
            says it); for a DICOM cohort, only series of this modality are imported.
        label_value: the label value that is the tumour (image files).
        include_unlabelled: DICOM cohort: also import image series no RTSTRUCT labels.
        manifest, replace, check_reference: as :func:`~cmedl.data.importer.import_dicom_case`.
        on_line: called with each report line (one per patient or file) as it is decided.

    Raises:
        InputError: one line naming the file at fault, nothing written; :class:`CohortImportFailed`
            after a DICOM cohort import in which some patients failed (the others are written).
    """
    start = time.perf_counter()
    source, out = Path(source), Path(out)
    if layout not in LAYOUTS:
        raise InputError(did_you_mean(layout, LAYOUTS, "layout"))
    if layout == "auto":
        layout = detect_layout(source, single=case_id is not None)
    options = {
        "case_id": ("--id", case_id), "rtstruct": ("--rtstruct", rtstruct), "roi": ("--roi", roi),
        "patient_id": ("--patient-id", patient_id), "series_uid": ("--series-uid", series_uid),
        "roi_pattern": ("--roi-pattern", roi_pattern), "label_value": ("--label-value", label_value),
        "include_unlabelled": ("--include-unlabelled", include_unlabelled or None),
    }
    bad = [flag for key, (flag, value) in options.items()
           if value is not None and key not in _OPTIONS[layout]]
    if bad:
        raise InputError(f"{', '.join(bad)} cannot be used with a {layout} layout", source)
    if layout == "dicom-series":
        if case_id is None:
            raise InputError("holds one DICOM series: pass --id to name its case", source)
        case = import_dicom_case(
            source, out, case_id, rtstruct=rtstruct, roi=roi, patient_id=patient_id,
            modality=modality, series_uid=series_uid, manifest=manifest, replace=replace,
            check_reference=check_reference)
        path = _load_or_new_manifest(manifest, out)[0]
        return ImportResult(layout, [case], path, units=1, seconds=time.perf_counter() - start)
    modality = check_modality(modality)
    if not source.is_dir():
        raise InputError("no such folder" if not source.exists() else "is not a folder", source)
    manifest_path, man = _load_or_new_manifest(manifest, out)
    check_output_folder(out, inputs=[source])
    check_output_file(manifest_path, inputs=[source])
    say = on_line or (lambda _line: None)
    units, tolerant = _plan(source, out, layout, modality, roi, roi_pattern, label_value,
                            include_unlabelled, say)
    planned = [c for u in units for c in u.cases]
    _check_plan(planned, man, manifest_path, out, source, replace)
    result = ImportResult(layout, manifest=manifest_path, units=len(units))
    replaced: list[Case] = []
    with contextlib.ExitStack() as keep:
        for unit in units:
            _import_unit(unit, man, manifest_path, out, check_reference, tolerant, keep, result,
                         replaced, say)
        if not result.cases:
            raise InputError(f"no case imported ({len(result.skipped)} skipped, "
                             f"{len(result.failed)} failed: see the lines above)", source)
        check_patient_splits(man.cases, source=manifest_path)
    man.save(manifest_path)  # after every file is in place: it never names a missing file
    for old in replaced:  # a replaced case that lost its label: remove the label this importer wrote
        stale = man.label_path(old) if man.get(old.id).label is None else None
        if stale is not None and stale == (out / "labels" / f"{old.id}.nii.gz").resolve():
            stale.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - start
    if result.failed:
        raise CohortImportFailed(result, source)
    return result


def _plan(
    source: Path, out: Path, layout: str, modality: str | None, roi: str | None,
    roi_pattern: str | None, label_value: int | None, include_unlabelled: bool,
    say: Callable[[str], None],
) -> tuple[list[_Unit], bool]:
    """The report units of ``source`` and whether a failing unit lets the others go on."""
    if layout == "folders":
        cases = plan_folders(source, modality, label_value)
        say(f"{source}: images/ + labels/ folder, {len(cases)} image(s), "
            f"{sum(c.label is not None for c in cases)} with a label; modality {modality}")
        return [_Unit(c.case_id, [c]) for c in cases], False
    if layout == "nnunet":
        cases, how = plan_nnunet(source, modality, label_value)
        say(f"{source}: nnU-Net raw data set, {len(cases)} image(s); {how}")
        return [_Unit(c.case_id, [c]) for c in cases], False
    plans = plan_dicom_cohort(source, roi=roi, roi_pattern=roi_pattern, modality=modality,
                              include_unlabelled=include_unlabelled, exclude=(out,))
    say(f"{source}: DICOM cohort, {len(plans)} patient folder(s)")
    return [_Unit(p.name, p.cases, p.skipped, p.errors, p.notes) for p in plans], True


def _check_plan(planned: list[PlannedCase], man: Manifest, manifest_path: Path, out: Path, source: Path,
                replace: bool) -> None:
    """Before any voxel is read: unique ids, no clash with the manifest or files in ``out`` (unless
    ``replace``), outputs that are not inputs."""
    first: dict[str, PlannedCase] = {}
    for case in planned:
        other = first.setdefault(case.case_id, case)
        if other is not case:
            raise InputError(f"duplicate case id '{case.case_id}': also from {other.image}", case.image)
    outputs = [out / sub / f"{c.case_id}.nii.gz" for c in planned for sub in ("images", "labels")]
    check_output_folder(out, inputs=[source, *(p for c in planned for p in c.inputs)], planned=outputs)
    if replace:
        return
    known = {c.id for c in man.cases}
    clash = [c.case_id for c in planned if c.case_id in known]
    if clash:
        more = f" and {len(clash) - 5} more" if len(clash) > 5 else ""
        raise InputError(f"case ids already in the manifest: {', '.join(clash[:5])}{more}; pass "
                         "--replace to import them again", manifest_path)
    for c in planned:
        image = out / "images" / f"{c.case_id}.nii.gz"
        if image.exists():
            raise InputError(f"exists but case '{c.case_id}' is not in {manifest_path}; pass "
                             "--replace to overwrite it", image)


def binary_label(array: np.ndarray, values: tuple[int, ...] | None, path: Path) -> np.ndarray:
    """A label map as a 0/1 ``uint8`` mask: voxels in ``values`` -> 1; with ``values`` None the map must
    already be 0/1. Non-finite or non-integer values are an InputError naming ``path``."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("label has NaN or infinite values", path)
        if (array != np.round(array)).any():
            raise InputError("label has non-integer values: a label map is needed", path)
    if values is not None:
        return np.isin(array, values).astype(np.uint8)
    bad = (array != 0) & (array != 1)
    if bad.any():
        found = ", ".join(f"{v:g}" for v in np.unique(array[bad])[:6].astype(float))
        raise InputError(f"label has values other than 0 and 1 ({found}); pass --label-value N for the "
                         "tumour's value", path)
    return array.astype(np.uint8, copy=False)


def _read_case(pc: PlannedCase, check_reference: bool) -> tuple[Volume, np.ndarray | None]:
    """The image and its 0/1 label (None: unlabelled) of a planned case."""
    if pc.series_uid is not None:  # DICOM
        image = read_dicom_series(pc.image, series_uid=pc.series_uid)
        if pc.rtstruct is None:
            return image, None
        mask = np.zeros(image.shape, np.uint8)
        for name in pc.rois:
            mask |= rasterize_roi(pc.rtstruct, name, image, check_reference=check_reference)
        if not mask.any():
            raise InputError(f"ROI {'+'.join(pc.rois)} rasterises to an empty mask on the image grid "
                             "(contours outside the image?)", pc.rtstruct)
        return image, mask
    image = read_volume(pc.image)
    if pc.label is None:
        return image, None
    label = read_volume(pc.label)
    check_same_geometry(image, label, pc.image, pc.label)
    return image, binary_label(label.array, pc.label_values, pc.label)


def _write_case(pc: PlannedCase, image: Volume, label: np.ndarray | None, out: Path,
                keep: contextlib.ExitStack) -> None:
    """Write the case to temporaries that ``keep`` moves into place when it closes without error."""
    volumes = [(out / "images" / f"{pc.case_id}.nii.gz", image)]
    if label is not None:
        volumes.append((out / "labels" / f"{pc.case_id}.nii.gz", image.with_array(label)))
    with contextlib.ExitStack() as stack:
        for path, volume in volumes:
            with writing(path):
                write_volume(volume, stack.enter_context(atomic_path(path)))
        keep.enter_context(stack.pop_all())


def _import_unit(
    unit: _Unit, man: Manifest, manifest_path: Path, out: Path, check_reference: bool,
    tolerant: bool, keep: contextlib.ExitStack, result: ImportResult, replaced: list[Case],
    say: Callable[[str], None],
) -> None:
    """Import the cases of one unit and report it on one line."""
    if unit.skipped:
        result.skipped.append((unit.name, unit.skipped))
        say(f"{unit.name}: skipped: {unit.skipped}")
        return
    done: list[str] = []
    errors = list(unit.errors)
    root = manifest_path.parent
    for pc in unit.cases:
        try:
            image, label = _read_case(pc, check_reference)
            _write_case(pc, image, label, out, keep)
        except CmedlError as exc:
            if not tolerant or is_fatal_write_error(exc):
                raise
            errors.append(str(exc))
            continue
        old = next((c for c in man.cases if c.id == pc.case_id), None)
        if old is not None:
            replaced.append(old)
        image_rel = _relative(out / "images" / f"{pc.case_id}.nii.gz", root)
        label_rel = None if label is None else _relative(out / "labels" / f"{pc.case_id}.nii.gz", root)
        case = Case(pc.case_id, pc.patient_id, pc.modality, image_rel, label_rel,
                    pc.split or _split_for(man, pc.patient_id, pc.case_id))
        man.add(case, replace=True)
        result.cases.append(case)
        what = f"label {int(label.sum())} voxels" if label is not None else "no label"
        detail = f"{pc.modality}, {image.shape[0]} slices, {what}" + (f"; {pc.note}" if pc.note else "")
        done.append(f"{pc.case_id} ({detail})" if tolerant else f"({detail}, split {case.split})")
    parts = []
    if done:
        parts.append("imported " + ", ".join(done))
    if errors:
        parts.append("failed: " + "; ".join(errors))
        result.failed.append((unit.name, "; ".join(errors)))
    if unit.notes:
        parts.append("; ".join(unit.notes))
    say(f"{unit.name}: " + "; ".join(parts))
