"""DICOM RTSTRUCT: list regions of interest and rasterise one onto a reference image grid.

Rasterisation rules (what :func:`rasterize_roi` does, in this order):

1. Only ``CLOSED_PLANAR`` (and ``CLOSED_PLANAR_XOR``) contours are used; ``POINT``,
   ``OPEN_PLANAR`` and ``OPEN_NONPLANAR`` contours are ignored.
2. Contour points (patient LPS mm) are mapped to continuous voxel indices with
   :meth:`Volume.physical_to_index`, so any direction cosines (oblique MR) work. A contour must lie
   in a plane parallel to the reference slices (index-z spread below half a slice), else
   :class:`InputError`: rasterising a contour drawn on another orientation needs a 3D method.
3. Each contour goes to the **nearest slice**: ``k = floor(z_index + 0.5)``; a contour exactly
   half-way between two voxel centres goes to the higher index. A contour whose nearest slice is
   outside the volume (more than half a slice beyond it) is an :class:`InputError`, never dropped;
   in-plane parts outside the grid are clipped. Malformed contours (coordinates that are not
   x, y, z triples, NaN/inf) are refused; contours of fewer than 3 points enclose nothing.
4. Polygons are filled by :func:`even_odd_fill`, a vectorised scan line: a voxel is inside when
   its **centre** is inside the polygon. Centres exactly on an edge follow the half-open
   (top-left) rule, so two contours sharing an edge never both claim, and then XOR away, a voxel.
   Away from exact edges it agrees with ``skimage.draw.polygon`` pixel for pixel (tested), at a
   fraction of the cost on large contours.
5. Contours on the same slice are combined with **XOR** (even-odd rule), because clinical
   RTSTRUCTs encode a hole as a second contour inside the first (a ring = outer XOR inner), and
   "keyhole" contours are handled by the same even-odd rule inside one polygon. A consequence is
   that two separate contours that overlap leave their overlap empty (the DICOM convention).

On the TCIA soft-tissue-sarcoma RTSTRUCTs this reproduces MIRP's NIfTI masks voxel for voxel
(Dice 1.0 on 3 patients x CT/MR; acceptance test in ``tests/test_rtstruct.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from cmedl.errors import InputError, did_you_mean
from cmedl.io.atomic import atomic_path
from cmedl.io.dicom_write import new_dataset
from cmedl.io.image import Volume

_log = logging.getLogger(__name__)

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Contour types that enclose an area; everything else (POINT, OPEN_*) is ignored.
CLOSED_TYPES = frozenset({"CLOSED_PLANAR", "CLOSED_PLANAR_XOR", ""})
_PLANARITY_TOL = 0.5  # max spread of a contour's z index (in slices)
#: how to rasterise an RTSTRUCT whose reference check fails, when the user knows it fits
_USE_ANYWAY = ("import the series it was drawn on; if the contours do fit this image, use it anyway with "
               "`cmedl data import --no-reference-check` or rasterize_roi(..., check_reference=False)")


@dataclass(frozen=True)
class RoiInfo:
    """One structure of an RTSTRUCT."""

    number: int
    name: str
    n_contours: int  # closed planar contours with points
    frame_of_reference_uid: str


# ---------------------------------------------------------------------------------- reading
def read_rtstruct(path: str | Path) -> Dataset:
    """Read an RTSTRUCT file with pydicom; InputError (naming ``path``) if it is not one."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    if path.is_dir():
        raise InputError("is a folder; pass the RTSTRUCT file", path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"not a readable DICOM file ({type(exc).__name__})", path) from None
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != RTSTRUCT_STORAGE:
        raise InputError(f"is a DICOM {ds.get('Modality', '?')} object, not an RTSTRUCT", path)
    if "StructureSetROISequence" not in ds:
        raise InputError("RTSTRUCT has no StructureSetROISequence", path)
    return ds


def _contour_data(contour: Dataset) -> np.ndarray:
    """ContourData as a flat float array.

    Parses the raw decimal string directly when pydicom has not converted it yet: pydicom's
    per-value DS objects cost about 10x more, which matters for large RTSTRUCTs.
    """
    if "ContourData" not in contour:
        return np.empty(0)
    elem = contour.get_item("ContourData")
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace").strip(" \x00")
        return np.asarray(text.split("\\"), dtype=float) if text else np.empty(0)
    value = contour.ContourData
    return np.atleast_1d(np.asarray(value if value is not None else [], dtype=float))


