"""Planning the import of a DICOM cohort: one sub-folder per patient, image series and RTSTRUCTs
anywhere under it. Only headers are read here; :mod:`cmedl.data.cohort_import` reads the voxels.

Per patient (:func:`plan_patient`):

1. Every folder under the patient folder is scanned (:func:`cmedl.io.dicom_scan.scan_folder`); image
   series are grouped by SeriesInstanceUID, RTSTRUCTs collected. The modality of a series comes from
   DICOM: ``MR`` -> mr, ``CT`` -> ct, or cbct when its description, protocol, image type or scanner
   model says cone-beam (``CBCT``, ``cone beam``, ``XVI``, ``OBI``, ``On-Board``). Other
   modalities (PT, US, ...) are not imported.
2. The ROIs of each RTSTRUCT are matched: ``roi`` by name (exact; else the unique case-insensitive
   match; else the unique ROI that extends it after a separator, ``GTV_Mass`` -> ``GTV_Mass_CT``:
   the same rules as :func:`cmedl.io.rtstruct.rasterize_roi`), ``roi_pattern`` as a
   case-insensitive full-match regular expression over ROIs that have contours, neither: the only
   ROI. **Several matches are united** into one mask (``GTV.*`` -> GTVp + GTVn is "the tumour"), and
   the report line names them.
3. The image series of an RTSTRUCT with a matching ROI is the one whose SeriesInstanceUID it
   references; else the one holding the SOP instances its contours reference; else (re-exported or
   cropped series get new UIDs but keep the frame of reference, e.g. the TCIA/MIRP sarcoma data)
   the only image series in its frame of reference, or among several the one nearest to the
   RTSTRUCT in the folder tree. Still ambiguous: the patient fails with the candidates listed.
   When several RTSTRUCTs label one series, the newest (StructureSetDate/Time, then path) is used.
4. Each labelled series (of ``modality`` when given) becomes a case; image series no RTSTRUCT
   labels are imported unlabelled only with ``include_unlabelled``. The case id is the patient
   folder name (characters other than letters, digits, ``._-`` replaced by ``_``), suffixed
   ``_<modality>`` when the folder holds ct/cbct/mr series of more than one modality (imported or
   not: ids do not change with ``modality``) or several cases of one modality, and ``_2``, ``_3`` ...
   for the 2nd, 3rd case of one modality. The patient id is the folder name: anonymised exports
   often share one DICOM PatientID.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from cmedl.data.import_layouts import PlannedCase
from cmedl.errors import CmedlError, InputError
from cmedl.io.dicom_scan import is_image_header, scan_folder
from cmedl.io.rtstruct import RoiInfo, describe_rois

#: DICOM Modality -> cmedl modality (CT may become cbct: :func:`series_modality`)
DICOM_MODALITIES = {"CT": "ct", "MR": "mr"}
_CBCT = re.compile(r"\bCBCT\b|CONE[- ]?BEAM|\bXVI\b|\bOBI\b|ON[- ]?BOARD", re.I)
_ORDER = {"ct": 0, "cbct": 1, "mr": 2}


@dataclass
class Series:
    """An image series found under a patient folder (from headers)."""

    uid: str
    folders: list[Path]
    dicom_modality: str
    modality: str | None
    frame: str
    sops: frozenset[str]
    n_files: int


@dataclass
class PatientPlan:
    """What one patient folder will give: cases, or why it is skipped / failed."""

    name: str
    folder: Path
    cases: list[PlannedCase] = field(default_factory=list)
    skipped: str | None = None  # nothing to import (no RTSTRUCT, no matching ROI, ...)
    errors: list[str] = field(default_factory=list)  # broken data: the patient counts as failed
    notes: list[str] = field(default_factory=list)  # what was left out, for the report line
    n_rtstructs: int = 0


def series_modality(ds: Dataset) -> str | None:
    """ct / cbct / mr of an image header, None for other modalities."""
    mod = DICOM_MODALITIES.get(str(ds.get("Modality", "")).upper())
    if mod == "ct":
        text = " ".join(str(ds.get(k, "") or "") for k in
                        ("SeriesDescription", "ProtocolName", "ImageType", "ManufacturerModelName"))
        if _CBCT.search(text):
            return "cbct"
    return mod


def safe_id(name: str) -> str:
    """``name`` as a case id: runs of characters other than letters, digits, ``._-`` -> ``_``."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return out or "patient"


