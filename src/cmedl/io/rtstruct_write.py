"""Writing a binary mask as a DICOM RT Structure Set that references its source image series.

The public entry point is :func:`cmedl.io.dicom_export.export_mask` (checks, then writes
atomically); this module builds the dataset: :func:`rtstruct_from_mask` takes the mask (a
:class:`Volume` on the series' grid) and the series' headers **in the volume's z order**, and
returns a pydicom Dataset.

Contours (:func:`trace_slice`, :func:`mask_contours`):

- Each slice's mask is traced along **voxel boundaries** ("crack following"): every contour vertex
  is a corner of a voxel, at continuous index ``(i ± 0.5, j ± 0.5)``, and only the corners where the
  boundary turns are kept. The polygons enclose exactly the voxel squares of the mask, so the
  contoured area equals the voxel area (a planning system computes the same volume as the voxel
  count times the voxel volume), and no voxel centre ever lies on an edge: every reader that fills
  "voxel centre inside" (cmedl's :func:`~cmedl.io.rtstruct.rasterize_roi`, skimage.draw.polygon,
  matplotlib's ``Path.contains_points``) gets the mask back voxel for voxel. (Readers that round
  vertices to whole voxels and fill boundary-inclusive, like rt-utils' OpenCV ``fillPoly``, grow
  any contour by about half a voxel; that is their rule, not the contour's position.)
- Every outer boundary and every hole boundary is its own ``CLOSED_PLANAR`` contour on that slice.
  Outer boundaries run one way round and hole boundaries the other, so both the even-odd rule
  (holes by parity: the DICOM convention, and what cmedl's importer does) and the non-zero winding
  rule give the holes back; an island inside a hole is a third, outer-sense contour. Two voxels that
  touch only at a corner belong to different contours (4-connected foreground), so every contour
  is a simple polygon that at most touches another one at a vertex.
- Contour vertices are mapped to patient (LPS) mm along the volume's row and column axes from the
  ImagePositionPatient of the slice they are drawn on, so any direction cosines (flipped rows or
  columns, reversed slice order, oblique) and any spacing come out in the right place, and every
  point lies exactly in the plane of the image it references (``ContourImageSequence``).
- The file is written in Implicit VR Little Endian (the DICOM default): in explicit VR a DS value
  is limited to 64 KiB, which a large structure's contour (thousands of points) can exceed.

Why hand-written tracing: ``skimage.measure.find_contours`` (marching squares) returns iso-lines
through the midpoints between voxel centres, which cut every corner: a single voxel becomes a
diamond of half its area and planning systems under-report volumes of small lesions; no maintained
library we depend on returns the voxel-boundary polygon. The tracing here is 40 lines and is tested
against two independent polygon fills.

An empty mask gives an ROI without contours (a valid structure set: ``ContourSequence`` is
optional), so that "no tumour found" still reaches the planning system as an explicit, named, empty
structure; the caller logs a warning.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import warnings
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from cmedl.errors import InputError
from cmedl.io.image import Volume

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: what RT structure sets conventionally give as the referenced study's SOP class (Study Component
#: Management, retired, but what planning systems and 3D Slicer write and expect)
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
SOFTWARE_NAME = "cmedl"

#: Patient and study attributes copied from the source images (those present). The Type 2 ones
#: among them are written empty when the source lacks them.
PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
TYPE2_PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

#: pydicom's warning for a value longer than its VR allows (e.g. an 18-character AccessionNumber)
LENGTH_WARNING = ".*exceeds the maximum length"

# Directions of boundary edges as (d_row, d_col), in the order a voxel's own boundary is walked:
# top edge rightwards, right edge downwards, bottom edge leftwards, left edge upwards.
_STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))


def software_version() -> str:
    """cmedl's version (from the installed package metadata; ``"unknown"`` when not installed)."""
    try:
        return importlib.metadata.version(SOFTWARE_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def trace_slice(mask: np.ndarray) -> list[np.ndarray]:
    """The voxel-boundary contours of a 2D mask ``[y, x]``: a list of ``(n, 2)`` arrays of
    ``(x, y)`` continuous indices (voxel centres at integers, so every vertex is at half-integers).

    Outer boundaries and hole boundaries are separate closed polygons (implicitly closed: the first
    vertex is not repeated), outer ones in the opposite sense to holes; only turning vertices are
    kept.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    f = m[1:-1, 1:-1]
    # Edges of foreground voxels facing background, as (start corner row, col, direction); corner
    # (r, c) is the top-left corner of voxel (r, c).
    starts = []
    for d, (neighbour, dr, dc) in enumerate(
        ((m[:-2, 1:-1], 0, 0), (m[1:-1, 2:], 0, 1), (m[2:, 1:-1], 1, 1), (m[1:-1, :-2], 1, 0))
    ):
        rows, cols = np.nonzero(f & ~neighbour)
        starts.append(np.stack([rows + dr, cols + dc, np.full(rows.size, d)], axis=1))
    edges = np.concatenate(starts)
    if edges.size == 0:
        return []
    # Each corner has one or two outgoing edges (two where voxels touch only diagonally).
    out: dict[tuple[int, int], list[int]] = {}
    for r, c, d in edges.tolist():
        out.setdefault((r, c), []).append(d)
    unused = {(r, c, d) for r, c, d in edges.tolist()}
    loops = []
    for start in sorted(unused):  # deterministic output
        if start not in unused:
            continue
        r, c, d = start
        vertices, directions = [], []
        while True:
            unused.discard((r, c, d))
            vertices.append((r, c))
            directions.append(d)
            r, c = r + _STEPS[d][0], c + _STEPS[d][1]
            choices = out[(r, c)]
            # At a diagonal contact keep walking round the same voxel (its next edge, a clockwise
            # turn on screen): the successor map is then a bijection, so the walk returns to
            # `start`.
            d = choices[0] if len(choices) == 1 else (d + 1) % 4
            if (r, c, d) == start:
                break
        keep = [i for i in range(len(directions)) if directions[i] != directions[i - 1]]
        corners = np.asarray([vertices[i] for i in keep], dtype=float)
        loops.append(np.stack([corners[:, 1] - 0.5, corners[:, 0] - 0.5], axis=1))
    return loops


def mask_contours(
    mask: Volume, slice_origins: np.ndarray | None = None
) -> dict[int, list[np.ndarray]]:
    """Slice index ``k`` -> the closed contours of ``mask.array[k] > 0`` as ``(n, 3)`` LPS mm
    points.

    ``slice_origins`` (``[nz, 3]``, the ImagePositionPatient of each slice) puts each slice's
    contours in the plane of that image exactly, even where the reader accepted slightly uneven
    slice steps; without it the positions come from the volume's uniform grid.
    """
    array = np.asarray(mask.array) > 0
    origin = np.asarray(mask.origin)
    out: dict[int, list[np.ndarray]] = {}
    for k in np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1)):
        plane = (
            origin
            if slice_origins is None
            else np.asarray(slice_origins[k], float)
            - float(k) * (mask.spacing[2] * mask.direction_matrix[:, 2])
        )
        loops = []
        for xy in trace_slice(array[k]):
            index = np.column_stack([xy, np.full(len(xy), float(k))])
            loops.append(mask.index_to_physical(index) - origin + plane)
        out[int(k)] = loops
    return out


def _ds_values(points: np.ndarray) -> list[str]:
    """Coordinates as DICOM decimal strings (0.1 µm; at most 16 characters for |v| < 1e10 mm)."""
    return [f"{v:.4f}" for v in np.where(np.abs(points) < 5e-5, 0.0, points).ravel()]


def _image_ref(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _new_instance(first: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    # Implicit VR: in explicit VR a DS value has a 2-byte length, so a contour of more than ~5000
    # points (a large structure traced at voxel boundaries) could not be stored as DS
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if "SpecificCharacterSet" in first:  # the copied names are in the source's character set
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    now = datetime.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    with warnings.catch_warnings():  # copied verbatim, even where the source breaks a length limit
        warnings.filterwarnings("ignore", message=LENGTH_WARNING)
        for tag in PATIENT_STUDY_TAGS:
            if tag in first:
                setattr(ds, tag, first[tag].value)
    for tag in TYPE2_PATIENT_STUDY_TAGS:
        if tag not in ds:
            setattr(ds, tag, "")
    # RT Series and General Equipment modules
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9001
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.OperatorsName = ""
    ds.Manufacturer = SOFTWARE_NAME
    ds.ManufacturerModelName = SOFTWARE_NAME
    ds.SoftwareVersions = software_version()
    ds.InstanceNumber = 1
    return ds


def rtstruct_from_mask(
    mask: Volume,
    sources: Sequence[Dataset],
    *,
    roi_name: str = "GTV",
    colour: tuple[int, int, int] = (255, 0, 0),
    interpreted_type: str = "GTV",
) -> Dataset:
    """An RT Structure Set with one ROI traced from ``mask > 0`` (see the module docstring).

    Args:
        mask: the mask on the grid of the source series (checked by the caller).
        sources: the series' headers, one per slice **in the order of** ``mask.array``'s z axis;
            each with SOPClassUID, SOPInstanceUID, FrameOfReferenceUID, StudyInstanceUID,
            SeriesInstanceUID (checked by the caller). Patient and study attributes are copied
            from the first.
        roi_name: ROIName (at most 64 characters).
        colour: ROIDisplayColor, RGB 0-255.
        interpreted_type: RTROIInterpretedType (GTV, CTV, PTV, ORGAN, ...).

    Returns:
        The dataset, ready for ``save_as``; ROIGenerationAlgorithm AUTOMATIC, Manufacturer and
        software "cmedl" and its version, ApprovalStatus UNAPPROVED.
    """
    if len(sources) != mask.shape[0]:
        raise InputError(f"{len(sources)} source images for a mask of {mask.shape[0]} slices")
    first = sources[0]
    frame = str(first.FrameOfReferenceUID)
    ds = _new_instance(first)
    ds.StructureSetLabel = roi_name[:16]
    ds.StructureSetName = roi_name[:64]
    ds.StructureSetDescription = f"automatic segmentation by {SOFTWARE_NAME} {software_version()}"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_image_ref(s) for s in sources])
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_SOP_CLASS
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame
    frame_item.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_item])

    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = frame
    roi.ROIName = roi_name
    roi.ROIDescription = f"{interpreted_type} segmented automatically by {SOFTWARE_NAME}"
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{SOFTWARE_NAME} {software_version()}"
    ds.StructureSetROISequence = DicomSequence([roi])

    items = []
    origins = np.asarray([[float(v) for v in s.ImagePositionPatient] for s in sources])
    for k, loops in sorted(mask_contours(mask, origins).items()):
        for points in loops:
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_image_ref(sources[k])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = len(items) + 1
            item.ContourData = _ds_values(points)
            items.append(item)
    contour = Dataset()
    contour.ReferencedROINumber = 1
    contour.ROIDisplayColor = [int(v) for v in colour]
    if items:
        contour.ContourSequence = DicomSequence(items)
    ds.ROIContourSequence = DicomSequence([contour])

    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = interpreted_type
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence = DicomSequence([observation])
    return ds