def _closed_contours(item: Dataset, where: tuple[Path, str] | None = None) -> list[np.ndarray]:
    """The closed contours of an ROI as ``(n, 3)`` point arrays (contours of fewer than 3 points
    enclose nothing and are skipped). A malformed contour (values that are not numbers, a count
    that is not a multiple of 3, NaN/inf) is skipped when only counting (``where`` None) and an
    InputError naming the RTSTRUCT and the ROI when rasterising (``where`` = (path, ROI name))."""
    out = []
    for number, c in enumerate(item.get("ContourSequence", []) or [], start=1):
        if str(c.get("ContourGeometricType", "")).upper() not in CLOSED_TYPES:
            continue
        try:
            pts = _contour_data(c)
            problem = (f"has {pts.size} coordinates, not x, y, z triples" if pts.size % 3
                       else "" if np.isfinite(pts).all() else "has a NaN or infinite coordinate")
        except (TypeError, ValueError):
            problem = "has ContourData that are not numbers"
        if problem:
            if where is None:
                continue
            raise InputError(f"ROI '{where[1]}': contour {number} {problem}; fix or remove it", where[0])
        if pts.size >= 9:  # fewer than 3 points encloses nothing
            out.append(pts.reshape(-1, 3))
    return out


def _contour_items(ds: Dataset) -> dict[int, Dataset]:
    items = ds.get("ROIContourSequence", []) or []
    return {int(item.ReferencedROINumber): item for item in items if "ReferencedROINumber" in item}


def describe_rois(rtstruct_path: str | Path) -> list[RoiInfo]:
    """All ROIs of an RTSTRUCT in file order, with their number of closed contours."""
    ds = read_rtstruct(rtstruct_path)
    contours = _contour_items(ds)
    out = []
    for roi in ds.StructureSetROISequence:
        number = int(roi.get("ROINumber", -1))
        item = contours.get(number)
        out.append(
            RoiInfo(
                number=number,
                name=str(roi.get("ROIName", "")),
                n_contours=0 if item is None else len(_closed_contours(item)),
                frame_of_reference_uid=str(roi.get("ReferencedFrameOfReferenceUID", "") or ""),
            )
        )
    return out


def list_rois(rtstruct_path: str | Path) -> list[str]:
    """Names of the ROIs (structures) in an RTSTRUCT file, in file order."""
    return [r.name for r in describe_rois(rtstruct_path)]


def _referenced_uids(ds: Dataset) -> tuple[set[str], set[str]]:
    """(frame-of-reference UIDs, series UIDs) referenced by the structure set."""
    frames, series = set(), set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        if fr.get("FrameOfReferenceUID"):
            frames.add(str(fr.FrameOfReferenceUID))
        for study in fr.get("RTReferencedStudySequence", []) or []:
            for se in study.get("RTReferencedSeriesSequence", []) or []:
                if se.get("SeriesInstanceUID"):
                    series.add(str(se.SeriesInstanceUID))
    return frames, series


def _check_reference(ds: Dataset, roi: Dataset, reference: Volume, path: Path) -> None:
    """The ROI must live in the reference volume's frame of reference (when both are known).

    The frame of reference is what makes patient coordinates comparable, so it decides. The
    referenced SeriesInstanceUID is only compared when a frame of reference is missing on either
    side: re-exported or cropped series (e.g. the MIRP test data) keep the frame of reference but
    get new series UIDs, and their contours are still exactly on the image.
    """
    ref_frame = reference.meta.get("FrameOfReferenceUID")
    ref_series = reference.meta.get("SeriesInstanceUID")
    frames, series = _referenced_uids(ds)
    roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
    rs_frames = {roi_frame} if roi_frame else frames
    if ref_frame and rs_frames:
        if ref_frame not in rs_frames:
            raise InputError(
                f"ROI '{roi.get('ROIName', '')}' is in frame of reference {min(rs_frames)} but the "
                f"reference image is in {ref_frame}: not the image this RTSTRUCT was drawn on "
                f"({_USE_ANYWAY})",
                path,
            )
        return
    if ref_series and series and ref_series not in series:
        raise InputError(
            f"references series {min(series)} but the reference image is series {ref_series} "
            f"({_USE_ANYWAY})",
            path,
        )


