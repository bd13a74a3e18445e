"""The :class:`Volume` type: a 3D voxel array with its physical geometry (no file reading here).

Axis orders (the one convention everything in cmedl follows):

- ``Volume.array`` is a numpy array indexed ``[z, y, x]`` (slice, row, column), exactly what
  ``SimpleITK.GetArrayFromImage`` returns.
- ``spacing`` and ``origin`` are in millimetres and ordered ``(x, y, z)``, as in ITK/SimpleITK.
- ``direction`` is the 3x3 direction-cosine matrix, row-major, as a 9-tuple (ITK order): column
  ``j`` is the patient-space (LPS) direction of array axis ``x, y, z`` for ``j = 0, 1, 2``.

A voxel at array index ``[k, j, i]`` sits at patient position
``origin + direction @ (spacing * (i, j, k))``.

Kept apart from :mod:`cmedl.io.volume` (file reading/writing) so that the DICOM and RTSTRUCT
modules can use the type without importing the reader that dispatches to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmedl.errors import GeometryError, InputError

#: File suffixes read and written through SimpleITK.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Largest |D^T D - I| entry of a direction matrix still taken as orthonormal. Directions stored as
#: float32 (NIfTI) or 6-8 decimals (DICOM, text headers) are orthonormal to ~1e-6; ITK refuses or
#: silently re-orthogonalises anything worse, so the written image would be on another grid.
ORTHONORMAL_TOL = 1e-4


def orthonormal_error(matrix: np.ndarray) -> str | None:
    """Why a 3x3 direction matrix (columns = axis directions) is not orthonormal, or None if it is."""
    m = np.asarray(matrix, dtype=float).reshape(3, 3)
    if not np.isfinite(m).all():
        return "direction matrix has non-finite values"
    norms = np.linalg.norm(m, axis=0)
    if norms.min() == 0:
        return "direction matrix has a zero axis"
    unit = m / norms
    if np.abs(unit.T @ unit - np.eye(3)).max() > ORTHONORMAL_TOL:
        return "direction matrix is not orthonormal: its axes are sheared; resample to an orthogonal grid first"
    if np.abs(m.T @ m - np.eye(3)).max() > ORTHONORMAL_TOL:
        return "direction matrix is not orthonormal: its axes are not unit vectors"
    return None


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
        if not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise InputError(f"spacing must be positive, got {self.spacing}")
        if not np.isfinite(self.origin).all():
            raise InputError(f"origin must be finite, got {self.origin}")
        problem = orthonormal_error(np.asarray(self.direction).reshape(3, 3))
        if problem is not None:
            raise InputError(problem)

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


def check_same_geometry(a: Volume, b: Volume, a_name: str | Path, b_name: str | Path) -> None:
    """Raise :class:`GeometryError` naming both files if the two volumes' grids differ."""
    diff = a.geometry_difference(b)
    if diff is not None:
        raise GeometryError(f"{a_name} and {b_name} are on different voxel grids: {diff}")
