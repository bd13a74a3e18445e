"""Post-processing of predicted probability maps into binary masks.

All arrays are numpy ``[z, y, x]`` (as in :class:`cmedl.io.Volume`). The operations are the usual
ones for a single-lesion tumour segmentation: a probability threshold, keeping the largest 3D
connected component (drops small false-positive islands, e.g. in vessels or the heart) and filling
holes slice by slice (radiotherapy contours are drawn per axial slice and cannot hold holes).
Connected components and hole filling use :mod:`scipy.ndimage`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmedl.data.holes import fill_holes_slicewise
from cmedl.errors import InputError


def threshold_mask(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``uint8`` mask of the voxels with ``probability >= threshold`` (threshold in ``(0, 1)``)."""
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    return (np.asarray(probabilities) >= np.float32(threshold)).astype(np.uint8)


def _crop_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight box around the non-zero voxels (None when the mask is empty)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def largest_connected_component(mask: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """Keep only the largest connected component of a binary ``[z, y, x]`` mask (``uint8`` out).

    ``connectivity`` is the SciPy/scikit-image rank: 1 = face neighbours (6 in 3D), 2 = faces and
    edges (18), 3 = faces, edges and corners (26, the default, as MONAI's
    ``KeepLargestConnectedComponent``). Voxel counts decide "largest" (ties: the first label in
    raster order). An empty mask is returned unchanged. Labelling runs on the mask's bounding box
    only, which keeps it fast on 512x512 CT volumes.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"mask must be 3D [z, y, x], got shape {mask.shape}")
    if connectivity not in (1, 2, 3):
        raise InputError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    out = np.zeros(mask.shape, dtype=np.uint8)
    box = _crop_box(mask != 0)
    if box is None:
        return out
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, n = ndimage.label(mask[box] != 0, structure=structure)
    if n <= 1:
        out[box] = labels > 0
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out[box] = labels == int(np.argmax(sizes))
    return out


def remove_small_components(mask: np.ndarray, spacing_zyx: tuple[float, float, float], min_ml: float,
                            connectivity: int = 3) -> np.ndarray:
    """Drop the connected components of a binary ``[z, y, x]`` mask smaller than ``min_ml`` millilitres
    (``spacing_zyx`` in mm; 26-connectivity by default). Unlike :func:`largest_connected_component` it keeps
    several lesions and a small tumour when a larger false positive exists. ``uint8`` out."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"mask must be 3D [z, y, x], got shape {mask.shape}")
    if not float(min_ml) >= 0.0:
        raise InputError(f"minimum component volume must be >= 0 ml, got {min_ml}")
    out = (mask != 0).astype(np.uint8)
    box = _crop_box(out != 0)
    if box is None or min_ml == 0:
        return out
    labels, n = ndimage.label(out[box], structure=ndimage.generate_binary_structure(3, connectivity))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    sizes = np.bincount(labels.ravel()) * voxel_ml
    small = sizes < float(min_ml)
    small[0] = True
    out[box] = ~small[labels]
    return out


def keep_components_touching(mask: np.ndarray, region: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """Keep the connected components of a binary ``[z, y, x]`` mask that share at least one voxel with
    ``region`` (e.g. the lungs dilated by a margin: LungTumorMask's lung filter), ``uint8`` out. A tumour
    mostly outside the lungs (mediastinal, chest wall) stays when any of its voxels reaches the region."""
    mask, region = np.asarray(mask) != 0, np.asarray(region) != 0
    if mask.ndim != 3 or region.shape != mask.shape:
        raise InputError(f"mask and region must be 3D arrays of one shape, got {mask.shape} and {region.shape}")
    out = np.zeros(mask.shape, np.uint8)
    box = _crop_box(mask)
    if box is None:
        return out
    labels, n = ndimage.label(mask[box], structure=ndimage.generate_binary_structure(3, connectivity))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[region[box] & (labels > 0)])] = True
    keep[0] = False
    out[box] = keep[labels]
    return out


def near_region(region: np.ndarray, spacing_zyx: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` (Euclidean, physical) of a binary ``[z, y, x]`` region (the region
    itself included); ``margin_mm = 0`` gives the region. Computed on the region's bounding box grown by
    the margin (SciPy's exact distance transform), so it stays fast on whole CTs."""
    region = np.asarray(region) != 0
    if not float(margin_mm) >= 0.0:
        raise InputError(f"margin must be >= 0 mm, got {margin_mm}")
    box = _crop_box(region)
    if box is None or margin_mm == 0:
        return region.copy()
    grow = [int(np.ceil(margin_mm / s)) + 1 for s in spacing_zyx]
    big = tuple(slice(max(b.start - g, 0), min(b.stop + g, n)) for b, g, n in zip(box, grow, region.shape))
    out = np.zeros(region.shape, bool)
    out[big] = ndimage.distance_transform_edt(~region[big], sampling=spacing_zyx) <= float(margin_mm)
    return out


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary ``[z, y, x]`` mask in every axial slice (``uint8`` out).

    2D on purpose: a cavity open towards the next slice is still a hole in the slice's contour.
    """
    return fill_holes_slicewise(mask).astype(np.uint8)


def postprocess_probabilities(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    largest_component: bool = False,
    fill_holes: bool = False,
    min_component_ml: float = 0.0,
    spacing_zyx: tuple[float, float, float] | None = None,
    keep_region: np.ndarray | None = None,
) -> np.ndarray:
    """Threshold a probability map ``[z, y, x]`` and apply the optional clean-ups, in this order:
    threshold (``p >= threshold``), components below ``min_component_ml`` removed (needs
    ``spacing_zyx``), components not touching ``keep_region`` removed (the lung filter), largest 3D
    connected component (26-connectivity), per-slice hole filling.
    Returns a ``uint8`` mask with values {0, 1}."""
    mask = threshold_mask(probabilities, threshold)
    if min_component_ml > 0:
        if spacing_zyx is None:
            raise InputError("removing small components needs the voxel spacing")
        mask = remove_small_components(mask, spacing_zyx, min_component_ml)
    if keep_region is not None:
        mask = keep_components_touching(mask, keep_region)
    if largest_component:
        mask = largest_connected_component(mask)
    if fill_holes:
        mask = fill_holes_per_slice(mask)
    return mask
