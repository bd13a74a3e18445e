"""Fixed-size windows of arrays that may run past the array edges (padded there), and the
bounding box of a mask: :func:`bounding_box`, :func:`box_centre`, :func:`window_around`,
:func:`extract_window`, :func:`paste_window` (its inverse) and :func:`crop_or_pad`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cmedl.errors import InputError


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Tight box around the True voxels of ``mask`` grown by ``margin`` voxels (per axis or one
    for all), clipped to the array. Raises InputError for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    margins = [int(margin)] * mask.ndim if np.isscalar(margin) else [int(m) for m in margin]  # type: ignore[arg-type]
    if len(margins) != mask.ndim:
        raise InputError(f"margin needs {mask.ndim} values, got {margin}")
    if not mask.any():
        raise InputError("cannot take the bounding box of an empty mask")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(
            slice(
                max(int(idx[0]) - margins[axis], 0),
                min(int(idx[-1]) + 1 + margins[axis], mask.shape[axis]),
            )
        )
    return tuple(box)


def window_around(
    shape: Sequence[int], size: Sequence[int | None], center: Sequence[float] | None = None
) -> tuple[int, ...]:
    """Start indices of a window of ``size`` centred on ``center`` in an array of ``shape``.

    ``size`` and ``center`` cover the LAST ``len(size)`` axes (``None`` in ``size`` keeps an axis
    whole); ``center`` defaults to the array centre and is a continuous index (the window's
    centre ``start + (size - 1) / 2`` lands on it, rounded down). Starts may be negative or run
    past the end: :func:`extract_window` pads there.
    """
    shape = tuple(int(s) for s in shape)
    lead = len(shape) - len(size)
    if lead < 0:
        raise InputError(f"size {tuple(size)} has more axes than shape {shape}")
    sizes = [shape[lead + i] if s is None else int(s) for i, s in enumerate(size)]
    if center is None:
        center = [(shape[lead + i] - 1) / 2.0 for i in range(len(size))]
    if len(center) != len(size):
        raise InputError(f"center {tuple(center)} needs {len(size)} values")
    starts = [0] * lead
    for i, (n, c) in enumerate(zip(sizes, center)):
        # floor(c - (n-1)/2): an even window on an integer centre has one more voxel before it
        starts.append(0 if size[i] is None else math.floor(float(c) - (n - 1) / 2.0 + 1e-6))
    return tuple(starts)


def _full_sizes(shape: Sequence[int], size: Sequence[int | None]) -> tuple[int, ...]:
    lead = len(shape) - len(size)
    return tuple(shape[:lead]) + tuple(
        shape[lead + i] if s is None else int(s) for i, s in enumerate(size)
    )


def extract_window(
    array: np.ndarray, starts: Sequence[int], size: Sequence[int], pad_value: float = 0.0
) -> np.ndarray:
    """Copy of ``array[starts : starts + size]`` on every axis, padded with ``pad_value`` where
    the window lies outside the array (``starts`` may be negative). ``len(starts) == array.ndim``."""
    if len(starts) != array.ndim or len(size) != array.ndim:
        raise InputError(
            f"window needs {array.ndim} starts and sizes, got {tuple(starts)}, {tuple(size)}"
        )
    out = np.full(tuple(int(s) for s in size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s0, n, dim in zip(starts, size, array.shape):
        lo, hi = max(int(s0), 0), min(int(s0) + int(n), dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s0), hi - int(s0)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def paste_window(
    window: np.ndarray, starts: Sequence[int], shape: Sequence[int], fill_value: float = 0.0
) -> np.ndarray:
    """Inverse of :func:`extract_window`: an array of ``shape`` filled with ``fill_value`` holding
    ``window`` at ``starts`` (the parts of the window outside ``shape`` are dropped)."""
    out = np.full(tuple(int(s) for s in shape), fill_value, dtype=window.dtype)
    src, dst = [], []
    for s0, n, dim in zip(starts, window.shape, shape):
        lo, hi = max(int(s0), 0), min(int(s0) + int(n), int(dim))
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo - int(s0), hi - int(s0)))
    out[tuple(dst)] = window[tuple(src)]
    return out


def crop_or_pad(
    array: np.ndarray,
    size_or_box: Sequence[int | None] | tuple[slice, ...],
    center: Sequence[float] | None = None,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Crop and/or pad the last axes of ``array`` to a fixed size.

    ``size_or_box`` is either sizes for the last ``len(size)`` axes (``None`` keeps an axis), the
    window centred on ``center`` (continuous indices of those axes; default the array centre), or
    a box of slices from :func:`bounding_box` (crop exactly to it; ``center`` must be None).
    Parts of the window outside the array are filled with ``pad_value``. For the papers' 256x256
    patches around the body: ``crop_or_pad(slice_, (256, 256), center=box_centre(box))``.
    """
    arr = np.asarray(array)
    if len(size_or_box) and all(isinstance(s, slice) for s in size_or_box):
        box = tuple(size_or_box)  # type: ignore[arg-type]
        if center is not None:
            raise InputError("pass either a box or a center, not both")
        lead = arr.ndim - len(box)
        starts = (0,) * lead + tuple(int(s.start or 0) for s in box)
        sizes = tuple(arr.shape[:lead]) + tuple(
            int((arr.shape[lead + i] if s.stop is None else s.stop) - (s.start or 0))
            for i, s in enumerate(box)
        )
        return extract_window(arr, starts, sizes, pad_value)
    size = list(size_or_box)  # type: ignore[arg-type]
    starts = window_around(arr.shape, size, center)
    return extract_window(arr, starts, _full_sizes(arr.shape, size), pad_value)


def box_centre(box: Sequence[slice]) -> tuple[float, ...]:
    """Continuous centre index of each slice of a box (``(start + stop - 1) / 2``)."""
    return tuple((s.start + s.stop - 1) / 2.0 for s in box)

