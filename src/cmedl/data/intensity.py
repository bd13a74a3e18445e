"""Intensity normalisation of CT, CBCT and MRI arrays to float32 ``[-1, 1]`` (numpy in, numpy out).

- :func:`ct_window`: clip to a HU window and scale linearly;
- :func:`mr_normalise`: robust percentiles inside the body map to -1 / +1;
- :func:`standardise`: global mean/SD (the CBCT paper's choice), squashed to [-1, 1] by clipping
  at +-``clip_sd`` SD.
"""

from __future__ import annotations

import numpy as np

from cmedl.errors import GeometryError, InputError

#: Default CT window in HU: from air/lung (-1000) to dense soft tissue and bone (500), so the lung
#: parenchyma, the tumour and the chest wall all keep contrast after scaling to [-1, 1].
DEFAULT_CT_WINDOW = (-1000.0, 500.0)


def ct_window(array: np.ndarray, window: tuple[float, float] = DEFAULT_CT_WINDOW) -> np.ndarray:
    """Clip HU to ``window = (low, high)`` and scale linearly to float32 ``[-1, 1]``.

    ``low`` maps to -1, ``high`` to +1. The default (-1000, 500) HU spans air/lung to soft tissue
    and cancellous bone (good for lung tumours next to the mediastinum and chest wall); pass e.g.
    (-160, 240) for a mediastinal window.
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise InputError(f"CT window must have low < high, got {window}")
    out = (np.asarray(array, dtype=np.float32) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0
    return np.clip(out, -1.0, 1.0, out=out).astype(np.float32, copy=False)


def _stats_values(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Voxels used for statistics: those inside ``mask`` (all voxels if mask is None or empty)."""
    if mask is None:
        return array.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != array.shape:
        raise GeometryError(f"mask shape {mask.shape} differs from array shape {array.shape}")
    return array[mask] if mask.any() else array.ravel()


def mr_normalise(
    array: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> np.ndarray:
    """Robust MRI normalisation: percentiles ``(p_low, p_high)`` inside ``mask`` map to -1 / +1.

    MR intensities have no physical unit, so the scale comes from the image itself: the
    ``p_low`` and ``p_high`` percentiles of the voxels inside the body ``mask`` (whole image if
    None) become -1 and +1 and everything is clipped to [-1, 1] (bright outliers such as fat or
    vessels saturate instead of compressing the tissue contrast). A constant image gives all -1.
    """
    p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    arr = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(_stats_values(arr, mask), [p_lo, p_hi])
    if not hi > lo:
        return np.full(arr.shape, -1.0, dtype=np.float32)
    out = (arr - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0
    return np.clip(out, -1.0, 1.0, out=out).astype(np.float32, copy=False)


def standardise(
    array: np.ndarray, mask: np.ndarray | None = None, clip_sd: float | None = 3.0
) -> np.ndarray:
    """Global mean/SD standardisation (the CBCT paper's normalisation), squashed to [-1, 1].

    ``z = (x - mean) / sd`` with mean and SD over the voxels inside ``mask`` (whole image if None).
    With ``clip_sd`` (default 3) the result is clipped to +-``clip_sd`` and divided by it, so
    +-3 SD maps to +-1 for the tanh generators; ``clip_sd=None`` returns the plain z-scores.
    A constant image gives all zeros.
    """
    arr = np.asarray(array, dtype=np.float32)
    vals = _stats_values(arr, mask).astype(np.float64)
    mean, sd = float(vals.mean()), float(vals.std())
    if not sd > 0:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (arr - np.float32(mean)) / np.float32(sd)
    if clip_sd is not None:
        if not clip_sd > 0:
            raise InputError(f"clip_sd must be positive, got {clip_sd}")
        np.clip(out, -clip_sd, clip_sd, out=out)
        out /= np.float32(clip_sd)
    return out.astype(np.float32, copy=False)