def _find_roi(ds: Dataset, roi_name: str, path: Path) -> Dataset:
    rois = list(ds.StructureSetROISequence)
    names = [str(r.get("ROIName", "")) for r in rois]
    hits = [r for r, n in zip(rois, names) if n == roi_name]
    if not hits:  # accept a different case when that is unambiguous
        hits = [r for r, n in zip(rois, names) if n.lower() == roi_name.lower()]
    if not hits:
        # accept a unique ROI that extends the name with a suffix after a separator, as exports
        # often append the modality or phase ("GTV_Mass" -> "GTV_Mass_CT"); logged, never silent
        want = roi_name.lower()
        ext = [(r, n) for r, n in zip(rois, names)
               if n.lower().startswith(want) and n[len(roi_name):len(roi_name) + 1] in ("_", "-", " ", ".")]
        if len(ext) == 1:
            _log.warning("%s: no ROI named '%s'; using '%s'", path, roi_name, ext[0][1])
            hits = [ext[0][0]]
    if not hits:
        raise InputError(did_you_mean(roi_name, names, "ROI"), path)
    if len(hits) > 1:
        raise InputError(
            f"{len(hits)} ROIs are named '{roi_name}' (numbers {[int(r.ROINumber) for r in hits]})",
            path,
        )
    return hits[0]


def rasterize_roi(
    rtstruct_path: str | Path,
    roi_name: str,
    reference: Volume,
    check_reference: bool = True,
) -> np.ndarray:
    """Rasterise one ROI of an RTSTRUCT onto ``reference``'s voxel grid.

    Args:
        rtstruct_path: the RTSTRUCT file.
        roi_name: the ROI name (exact; else a unique case-insensitive match; else the unique ROI that
            extends it after a separator, e.g. "GTV_Mass" -> "GTV_Mass_CT", with a logged warning).
        reference: the image the mask is for; its spacing/origin/direction define the grid.
        check_reference: when the reference came from DICOM (``meta`` has FrameOfReferenceUID /
            SeriesInstanceUID), refuse an RTSTRUCT drawn in another frame of reference.

    Returns:
        ``uint8`` mask ``[z, y, x]`` of ``reference.shape`` with values 0/1 (rules in the module
        docstring: nearest slice, voxel centre inside, even-odd holes). It may be empty when the
        contours lie outside the grid in-plane; callers that need a lesion check ``mask.any()``.

    Raises:
        InputError: naming the RTSTRUCT: not an RTSTRUCT, unknown ROI (listing the names), ROI
            with no closed contour ("empty"), wrong frame of reference, a malformed contour, a
            contour not parallel to the reference slices or outside their range.
    """
    path = Path(rtstruct_path)
    ds = read_rtstruct(path)
    roi = _find_roi(ds, roi_name, path)
    name = str(roi.get("ROIName", roi_name))
    if check_reference:
        _check_reference(ds, roi, reference, path)
    item = _contour_items(ds).get(int(roi.get("ROINumber", -1)))
    contours = [] if item is None else _closed_contours(item, (path, name))
    if not contours:
        raise InputError(f"ROI '{name}' is empty (no closed planar contour data)", path)

    nz, ny, nx = reference.shape
    per_slice: dict[int, list[np.ndarray]] = {}
    for pts in contours:
        idx = reference.physical_to_index(pts)  # (n, 3) continuous (x, y, z) indices
        z = idx[:, 2]
        if float(z.max() - z.min()) > _PLANARITY_TOL:
            raise InputError(
                f"ROI '{name}': a contour spans {float(z.max() - z.min()):.2f} slices of the "
                "reference image; contours must be parallel to its slices",
                path,
            )
        # round to 1e-6 so float noise on an exact half-way plane does not flip the choice
        k = int(np.floor(np.round(float(z.mean()), 6) + 0.5))
        if not 0 <= k < nz:  # more than half a slice beyond the first or last slice
            raise InputError(f"ROI '{name}': a contour lies at slice position {float(z.mean()):.2f}, outside the "
                             f"image's slices 0-{nz - 1}: the ROI does not fit this image (a cropped series?)", path)
        per_slice.setdefault(k, []).append(idx[:, :2])
    mask = np.zeros((nz, ny, nx), dtype=np.uint8)
    for k, polygons in per_slice.items():
        mask[k] = even_odd_fill(polygons, (ny, nx))
    return mask


