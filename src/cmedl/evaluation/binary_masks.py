"""Checking metric inputs (binary masks, spacing, tolerance) and bounding boxes of binary masks.

Shared by the overlap, surface and object-wise metrics; conventions in
:mod:`cmedl.evaluation.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cmedl.errors import InputError

#: Voxel size in mm in array order ``(z, y, x)``.
Spacing = Sequence[float]


# ---------------------------------------------------------------------------- input checks
def as_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a bool array; raise :class:`InputError` unless it holds only 0 and 1.

    Only the non-zero voxels are inspected (a tumour is small), so the check is cheap.
    NaN voxels are an error, not foreground.
    """
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.number)):
        raise InputError(f"{name}: a mask must be numeric or bool, got dtype {mask.dtype}")
    nonzero = mask != 0
    values = mask[nonzero]
    if values.size:
        if np.issubdtype(values.dtype, np.floating) and np.isnan(values).any():
            raise InputError(f"{name}: mask contains NaN voxels")
        if not (values == 1).all():
            shown = np.unique(values)[:5].tolist()
            raise InputError(
                f"{name}: mask is not binary (non-zero values {shown} besides 1); select a label first"
            )
    return nonzero


def check_spacing(spacing: Spacing, ndim: int = 3) -> tuple[float, float, float]:
    """``spacing`` as ``ndim`` floats; InputError unless they are finite and positive (mm)."""
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be {ndim} numbers in mm (z, y, x), got {spacing!r}") from None
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing must be {ndim} positive numbers in mm (z, y, x), got {spacing!r}")
    return sp  # type: ignore[return-value]


def check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays; InputError unless they are binary, 3D and of the same shape."""
    pred = as_binary_mask(pred, "prediction")
    ref = as_binary_mask(ref, "reference")
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim != 3:
        raise InputError(f"masks must be 3D [z, y, x], got shape {pred.shape}")
    return pred, ref


def check_tolerance(tolerance_mm: float) -> float:
    """A surface-Dice tolerance as a float; InputError unless finite and >= 0 (mm)."""
    tol = float(tolerance_mm)
    if not math.isfinite(tol) or tol < 0:
        raise InputError(f"tolerance must be a non-negative number of mm, got {tolerance_mm!r}")
    return tol


# ---------------------------------------------------------------------------- bounding boxes
def bounding_box(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Per-axis ``(start, stop)`` of the non-zero voxels of a 3D bool mask, or ``None`` if empty.

    Scans the full array once along contiguous rows (fast), then only the occupied slab.
    """
    if mask.size == 0:
        return None
    nz = mask.shape[0]
    z_any = mask.reshape(nz, -1).any(axis=1)
    zs = np.flatnonzero(z_any)
    if zs.size == 0:
        return None
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    slab = mask[z0:z1]
    ys = np.flatnonzero(slab.any(axis=(0, 2)))
    xs = np.flatnonzero(slab.any(axis=(0, 1)))
    return [(z0, z1), (int(ys[0]), int(ys[-1]) + 1), (int(xs[0]), int(xs[-1]) + 1)]


def union_crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Both masks cropped to the bounding box of their union, or ``None`` if both are empty."""
    bp, br = bounding_box(pred), bounding_box(ref)
    if bp is None and br is None:
        return None
    boxes = [b for b in (bp, br) if b is not None]
    sl = tuple(slice(min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(3))
    return pred[sl], ref[sl]
