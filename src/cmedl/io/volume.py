"""The :class:`Volume` type and reading/writing of image files through SimpleITK.

Axis orders (the one convention everything in cmedl follows):

- ``Volume.array`` is a numpy array indexed ``[z, y, x]`` (slice, row, column), exactly what
  ``SimpleITK.GetArrayFromImage`` returns.
- ``spacing`` and ``origin`` are in millimetres and ordered ``(x, y, z)``, as in ITK/SimpleITK.
- ``direction`` is the 3x3 direction-cosine matrix, row-major, as a 9-tuple (ITK order): column
  ``j`` is the patient-space (LPS) direction of array axis ``x, y, z`` for ``j = 0, 1, 2``.

A voxel at array index ``[k, j, i]`` sits at patient position
``origin + direction @ (spacing * (i, j, k))``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmedl.errors import GeometryError, InputError

#: File suffixes read and written through SimpleITK.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """A 3D image: voxels ``[z, y, x]`` plus its physical geometry (spacing/origin ``(x, y, z)``)."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InputError(f"a Volume needs a 3D [z, y, x] array, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in self.direction)
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InputError("spacing and origin need 3 values and direction 9")
        if min(self.spacing) <= 0:
            raise InputError(f"spacing must be positive, got {self.spacing}")

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array axis order ``(z, y, x)``: what metric functions take."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume on the same grid with other voxels (e.g. a mask for this image)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise GeometryError(f"array shape {array.shape} differs from volume shape {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, dict(self.meta))

    def same_geometry(self, other: Volume, atol: float = 1e-3) -> bool:
        """True if both volumes share shape, spacing, origin and direction (within ``atol``)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def geometry_difference(self, other: Volume, atol: float = 1e-3) -> str | None:
        """Describe the first way the grids differ, or ``None`` if they are the same."""
        for name in ("shape", "spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            same = a == b if name == "shape" else np.allclose(a, b, atol=atol)
            if not same:
                fmt = (lambda v: str(tuple(round(float(x), 4) for x in v))) if name != "shape" else str
                return f"{name} {fmt(a)} != {fmt(b)}"
        return None

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., 3)`` in ``(x, y, z)`` order to patient mm."""
        idx = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction_matrix.T

    def physical_to_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """Map patient mm points ``(..., 3)`` to continuous indices in ``(x, y, z)`` order."""
        pts = np.asarray(points_xyz, dtype=float) - np.asarray(self.origin)
        return (pts @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    # ------------------------------------------------------------------ SimpleITK
    def to_sitk(self) -> sitk.Image:
        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: dict[str, str] | None = None) -> Volume:
        if image.GetDimension() != 3:
            raise InputError(f"image is {image.GetDimension()}D; a 3D volume is required")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                "a scalar volume is required"
            )
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
            dict(meta or {}),
        )


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
        from cmedl.io.dicom import read_dicom_series

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
    import gzip

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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Guarantees that a crash or an error never leaves a partial output file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    suffix = next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), path.suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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


def check_same_geometry(a: Volume, b: Volume, a_name: str | Path, b_name: str | Path) -> None:
    """Raise :class:`GeometryError` naming both files if the two volumes' grids differ."""
    diff = a.geometry_difference(b)
    if diff is not None:
        raise GeometryError(f"{a_name} and {b_name} are on different voxel grids: {diff}")