def even_odd_fill(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons on a 2D grid with the even-odd rule; returns ``uint8`` ``[y, x]``.

    Args:
        polygons: ``(n, 2)`` vertex arrays in continuous pixel indices ``(x, y)`` (pixel centres
            at integers); closed implicitly. Several polygons combine by XOR (parity), so a
            polygon inside another is a hole.
        shape: ``(ny, nx)``.

    A pixel is inside when its centre is inside; centres exactly on an edge follow the usual
    half-open (top-left) convention, so polygons sharing an edge never both claim a pixel.

    Hand-written scan line instead of ``skimage.draw.polygon`` because that tests every pixel
    of the bounding box against every edge (O(area x vertices): about 1 s for one 1000-point body
    contour on a 512x512 slice, minutes per RTSTRUCT), while this is O(edges x rows + area) and
    vectorised: for each pixel-centre row, every edge crossing at ``x`` toggles the parity from
    column ``ceil(x)`` onwards; a cumulative sum of the toggles gives the even-odd inside.
    """
    ny, nx = shape
    toggles = np.zeros(ny * (nx + 1), dtype=np.int64)
    for poly in polygons:
        poly = np.asarray(poly, dtype=float)
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        # rows r with lo <= r < hi (half-open, so a vertex is counted once; horizontal edges none)
        r_first = np.clip(np.ceil(np.minimum(y0, y1)), 0, ny).astype(np.int64)
        r_end = np.clip(np.ceil(np.maximum(y0, y1)), 0, ny).astype(np.int64)
        counts = np.maximum(r_end - r_first, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(x0)), counts)
        starts = np.cumsum(counts) - counts
        rows = r_first[edge] + (np.arange(total) - np.repeat(starts, counts))
        t = (rows - y0[edge]) / (y1[edge] - y0[edge])
        xs = x0[edge] + t * (x1[edge] - x0[edge])
        cols = np.clip(np.ceil(xs), 0, nx).astype(np.int64)  # column nx = right of the grid
        toggles += np.bincount(rows * (nx + 1) + cols, minlength=toggles.size)
    inside = np.cumsum(toggles.reshape(ny, nx + 1), axis=1)[:, :nx] & 1
    return inside.astype(np.uint8)


# ---------------------------------------------------------------------------------- writing
Contour = np.ndarray | tuple[str, np.ndarray]


def write_rtstruct(
    path: str | Path,
    reference: Volume,
    rois: Mapping[str, Sequence[Contour]],
    *,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
) -> Path:
    """Write a minimal RTSTRUCT with the given contours (patient mm), atomically.

    Args:
        path: output ``.dcm`` file.
        reference: the image the structures belong to; its ``meta`` supplies FrameOfReferenceUID,
            SeriesInstanceUID, StudyInstanceUID and PatientID unless overridden.
        rois: ROI name -> contours; a contour is an ``(n, 3)`` array of LPS mm points
            (``CLOSED_PLANAR``) or ``(geometric_type, points)`` such as ``("POINT", p)``.
            An empty list writes an ROI without contour data.

    Used by the tests and to hand synthetic masks to DICOM tools; it writes no
    ContourImageSequence (optional in the standard).
    """
    meta_uid = reference.meta.get
    frame = frame_of_reference_uid or meta_uid("FrameOfReferenceUID") or generate_uid()
    series = series_uid or meta_uid("SeriesInstanceUID") or generate_uid()
    ds = new_dataset(RTSTRUCT_STORAGE, "RTSTRUCT", meta_uid("PatientID", "ANONYMOUS"))
    ds.StudyInstanceUID = meta_uid("StudyInstanceUID") or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "cmedl"
    rfor = Dataset()
    rfor.FrameOfReferenceUID = frame
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series
    study.RTReferencedSeriesSequence = DicomSequence([ref_series])
    rfor.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([rfor])
    ssroi, roic, obs = [], [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        r = Dataset()
        r.ROINumber = number
        r.ReferencedFrameOfReferenceUID = frame
        r.ROIName = name
        r.ROIGenerationAlgorithm = "MANUAL"
        ssroi.append(r)
        items = []
        for c in contours:
            ctype, pts = ("CLOSED_PLANAR", c) if isinstance(c, np.ndarray) else c
            pts = np.asarray(pts, dtype=float).reshape(-1, 3)
            ci = Dataset()
            ci.ContourGeometricType = ctype
            ci.NumberOfContourPoints = len(pts)
            ci.ContourData = [f"{v:.4f}" for v in pts.ravel()]
            items.append(ci)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        if items:
            rc.ContourSequence = DicomSequence(items)
        roic.append(rc)
        o = Dataset()
        o.ObservationNumber = number
        o.ReferencedROINumber = number
        o.RTROIInterpretedType = "GTV"
        o.ROIInterpreter = ""
        obs.append(o)
    ds.StructureSetROISequence = DicomSequence(ssroi)
    ds.ROIContourSequence = DicomSequence(roic)
    ds.RTROIObservationsSequence = DicomSequence(obs)
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
