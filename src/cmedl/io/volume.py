"""Reading and writing image files (NIfTI, NRRD, MHA/MHD through SimpleITK; DICOM series folders).

The :class:`~cmedl.io.image.Volume` type and its axis conventions live in :mod:`cmedl.io.image`;
it, :data:`IMAGE_SUFFIXES`, :func:`atomic_path` and :func:`check_same_geometry` are re-exported
here, so ``from cmedl.io.volume import Volume`` keeps working.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmedl.errors import InputError
from cmedl.io.atomic import atomic_path
from cmedl.io.dicom import read_dicom_series
from cmedl.io.image import IMAGE_SUFFIXES, Volume, check_same_geometry

__all__ = [
    "IMAGE_SUFFIXES",
    "Volume",
    "atomic_path",
    "check_same_geometry",
    "nifti_has_nonfinite",
    "read_volume",
    "write_volume",
]


def _has_image_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def read_volume(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read a 3D volume from NIfTI, NRRD, MHA/MHD, or a DICOM series folder.

    Args:
        path: an image file, or a folder holding one DICOM series (or several: then pass
            ``series_uid``).
        series_uid: SeriesInstanceUID to pick when a DICOM folder holds several series.

    Raises:
        InputError: one line naming ``path`` and the problem (missing, unreadable, not 3D, ...).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid)
    if path.suffix.lower() == ".dcm":
        raise InputError("is a single DICOM file; pass the folder holding the whole series", path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "ERROR" in line or "rror" in line), "")
        raise InputError(f"cannot read image ({detail.strip()[:160] or 'unreadable or corrupt'})", path) from None
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and 1 in image.GetSize()[2:]):
        raise InputError(f"image is 2D (size {image.GetSize()}); a 3D volume is required", path)
    try:
        vol = Volume.from_sitk(image, meta={"source": str(path)})
    except InputError as exc:
        raise InputError(str(exc), path) from None
    if np.issubdtype(vol.array.dtype, np.floating) and (
        not np.isfinite(vol.array).all()
        or (path.name.lower().endswith((".nii", ".nii.gz")) and nifti_has_nonfinite(path))
    ):
        # has_nonfinite also covers NIfTI files whose NaN SimpleITK read as 0: consumers refuse them
        vol.meta["has_nonfinite"] = "1"
    return vol


#: NIfTI datatype codes of real floating-point voxels (the only ones that can hold NaN/Inf).
_NIFTI_FLOAT_DTYPES = {16: "f4", 64: "f8"}


def nifti_has_nonfinite(path: str | Path, chunk_bytes: int = 1 << 24) -> bool:
    """Whether a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) stores NaN or infinite voxel values.

    Written by hand because SimpleITK's NIfTI reader silently turns NaN and Inf into 0 (checked with
    SimpleITK 2.5: NRRD and MHA keep them), which would make a NaN-padded resampled scan look like water
    instead of being refused. Reads the header and streams the float payload in chunks (integer files
    are not scanned: they cannot hold NaN). Returns False for anything it cannot parse.
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
            if len(head) < 348:
                return False
            for endian in "<>":
                size = int(np.frombuffer(head[:4], f"{endian}i4")[0])
                if size in (348, 540):
                    break
            else:
                return False
            if size == 348:  # NIfTI-1: datatype at 70 (int16), vox_offset at 108 (float32)
                code = int(np.frombuffer(head[70:72], f"{endian}i2")[0])
                offset = int(np.frombuffer(head[108:112], f"{endian}f4")[0])
            else:  # NIfTI-2: datatype at 12 (int16), vox_offset at 168 (int64)
                code = int(np.frombuffer(head[12:14], f"{endian}i2")[0])
                offset = int(np.frombuffer(head[168:176], f"{endian}i8")[0])
            if code not in _NIFTI_FLOAT_DTYPES:
                return False
            dtype = np.dtype(endian + _NIFTI_FLOAT_DTYPES[code])
            f.seek(offset)  # gzip: decompresses up to there
            chunk = max(dtype.itemsize, chunk_bytes - chunk_bytes % dtype.itemsize)
            while block := f.read(chunk):
                usable = len(block) - len(block) % dtype.itemsize
                if not np.isfinite(np.frombuffer(block[:usable], dtype)).all():
                    return True
    except (OSError, EOFError, ValueError):
        return False
    return False


def write_volume(volume: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``volume`` to NIfTI/NRRD/MHA (chosen by suffix), atomically. Returns the path."""
    path = Path(path)
    if not _has_image_suffix(path) or path.name.lower().endswith((".mhd", ".nhdr")):
        raise InputError(
            "unsupported output suffix; use .nii.gz, .nii, .nrrd or .mha", path
        )
    with atomic_path(path) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=compress)
    return path
