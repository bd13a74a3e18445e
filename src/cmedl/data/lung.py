"""Classical lung masks of CT (no network weights) and per-lung crop boxes (the teacher-student paper's
student inputs: "the images were split in two, each cropped around one of the lungs").

:func:`lung_mask`: air below
``threshold_hu`` (-320 HU, the usual lung/soft-tissue cut), the components of at least ``min_volume_ml``
(the trachea and main bronchi stay attached to the lungs: harmless for crops, it only widens them
medially); the air outside the body is the air connected to each slice's border. The two lungs separated by erosion when they touch (anterior junction, carina), each lung's
voxels given to the nearer eroded core, then a 3D closing (vessels, airway walls) and per-slice hole
filling (tumours and nodules enclosed by lung). Label 1 is the lung at lower patient x (LPS: the
patient's right), 2 the other.

:func:`lung_crop_boxes`: one box per lung, grown by ``margin_mm`` in every direction (clipped to the
image), so that tumours abutting the mediastinum or chest wall (outside any lung mask) stay in the crop.
Hand-written (scipy.ndimage) because no library of the stack has a lung segmentation without weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmedl.data.holes import fill_holes_slicewise
from cmedl.errors import InputError
from cmedl.io.image import Volume

LUNG_THRESHOLD_HU = -320.0


@dataclass(frozen=True)
class LungCrop:
    """The crop of one lung: ``box`` = ``(z, y, x)`` slices of the image; ``lung`` = 1 or 2."""

    lung: int
    box: tuple[slice, slice, slice]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.box)  # type: ignore[return-value]


def _ball(radius_vox: Sequence[float]) -> np.ndarray:
    """An ellipsoidal structuring element of the given radii (voxels per axis; 0 = flat along that axis)."""
    r = [max(round(float(v)), 0) for v in radius_vox]
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    dist = sum((g / k) ** 2 for g, k in zip(grid, r) if k > 0)
    return np.asarray(dist <= 1.0) if any(r) else np.ones((1, 1, 1), bool)


def lung_mask(volume: Volume, threshold_hu: float = LUNG_THRESHOLD_HU, closing_mm: float = 5.0,
              min_volume_ml: float = 20.0, working_mm: float = 2.0, max_erosions: int = 15) -> np.ndarray:
    """uint8 ``[z, y, x]``: 0 background, 1 and 2 the two lungs (1: lower patient x). A single lung found
    (one lung resected, a cropped scan) gives label 1 only; no lung found gives all zeros.

    The work runs on a grid subsampled by whole factors to about ``working_mm`` per voxel (the result is
    upsampled by repetition: its surface is accurate to about that): a 512x512 CT takes seconds, not a
    minute."""
    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise InputError(f"lung_mask needs a 3D CT, got shape {arr.shape}")
    full_spacing = np.asarray(volume.spacing_zyx, float)
    step = np.maximum(1, np.floor(working_mm / full_spacing + 1e-6)).astype(int)
    sub = tuple(slice(None, None, int(k)) for k in step)
    spacing_zyx = full_spacing * step
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    air = np.ascontiguousarray(arr[sub] < threshold_hu)
    # outside air: per slice, the air connected to the slice's border (2D labels of all slices at once)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    lab2d, _ = ndimage.label(air, in_plane)
    border = np.unique(np.concatenate([lab2d[:, [0, -1], :].ravel(), lab2d[:, :, [0, -1]].ravel()]))
    air &= ~np.isin(lab2d, border[border > 0])
    del lab2d
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros(arr.shape, np.uint8)
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    keep = np.flatnonzero(sizes >= min_volume_ml) + 1
    keep = keep[np.argsort(-sizes[keep - 1])][:2]
    if keep.size == 2 and sizes[keep[1] - 1] < 0.15 * sizes[keep[0] - 1]:
        keep = keep[:1]  # a trachea or a gas-filled bowel/stomach, not a second lung
    if keep.size == 0:
        return np.zeros(arr.shape, np.uint8)
    lungs = np.isin(labels, keep)
    seeds = _split(lungs, labels, keep, max_erosions)
    # each lung voxel goes to the nearer seed (in mm)
    _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=spacing_zyx, return_indices=True)
    owner = seeds[tuple(idx)] * lungs
    del idx
    small = np.zeros(air.shape, np.uint8)
    ball = _ball(closing_mm / spacing_zyx)
    pad = [(s // 2, s // 2) for s in ball.shape]
    for lab in (1, 2):
        m = owner == lab
        if not m.any():
            continue
        m = ndimage.binary_closing(np.pad(m, pad), ball)[tuple(slice(p, p + n) for (p, _), n in zip(pad, air.shape))]
        m = fill_holes_slicewise(m)
        small[m & (small == 0)] = lab
    out = small
    for axis, k in enumerate(step):  # back to the input grid by repetition
        if k > 1:
            out = np.repeat(out, int(k), axis=axis)
    out = np.ascontiguousarray(out[: arr.shape[0], : arr.shape[1], : arr.shape[2]])
    return _order_by_x(out, volume)


def _split(lungs: np.ndarray, labels: np.ndarray, keep: np.ndarray, max_erosions: int) -> np.ndarray:
    """Seeds (1, 2) of the two lungs: the two kept components, or the two largest cores left by eroding a
    single component until it splits (in-plane erosions: the lungs touch at the front and the carina)."""
    seeds = np.zeros(lungs.shape, np.uint8)
    if keep.size == 2:
        seeds[labels == keep[0]] = 1
        seeds[labels == keep[1]] = 2
        return seeds
    core = lungs.copy()
    total = int(lungs.sum())
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    for _ in range(max_erosions):
        core = ndimage.binary_erosion(core, cross)
        lab, n = ndimage.label(core)
        if n >= 2:
            sizes = np.bincount(lab.ravel())[1:]
            order = np.argsort(-sizes)
            if sizes[order[1]] >= 0.05 * total:
                seeds[lab == order[0] + 1] = 1
                seeds[lab == order[1] + 1] = 2
                return seeds
        if n == 0:
            break
    seeds[lungs] = 1  # one lung (or two that never separate): one label
    return seeds


def _order_by_x(mask: np.ndarray, volume: Volume) -> np.ndarray:
    """Relabel so that lung 1 has the lower patient x (LPS x: towards the patient's left)."""
    centres = []
    for lab in (1, 2):
        idx = np.argwhere(mask == lab)
        if idx.size == 0:
            return mask
        centres.append(volume.index_to_physical(idx.mean(axis=0)[::-1])[0])
    if centres[0] > centres[1]:
        out = mask.copy()
        out[mask == 1], out[mask == 2] = 2, 1
        return out
    return mask


def lung_crop_boxes(lungs: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float = 20.0) -> list[LungCrop]:
    """One crop box per lung label present (1, 2): its bounding box grown by ``margin_mm`` (rounded up to
    voxels per axis), clipped to the image. ``spacing_zyx`` in array order (``Volume.spacing_zyx``)."""
    if margin_mm < 0 or not np.isfinite(margin_mm):
        raise InputError(f"lung crop margin must be a non-negative number of mm, got {margin_mm}")
    lungs = np.asarray(lungs)
    margin = [int(np.ceil(margin_mm / float(s) - 1e-9)) for s in spacing_zyx]
    crops = []
    for lab in (1, 2):
        objs = ndimage.find_objects((lungs == lab).astype(np.uint8))
        if not objs or objs[0] is None:
            continue
        box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(objs[0], margin, lungs.shape))
        crops.append(LungCrop(lab, box))  # type: ignore[arg-type]
    return crops


def crop_union(crops: Sequence[LungCrop], shape: Sequence[int]) -> np.ndarray:
    """bool ``[z, y, x]``: True inside any of the crops (what the student sees)."""
    out = np.zeros(tuple(shape), bool)
    for c in crops:
        out[c.box] = True
    return out


def crop_loss(mask: np.ndarray, crops: Sequence[LungCrop]) -> float:
    """Share (0-1) of the True voxels of ``mask`` (a tumour) outside every crop (0 for an empty mask)."""
    mask = np.asarray(mask, bool)
    total = int(mask.sum())
    return 0.0 if total == 0 else float((mask & ~crop_union(crops, mask.shape)).sum()) / total
