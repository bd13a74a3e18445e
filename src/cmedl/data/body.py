"""Body masks of CT, CBCT and MRI volumes: the papers' "thresholding, hole filling and connected
components" crop around the body (couch and noise outside it are dropped)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cmedl.data.cropping import bounding_box
from cmedl.data.holes import fill_holes_slicewise
from cmedl.data.modalities import MODALITIES
from cmedl.errors import InputError, did_you_mean

#: Body threshold in HU for CT/CBCT: halfway between air (-1000) and soft tissue (0); lung is
#: below it but lies inside the body and is filled by the hole filling.
BODY_THRESHOLD_HU = -500.0
#: Per-slice completion of the body mask: hole filling, or hole filling + convex hull.
BODY_FILLS = ("holes", "hull")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    box = bounding_box(mask)  # label only inside it (projections: find_objects scans 4x slower)
    labels, n = ndimage.label(mask[box])
    out = np.zeros(mask.shape, bool)
    if n <= 1:
        out[box] = labels > 0
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out[box] = labels == int(np.argmax(sizes))
    return out


def body_mask(
    array: np.ndarray, modality: str, threshold: float | None = None, fill: str = "holes"
) -> np.ndarray:
    """Boolean body mask ``[z, y, x]``: threshold, per-slice 2D hole filling, largest 3D component.

    Threshold: ``threshold`` if given, else -500 HU for ``ct``/``cbct`` and Otsu's threshold
    (scikit-image) for ``mr``. Holes are filled slice by slice (the lungs are open at the top and
    bottom of a volume, so 3D filling would leave them out); the largest 3D connected component
    then drops the couch, noise and other blobs outside the body. ``fill="hull"`` additionally
    replaces each slice by its convex hull (scikit-image; ~4 ms per 128x128 slice, ~35 ms per
    512x512): for CBCT, whose truncated field of view cuts through the body so that a lung open
    to the edge is no hole. Returns all-False if nothing is above the threshold.
    """
    if modality not in MODALITIES:
        raise InputError(did_you_mean(modality, MODALITIES, "modality"))
    if fill not in BODY_FILLS:
        raise InputError(did_you_mean(fill, BODY_FILLS, "body fill"))
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InputError(f"body_mask needs a 3D [z, y, x] array, got shape {arr.shape}")
    if threshold is None:
        if modality == "mr":
            from skimage.filters import threshold_otsu  # lazy: scikit-image is slow to import

            finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
            ok = finite.size and finite.min() < finite.max()
            threshold = float(threshold_otsu(finite)) if ok else math.inf
        else:
            threshold = BODY_THRESHOLD_HU
    mask = arr > threshold
    if not mask.any():
        return mask
    mask = _largest_component(fill_holes_slicewise(mask))  # 2D filling: the 3D one would not close the lungs
    if fill == "hull":
        from skimage.morphology import convex_hull_image  # lazy: scikit-image is slow to import

        for k in range(mask.shape[0]):
            if mask[k].any():
                mask[k] = convex_hull_image(mask[k])
    return mask

