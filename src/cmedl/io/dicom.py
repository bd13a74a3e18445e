"""Reading DICOM image series into a :class:`~cmedl.io.volume.Volume` (and writing simple ones).

:func:`read_dicom_series` reads one series from a folder with pydicom and builds the geometry
itself instead of trusting a generic series reader, because the checks a segmentation pipeline
needs are exactly the ones generic readers skip silently:

- files are grouped by ``SeriesInstanceUID``; non-image objects in the same folder (RTSTRUCT,
  RTPLAN, RTDOSE, SEG, SR, ...) and non-DICOM files are ignored, as are LOCALIZER images mixed
  into an axial series;
- slices are sorted by ``ImagePositionPatient`` projected on the slice normal
  ``n = row x col`` (from ``ImageOrientationPatient``), never by file name or InstanceNumber;
- the slice spacing comes from the positions, never from ``SliceThickness``;
- a series with a missing slice (a gap over 1.5x the median spacing), non-uniform spacing,
  duplicate positions, mixed orientation / pixel spacing / matrix size, a gantry tilt, or a single
  slice is refused with a one-line :class:`~cmedl.errors.InputError` naming the folder;
- ``RescaleSlope``/``RescaleIntercept`` are applied per slice (CT comes out in HU); the result is
  ``int16`` when that is exact, else ``float32``.

Geometry follows :mod:`cmedl.io.volume`: array ``[z, y, x]`` (slice, row, column), spacing
``(x, y, z)`` = ``(PixelSpacing[1], PixelSpacing[0], slice step)`` mm, origin = position of the
first slice along the normal, direction columns ``(row cosines, column cosines, normal)`` in LPS.
This is what SimpleITK/ITK produce for the same series, oblique orientations included.

:func:`write_dicom_series` writes a Volume as a minimal uncompressed CT or MR series (used by the
tests and to export synthetic data to DICOM tools).
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cmedl.errors import InputError, did_you_mean
from cmedl.io.volume import Volume, atomic_path

#: Modalities of DICOM objects that are never part of an image volume.
NON_IMAGE_MODALITIES = frozenset(
    {
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTRECORD",
        "SEG",
        "REG",
        "PR",
        "KO",
        "SR",
        "DOC",
        "RWV",
        "PLAN",
    }
)

#: SOP classes written by :func:`write_dicom_series`.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

#: Tags copied from the first slice into ``Volume.meta`` (when present and non-empty).
META_TAGS = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "PatientID",
    "SeriesDescription",
    "Manufacturer",
)

# Tolerances (mm unless stated). Positions and cosines are stored as decimal strings, so they
# carry rounding noise of about 1e-5..1e-3.
_COSINE_TOL = 1e-3
_SPACING_TOL = 1e-3
_DUPLICATE_TOL = 1e-2
_GAP_FACTOR = 1.5  # a step over 1.5x the median spacing is a missing slice
_UNIFORM_TOL = 0.1  # other steps must be within 10 % of the median spacing
_SHEAR_FRACTION = 0.1  # in-plane drift of slice positions, as a fraction of the pixel size


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder."""

    uid: str
    modality: str
    description: str
    n_files: int
    is_image: bool = True
    files: tuple[Path, ...] = field(default=(), repr=False, compare=False)


# ---------------------------------------------------------------------------------- scanning
def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file (no pixel data), or ``None`` if it is not a DICOM object."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # Old exports lack the 128-byte preamble + "DICM"; try those only for likely names.
        if path.suffix.lower() not in ("", ".dcm", ".ima", ".dicom"):
            return None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
            return None
        return ds if "SeriesInstanceUID" in ds and "SOPClassUID" in ds else None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None


def _is_image(ds: Dataset) -> bool:
    return (
        str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES
        and "Rows" in ds
        and "Columns" in ds
        and "ImagePositionPatient" in ds
        and "ImageOrientationPatient" in ds
    )


