"""Resampling of volumes with SimpleITK: linear for images, nearest neighbour for labels; origin
and direction are kept."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from cmedl.errors import InputError
from cmedl.io.volume import Volume


def resample_image(
    image: sitk.Image,
    size_xyz: Sequence[int],
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float],
    is_label: bool,
    default: float,
) -> sitk.Image:
    """``image`` resampled onto the grid ``size_xyz``/``spacing_xyz``/``origin_xyz``/``direction``
    (identity transform; nearest neighbour if ``is_label`` else linear; ``default`` outside)."""
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(
        image,
        [int(s) for s in size_xyz],
        sitk.Transform(),
        interp,
        [float(o) for o in origin_xyz],
        [float(s) for s in spacing_xyz],
        [float(d) for d in direction],
        float(default),
        image.GetPixelID(),
    )


def resample_volume(
    volume: Volume, spacing_xyz: Sequence[float | None], is_label: bool = False
) -> Volume:
    """Resample ``volume`` to ``spacing_xyz`` mm (``None`` keeps that axis's spacing and size).

    The origin (centre of voxel 0) and direction are kept; the new size ``round(n * s / s')`` per
    axis covers the same physical extent ``n * s``. Images are interpolated linearly and returned
    as float32 (voxels beyond the last input voxel centre get the nearest edge value; further out
    the volume minimum); labels use nearest neighbour and keep their dtype and values.
    """
    if len(spacing_xyz) != 3:
        raise InputError(f"spacing needs 3 values (x, y, z) in mm, got {tuple(spacing_xyz)}")
    new_spacing = [float(o) if s is None else float(s) for s, o in zip(spacing_xyz, volume.spacing)]
    if min(new_spacing) <= 0:
        raise InputError(f"spacing must be positive, got {tuple(spacing_xyz)}")
    size_xyz = volume.shape[::-1]
    new_size = [
        n if s is None else max(1, round(n * o / float(s)))
        for n, o, s in zip(size_xyz, volume.spacing, spacing_xyz)
    ]
    if list(new_size) == list(size_xyz) and np.allclose(new_spacing, volume.spacing):
        arr = volume.array if is_label else volume.array.astype(np.float32, copy=False)
        return Volume(
            arr.copy(), volume.spacing, volume.origin, volume.direction, dict(volume.meta)
        )
    src = volume if is_label else volume.with_array(volume.array.astype(np.float32, copy=False))
    image = src.to_sitk()
    default = 0.0 if is_label else float(np.min(src.array)) if src.array.size else 0.0
    out = resample_image(
        image, new_size, new_spacing, volume.origin, volume.direction, is_label, default
    )
    arr = sitk.GetArrayFromImage(out)
    if is_label and volume.array.dtype == np.bool_:
        arr = arr.astype(bool)
    return Volume(arr, tuple(new_spacing), volume.origin, volume.direction, dict(volume.meta))  # type: ignore[arg-type]


def resample_in_plane(volume: Volume, spacing_mm: float, is_label: bool = False) -> Volume:
    """Resample rows and columns to ``spacing_mm`` (isotropic in-plane); slices are kept as they are."""
    return resample_volume(volume, (spacing_mm, spacing_mm, None), is_label=is_label)