def match_rois(
    rois: list[RoiInfo], roi: str | None, pattern: re.Pattern | None
) -> tuple[list[str], str]:
    """Names of the ROIs selected (see the module docstring) and, when none, why."""
    names = [r.name for r in rois]
    listing = ", ".join(names) or "none"
    if pattern is not None:
        hits = [r.name for r in rois if pattern.fullmatch(r.name) and r.n_contours > 0]
        empty = [r.name for r in rois if pattern.fullmatch(r.name) and r.n_contours == 0]
        why = f"no ROI with contours matches '{pattern.pattern}' (ROIs: {listing}"
        return hits, why + (f"; empty: {', '.join(empty)})" if empty else ")")
    if roi is None:
        if len(names) == 1:
            return names, ""
        return [], f"has {len(names)} ROIs ({listing}); choose with --roi or --roi-pattern"
    def extends(n: str) -> bool:  # "GTV_Mass" -> "GTV_Mass_CT"
        return n.lower().startswith(roi.lower()) and n[len(roi):len(roi) + 1] in ("_", "-", " ", ".")

    for same in (lambda n: n == roi, lambda n: n.lower() == roi.lower(), extends):
        hits = [n for n in names if same(n)]
        if len(hits) == 1:
            return hits, ""
        if len(hits) > 1:
            return [], f"{len(hits)} ROIs match '{roi}' ({', '.join(hits)})"
    return [], f"no ROI '{roi}' (ROIs: {listing})"


def _sop_uids(item: Dataset) -> set[str]:
    """SOP instance UIDs of an item's ContourImageSequence."""
    items = item.get("ContourImageSequence", []) or []
    return {str(c.get("ReferencedSOPInstanceUID", "")) for c in items}


def _references(ds: Dataset) -> tuple[set[str], set[str], set[str]]:
    """(frame of reference, series, SOP instance) UIDs an RTSTRUCT references."""
    frames, series, sops = set(), set(), set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        if fr.get("FrameOfReferenceUID"):
            frames.add(str(fr.FrameOfReferenceUID))
        for study in fr.get("RTReferencedStudySequence", []) or []:
            for se in study.get("RTReferencedSeriesSequence", []) or []:
                if se.get("SeriesInstanceUID"):
                    series.add(str(se.SeriesInstanceUID))
                sops.update(_sop_uids(se))
    for roi in ds.get("StructureSetROISequence", []) or []:
        if roi.get("ReferencedFrameOfReferenceUID"):
            frames.add(str(roi.ReferencedFrameOfReferenceUID))
    for item in ds.get("ROIContourSequence", []) or []:
        for contour in item.get("ContourSequence", []) or []:
            sops.update(_sop_uids(contour))
    return frames, series, sops - {""}


def _shared_depth(a: Path, b: Path) -> int:
    n = 0
    for x, y in zip(a.parts, b.parts):
        if x != y:
            break
        n += 1
    return n


def resolve_series(rs: Path, ds: Dataset, series: dict[str, Series], root: Path) -> tuple[Series, str]:
    """The image series an RTSTRUCT was drawn on and how it was found (see the module docstring).

    Raises:
        InputError: naming the RTSTRUCT when no series, or several equally likely ones, fit.
    """
    frames, ref_series, sops = _references(ds)
    hits = [series[u] for u in sorted(ref_series) if u in series]
    if len(hits) == 1:
        return hits[0], "referenced series"
    by_sop = [s for s in series.values() if s.sops & sops]
    if len(by_sop) == 1:
        return by_sop[0], "referenced images"
    candidates = hits or by_sop or [s for s in series.values() if s.frame and s.frame in frames]
    missing = ("its referenced series is not here" if ref_series and not hits
               else "several are referenced")
    if len(candidates) == 1:
        return candidates[0], f"frame of reference: {missing}"
    if not candidates:
        raise InputError(f"its image series is not under the patient folder (references series "
                         f"{', '.join(sorted(ref_series)) or '?'}, frame of reference "
                         f"{', '.join(sorted(frames)) or '?'})", rs)
    depth = {s.uid: max(_shared_depth(rs.parent, f) for f in s.folders) for s in candidates}
    best = max(depth.values())
    nearest = [s for s in candidates if depth[s.uid] == best]
    if len(nearest) == 1:
        return nearest[0], f"frame of reference + nearest folder: {missing}"
    listing = ", ".join(f"{s.dicom_modality} in {s.folders[0].relative_to(root)}" for s in nearest)
    raise InputError(f"cannot tell which of {len(nearest)} image series it was drawn on ({listing}); "
                     "its referenced series is not here and they share its frame of reference", rs)