def _scan(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Group the DICOM files directly inside ``folder`` by SeriesInstanceUID (no recursion)."""
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    return series


def _info(uid: str, items: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = items[0][1]
    return SeriesInfo(
        uid=uid,
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        n_files=len(items),
        is_image=any(_is_image(ds) for _, ds in items),
        files=tuple(p for p, _ in items),
    )


def _check_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise InputError("no such folder", folder)
    if not folder.is_dir():
        raise InputError("is not a folder; pass the folder holding the DICOM series", folder)
    return folder


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """List the DICOM series directly inside ``folder`` (image and non-image), sorted by UID.

    Raises:
        InputError: ``folder`` does not exist or is not a folder.
    """
    folder = _check_folder(folder)
    return [_info(uid, items) for uid, items in sorted(_scan(folder).items())]


def _describe_series(infos: Iterable[SeriesInfo]) -> str:
    return "; ".join(
        f"{s.uid} ({s.modality or '?'}, {s.n_files} files{', ' + s.description if s.description else ''})"
        for s in infos
    )


# ---------------------------------------------------------------------------------- reading
def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    try:
        values = np.asarray([float(v) for v in ds[keyword].value], dtype=float)
    except (KeyError, TypeError, ValueError):
        values = np.empty(0)
    if values.shape != (n,) or not np.isfinite(values).all():
        raise InputError(f"file {path.name} has no valid {keyword}", path.parent)
    return values


def _pixels(path: Path) -> tuple[np.ndarray, bool]:
    """Stored pixel values of one slice ``[rows, cols]`` and whether rescale is already applied.

    pydicom decodes uncompressed and (with plugins) compressed data; when it has no decoder for
    the transfer syntax we fall back to SimpleITK's GDCM reader, which decodes JPEG/JPEG-LS/
    JPEG 2000/RLE but applies RescaleSlope/Intercept itself.
    """
    try:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = np.asarray(ds.pixel_array)
    except Exception:  # noqa: BLE001 - any decoder problem -> try GDCM below
        pixels = None
    if pixels is not None:
        return pixels, False
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"cannot decode the pixel data of {path.name}", path.parent) from None
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    return arr, True


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM image series from ``folder`` into a Volume (CT in HU).

    Args:
        folder: folder whose files (not sub-folders) hold the series; other series and
            non-image DICOM objects (RTSTRUCT, ...) may sit beside it.
        series_uid: the SeriesInstanceUID to read; required when the folder holds several
            image series.

    Returns:
        A Volume with array ``[z, y, x]`` (``int16`` when rescaling is exact and fits, else
        ``float32``), spacing/origin ``(x, y, z)`` mm and LPS direction cosines, and ``meta``
        holding ``source`` plus SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID,
        Modality, PatientID, SeriesDescription (those present).

    Raises:
        InputError: one line naming ``folder``: no DICOM images, several series and no uid, an
            unknown uid, a single slice, mixed orientation/spacing/size, duplicate positions,
            a missing slice, non-uniform spacing, gantry tilt, multi-frame or colour images.
    """
    folder = _check_folder(folder)
    series = _scan(folder)
    images = {uid: items for uid, items in series.items() if _info(uid, items).is_image}
    if not images:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        others = sorted({_info(u, i).modality or "?" for u, i in series.items()})
        detail = "no DICOM image files"
        if others:
            detail += f" (only {', '.join(others)} objects)"
        if subdirs:
            detail += (
                f"; it has sub-folders ({', '.join(subdirs[:5])}): pass the one holding the series"
            )
        raise InputError(detail, folder)
    if series_uid is None:
        if len(images) > 1:
            raise InputError(
                f"holds {len(images)} image series; choose one by SeriesInstanceUID: "
                + _describe_series(_info(u, i) for u, i in sorted(images.items())),
                folder,
            )
        series_uid = next(iter(images))
    elif series_uid not in images:
        raise InputError(did_you_mean(series_uid, images, "SeriesInstanceUID"), folder)
    items = [(p, ds) for p, ds in images[series_uid] if _is_image(ds)]
    non_loc = [
        (p, ds)
        for p, ds in items
        if "LOCALIZER" not in [str(t).upper() for t in ds.get("ImageType", [])]
    ]
    items = non_loc or items
    return _assemble(folder, items)


def _assemble(folder: Path, items: list[tuple[Path, Dataset]]) -> Volume:
    """Check the geometry of one series' slices, sort them and load the voxels."""
    paths = [p for p, _ in items]
    headers = [ds for _, ds in items]
    for p, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(
                f"{p.name} is a multi-frame (enhanced) DICOM object; not supported", folder
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{p.name} is a colour image; a greyscale series is required", folder)
    if len(items) == 1:
        raise InputError("the series has a single slice (2D); a 3D series is required", folder)

    iop = np.stack([_floats(ds, "ImageOrientationPatient", 6, p) for p, ds in items])
    bad = np.flatnonzero(np.abs(iop - iop[0]).max(axis=1) > _COSINE_TOL)
    if bad.size:
        raise InputError(
            f"mixed series: ImageOrientationPatient of {paths[bad[0]].name} differs from {paths[0].name}",
            folder,
        )
    pix = np.stack([_floats(ds, "PixelSpacing", 2, p) for p, ds in items])
    bad = np.flatnonzero(np.abs(pix - pix[0]).max(axis=1) > _SPACING_TOL)
    if bad.size:
        raise InputError(
            f"mixed series: PixelSpacing of {paths[bad[0]].name} differs from {paths[0].name}",
            folder,
        )
    if pix.min() <= 0:
        raise InputError("PixelSpacing must be positive", folder)
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
    if len(sizes) > 1:
        raise InputError(
            f"mixed series: images of different sizes {sorted(sizes)} (rows, cols)", folder
        )

    row, col = iop[0, :3], iop[0, 3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise InputError(
            "ImageOrientationPatient row and column cosines are not orthogonal", folder
        )
    normal = np.cross(row, col)
    pos = np.stack([_floats(ds, "ImagePositionPatient", 3, p) for p, ds in items])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    pos, dist = pos[order], dist[order]
    paths = [paths[i] for i in order]
    headers = [headers[i] for i in order]

    steps = np.diff(dist)
    dup = np.flatnonzero(steps < _DUPLICATE_TOL)
    if dup.size:
        raise InputError(
            f"duplicate slice positions: {paths[dup[0]].name} and {paths[dup[0] + 1].name} are both at "
            f"{dist[dup[0]]:.3f} mm along the normal ({dup.size} duplicates; several acquisitions or echoes "
            "in one series?)",
            folder,
        )
    median = float(np.median(steps))
    gap = np.flatnonzero(steps > _GAP_FACTOR * median)
    if gap.size:
        i = gap[0]
        raise InputError(
            f"missing slice: gap of {steps[i]:.3f} mm between {paths[i].name} and {paths[i + 1].name} "
            f"(median spacing {median:.3f} mm; {gap.size} gap(s))",
            folder,
        )
    if np.abs(steps - median).max() > _UNIFORM_TOL * median:
        raise InputError(
            f"non-uniform slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm",
            folder,
        )
    # Positions must advance along the normal: an in-plane drift means a tilted gantry (sheared
    # grid) that a Volume (orthogonal axes) cannot represent.
    drift = pos - pos[0] - np.outer(dist - dist[0], normal)
    if np.abs(drift).max() > _SHEAR_FRACTION * float(pix[0].min()):
        raise InputError(
            f"slice positions drift in-plane by up to {np.abs(drift).max():.2f} mm (gantry tilt or sheared "
            "acquisition); resample the series first",
            folder,
        )

    spacing_z = float((dist[-1] - dist[0]) / (len(dist) - 1))
    direction = np.stack([row, col, normal], axis=1)  # columns: x, y, z axes in LPS
    array = _load_voxels(folder, paths, headers)
    meta = {"source": str(folder)}
    for tag in META_TAGS:
        value = headers[0].get(tag, None)
        if value is not None and str(value).strip():
            meta[tag] = str(value).strip()
    return Volume(
        array,
        spacing=(float(pix[0, 1]), float(pix[0, 0]), spacing_z),
        origin=tuple(float(v) for v in pos[0]),
        direction=tuple(float(v) for v in direction.ravel()),
        meta=meta,
    )


def _load_voxels(folder: Path, paths: list[Path], headers: list[Dataset]) -> np.ndarray:
    """Stack the slices (already sorted) and apply each slice's rescale slope/intercept."""
    raw: list[np.ndarray] = []
    rescale: list[tuple[float, float]] = []
    for path, ds in zip(paths, headers):
        arr, already = _pixels(path)
        if arr.shape != (int(ds.Rows), int(ds.Columns)):
            raise InputError(
                f"{path.name}: pixel data shape {arr.shape} does not match Rows/Columns", folder
            )
        slope = 1.0 if already else float(ds.get("RescaleSlope", 1) or 1)
        intercept = 0.0 if already else float(ds.get("RescaleIntercept", 0) or 0)
        raw.append(arr)
        rescale.append((slope, intercept))
    # int16 when every rescaled value is an integer within the int16 range (typical CT), else float32.
    integral = all(float(s).is_integer() and float(b).is_integer() for s, b in rescale) and all(
        np.issubdtype(a.dtype, np.integer) for a in raw
    )
    if integral:
        lo = min(min(s * float(a.min()), s * float(a.max())) + b for a, (s, b) in zip(raw, rescale))
        hi = max(max(s * float(a.min()), s * float(a.max())) + b for a, (s, b) in zip(raw, rescale))
        integral = lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max
    out = np.empty((len(raw),) + raw[0].shape, dtype=np.int16 if integral else np.float32)
    for k, (a, (s, b)) in enumerate(zip(raw, rescale)):
        if integral:
            out[k] = a.astype(np.int32) * int(s) + int(b)
        else:
            out[k] = a.astype(np.float64) * s + b
    return out


# ---------------------------------------------------------------------------------- writing
def new_dataset(sop_class: str, modality: str, patient_id: str) -> Dataset:
    """An empty DICOM instance of ``sop_class`` with its file meta (explicit VR little endian), a new
    SOPInstanceUID, ``Modality`` and ``PatientID`` set (used by the series and RTSTRUCT writers)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    return ds


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "ANONYMOUS",
    series_description: str = "",
    file_names: list[str] | None = None,
) -> list[Path]:
    """Write ``volume`` as an uncompressed single-frame CT or MR series, one file per z slice.

    Stored values are ``round((value - rescale_intercept) / rescale_slope)`` as int16, so
    reading back gives ``stored * slope + intercept``. The geometry (spacing, origin, oblique
    direction) is written to ImagePositionPatient / ImageOrientationPatient / PixelSpacing; a
    left-handed direction reads back with the z axis flipped (same physical image). UIDs that
    are not given are generated. ``file_names`` (one per slice) replaces ``slice_0000.dcm``, ...

    Returns:
        The written paths, in slice order.
    """
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise InputError(f"can write CT or MR series, not '{modality}'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume.shape
    if file_names is not None and len(file_names) != nz:
        raise InputError(f"file_names has {len(file_names)} names for {nz} slices")
    stored = np.rint((volume.array.astype(np.float64) - rescale_intercept) / rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise InputError("values do not fit int16 with this rescale slope/intercept")
    stored = stored.astype(np.int16)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    d = volume.direction_matrix
    iop = [*d[:, 0], *d[:, 1]]
    today = datetime.date.today().strftime("%Y%m%d")
    paths = []
    for k in range(nz):
        ds = new_dataset(sop_class, modality, patient_id)
        ds.PatientName = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.StudyDate = today
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [
            f"{v:.6f}" for v in volume.index_to_physical(np.array([0.0, 0.0, k]))
        ]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.PixelSpacing = [f"{volume.spacing[1]:.6f}", f"{volume.spacing[0]:.6f}"]
        ds.SliceThickness = f"{volume.spacing[2]:.6f}"
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / (file_names[k] if file_names is not None else f"slice_{k:04d}.dcm")
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
