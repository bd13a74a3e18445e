"""Reading one DICOM image series into a :class:`~cmedl.io.image.Volume` (rules in :mod:`cmedl.io.dicom`).

The geometry is built here from the headers instead of trusting a generic series reader: slices
are sorted along the normal of ImageOrientationPatient, the slice step comes from the positions,
and mixed, gapped, non-uniform, duplicated or sheared series are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from cmedl.errors import InputError, did_you_mean
from cmedl.io.dicom_scan import (
    check_folder,
    describe_series,
    is_image_header,
    scan_folder,
    series_info,
)
from cmedl.io.image import Volume

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
    folder = check_folder(folder)
    series = scan_folder(folder)
    images = {uid: items for uid, items in series.items() if series_info(uid, items).is_image}
    if not images:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        others = sorted({series_info(u, i).modality or "?" for u, i in series.items()})
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
                + describe_series(series_info(u, i) for u, i in sorted(images.items())),
                folder,
            )
        series_uid = next(iter(images))
    elif series_uid not in images:
        raise InputError(did_you_mean(series_uid, images, "SeriesInstanceUID"), folder)
    items = [(p, ds) for p, ds in images[series_uid] if is_image_header(ds)]
    non_loc = [
        (p, ds)
        for p, ds in items
        if "LOCALIZER" not in [str(t).upper() for t in ds.get("ImageType", [])]
    ]
    items = non_loc or items
    return _assemble(folder, items)


def _assemble(folder: Path, items: list[tuple[Path, Dataset]]) -> Volume:
    """Check the geometry of one series' slices, sort them and load the voxels."""
    _check_single_frame_greyscale(folder, items)
    row, col, pix = _in_plane_geometry(folder, items)
    normal = np.cross(row, col)
    pos = np.stack([_floats(ds, "ImagePositionPatient", 3, p) for p, ds in items])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    pos, dist = pos[order], dist[order]
    paths = [items[i][0] for i in order]
    headers = [items[i][1] for i in order]
    _check_slice_positions(folder, paths, pos, dist, normal, float(pix[0].min()))

    spacing_z = float((dist[-1] - dist[0]) / (len(dist) - 1))
    direction = np.stack([row, col, normal], axis=1)  # columns: x, y, z axes in LPS
    array = _load_voxels(folder, paths, headers)
    return Volume(
        array,
        spacing=(float(pix[0, 1]), float(pix[0, 0]), spacing_z),
        origin=tuple(float(v) for v in pos[0]),
        direction=tuple(float(v) for v in direction.ravel()),
        meta=_series_meta(folder, headers[0]),
    )


def _check_single_frame_greyscale(folder: Path, items: list[tuple[Path, Dataset]]) -> None:
    """Refuse multi-frame and colour objects, and a series of a single slice."""
    for p, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(
                f"{p.name} is a multi-frame (enhanced) DICOM object; not supported", folder
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{p.name} is a colour image; a greyscale series is required", folder)
    if len(items) == 1:
        raise InputError("the series has a single slice (2D); a 3D series is required", folder)


def _in_plane_geometry(
    folder: Path, items: list[tuple[Path, Dataset]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row and column cosines and the per-slice PixelSpacing ``[n, 2]``, checked consistent.

    Every slice must share ImageOrientationPatient, PixelSpacing and matrix size, and the row and
    column cosines must be orthogonal.
    """
    paths = [p for p, _ in items]
    headers = [ds for _, ds in items]
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
    col = col - (row @ col) * row  # remove the decimal-string rounding noise: Volume needs orthonormal axes
    return row, col / np.linalg.norm(col), pix


def _check_slice_positions(
    folder: Path,
    paths: list[Path],
    pos: np.ndarray,
    dist: np.ndarray,
    normal: np.ndarray,
    pixel_size: float,
) -> None:
    """Refuse duplicate positions, a missing slice, non-uniform steps or in-plane drift (tilt).

    ``pos`` (patient mm) and ``dist`` (along ``normal``) are sorted by ``dist``, like ``paths``;
    ``pixel_size`` is the smaller in-plane spacing (mm).
    """
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
    if np.abs(drift).max() > _SHEAR_FRACTION * pixel_size:
        raise InputError(
            f"slice positions drift in-plane by up to {np.abs(drift).max():.2f} mm (gantry tilt or sheared "
            "acquisition); resample the series first",
            folder,
        )


def _series_meta(folder: Path, first: Dataset) -> dict[str, str]:
    """``Volume.meta`` of a series: ``source`` (the folder) plus :data:`META_TAGS` of its first slice."""
    meta = {"source": str(folder)}
    for tag in META_TAGS:
        value = first.get(tag, None)
        if value is not None and str(value).strip():
            meta[tag] = str(value).strip()
    return meta


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