def _scan(folder: Path) -> tuple[dict[str, Series], list[tuple[Path, Dataset]], int]:
    """Image series, RTSTRUCT files and the number of DICOM files under ``folder``."""
    series: dict[str, Series] = {}
    structs: list[tuple[Path, Dataset]] = []
    n_files = 0
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for uid, items in scan_folder(Path(dirpath)).items():
            n_files += len(items)
            images = [(p, ds) for p, ds in items if is_image_header(ds)]
            structs += [(p, ds) for p, ds in items if str(ds.get("Modality", "")).upper() == "RTSTRUCT"]
            if not images:
                continue
            first = images[0][1]
            sops = frozenset(str(ds.get("SOPInstanceUID", "")) for _, ds in images)
            if uid in series:
                series[uid].folders.append(Path(dirpath))
                series[uid].sops = series[uid].sops | sops
                series[uid].n_files += len(images)
            else:
                series[uid] = Series(
                    uid, [Path(dirpath)], str(first.get("Modality", "") or "?"), series_modality(first),
                    str(first.get("FrameOfReferenceUID", "") or ""), sops, len(images))
    return series, sorted(structs, key=lambda t: str(t[0])), n_files


def _when(ds: Dataset, path: Path) -> tuple[str, str, str]:
    date, time = (str(ds.get(k, "") or "") for k in ("StructureSetDate", "StructureSetTime"))
    return date, time, str(path)


def plan_patient(folder: Path, *, roi: str | None, pattern: re.Pattern | None, modality: str | None,
                 include_unlabelled: bool) -> PatientPlan:
    """What the patient folder ``folder`` gives (see the module docstring); never raises for bad data:
    problems become ``skipped`` / ``errors``."""
    plan = PatientPlan(folder.name, folder)
    try:
        series, structs, n_files = _scan(folder)
    except OSError as exc:
        plan.errors.append(f"{exc.filename or folder}: cannot read ({exc.strerror or exc})")
        return plan
    plan.n_rtstructs = len(structs)
    if not n_files:
        plan.skipped = "no DICOM files"
        return plan
    if not series:
        plan.skipped = f"no image series ({len(structs)} RTSTRUCT(s))"
        return plan
    labelled: dict[str, tuple[tuple[str, str, str], Path, list[str], str]] = {}
    reasons: list[str] = []
    for rs, ds in structs:
        rel = rs.relative_to(folder)
        try:
            names, why = match_rois(describe_rois(rs), roi, pattern)
            if not names:
                reasons.append(f"{rel}: {why}")
                continue
            target, how = resolve_series(rs, ds, series, folder)
        except CmedlError as exc:
            plan.errors.append(str(exc))
            continue
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a malformed structure set
            plan.errors.append(f"{rs}: cannot read this RTSTRUCT ({type(exc).__name__}: {exc})")
            continue
        entry = (_when(ds, rs), rs, names, how)
        old = labelled.get(target.uid)
        if old is not None:
            newer, older = (entry, old) if entry[0] > old[0] else (old, entry)
            plan.notes.append(f"{older[1].relative_to(folder)} not used "
                              f"(older than {newer[1].relative_to(folder)})")
            entry = newer
        labelled[target.uid] = entry
    order = sorted(series.values(),
                   key=lambda s: (_ORDER.get(s.modality or "", 9), str(s.folders[0]), s.uid))
    for s in order:
        where = s.folders[0].relative_to(folder)
        if s.modality is None:
            plan.notes.append(f"{s.dicom_modality} series in {where} not imported (not ct/cbct/mr)")
            continue
        if modality is not None and s.modality != modality:
            plan.notes.append(f"{s.modality} series in {where} left out (--modality {modality})")
            continue
        found = labelled.get(s.uid)
        if found is None and not include_unlabelled:
            if structs:
                plan.notes.append(f"{s.modality} series in {where} has no RTSTRUCT here")
            continue
        if len(s.folders) > 1:
            plan.errors.append(f"{s.folders[0]}: series {s.uid} is split across {len(s.folders)} "
                               f"folders ({', '.join(str(f.relative_to(folder)) for f in s.folders)}); "
                               "put it in one")
            continue
        case = PlannedCase("", folder.name, s.modality, s.folders[0], series_uid=s.uid,
                           inputs=[s.folders[0]])
        if found is not None:
            _, rs, names, how = found
            case.rtstruct, case.rois = rs, tuple(names)
            case.note = f"ROI {'+'.join(names)} of {rs.relative_to(folder)} on {where} [series by {how}]"
            case.inputs.append(rs)
        else:
            case.note = f"series in {where}"
        plan.cases.append(case)
    if plan.errors and any(c.rtstruct is None for c in plan.cases):  # it may be drawn on one of them
        plan.cases = [c for c in plan.cases if c.rtstruct is not None]
        plan.notes.append("unlabelled series not imported: an RTSTRUCT of this patient could not be "
                          "placed")
    _assign_ids(plan, {s.modality for s in series.values() if s.modality is not None})
    if not plan.cases and not plan.errors:
        if not structs and not include_unlabelled:
            plan.skipped = (f"no RTSTRUCT ({len(series)} image series; --include-unlabelled imports "
                            "them without labels)")
        else:
            plan.skipped = "; ".join(reasons + plan.notes) or "no RTSTRUCT labels an image series"
            plan.notes = []
    return plan


def _assign_ids(plan: PatientPlan, modalities: set[str]) -> None:
    """Case ids: the patient's name, suffixed ``_<modality>`` when the folder holds series of several
    modalities (whether imported or not, so ids do not change with ``--modality``) or several cases
    of one modality are imported, and ``_2``, ``_3`` ... for the 2nd, 3rd case of a modality."""
    base = safe_id(plan.name)
    per = {m: sum(c.modality == m for c in plan.cases) for m in modalities}
    count: dict[str, int] = {}
    for case in plan.cases:
        count[case.modality] = count.get(case.modality, 0) + 1
        n = count[case.modality]
        suffix = len(modalities) > 1 or per[case.modality] > 1
        case.case_id = base + (f"_{case.modality}" if suffix else "") + (f"_{n}" if n > 1 else "")


def plan_dicom_cohort(source: Path, *, roi: str | None = None, roi_pattern: str | None = None,
                      modality: str | None = None, include_unlabelled: bool = False,
                      exclude: tuple[Path, ...] = ()) -> list[PatientPlan]:
    """Plan every patient folder of ``source`` (sorted by name; hidden folders and ``exclude``
    left out).

    Raises:
        InputError: no patient folders; a bad ``roi_pattern``; no RTSTRUCT in the whole cohort
            (unless ``include_unlabelled``).
    """
    if roi is not None and roi_pattern is not None:
        raise InputError("pass --roi or --roi-pattern, not both")
    try:
        pattern = None if roi_pattern is None else re.compile(roi_pattern, re.I)
    except re.error as exc:
        raise InputError(f"--roi-pattern '{roi_pattern}' is not a valid regular expression "
                         f"({exc})") from None
    skip = {p.resolve() for p in exclude}
    patients = sorted(p for p in source.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.resolve() not in skip)
    if not patients:
        raise InputError("has no patient sub-folders (a DICOM cohort is one folder per patient)", source)
    plans = [plan_patient(p, roi=roi, pattern=pattern, modality=modality,
                          include_unlabelled=include_unlabelled) for p in patients]
    if not include_unlabelled and not any(p.n_rtstructs for p in plans):
        raise InputError(f"no RTSTRUCT in any of the {len(plans)} patient folders: nothing to label "
                         "the images with (--include-unlabelled imports them without labels)", source)
    return plans
