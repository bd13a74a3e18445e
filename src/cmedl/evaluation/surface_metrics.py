"""Surface-distance metrics: surface Dice, HD95 / robust Hausdorff, Hausdorff and ASSD in mm.

Distances go from every surfel of one mask (:mod:`cmedl.evaluation.surfels`) to the nearest surfel
of the other, weighted by surfel area; definitions and the empty-mask table are in
:mod:`cmedl.evaluation.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from cmedl.errors import InputError
from cmedl.evaluation.binary_masks import Spacing, check_pair, check_spacing, check_tolerance
from cmedl.evaluation.surfels import MaskSurface, mask_surface, surfel_area_table


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from every surfel of one mask to the other surface, with surfel areas (mm^2).

    ``dist_pred_to_ref[i]`` belongs to the prediction surfel of area ``area_pred[i]``; likewise for
    the reference. Arrays are unsorted. A mask that is empty has empty arrays; the other mask's
    distances are then ``inf``.
    """

    dist_pred_to_ref: np.ndarray
    dist_ref_to_pred: np.ndarray
    area_pred: np.ndarray
    area_ref: np.ndarray

    @property
    def pred_empty(self) -> bool:
        return self.area_pred.size == 0

    @property
    def ref_empty(self) -> bool:
        return self.area_ref.size == 0

    def surface_dice(self, tolerance_mm: float) -> float:
        """Surface Dice at ``tolerance_mm`` (distance <= tolerance counts as overlapping)."""
        if self.pred_empty and self.ref_empty:
            return 1.0
        if self.pred_empty or self.ref_empty:
            return 0.0
        overlap = self.area_pred[self.dist_pred_to_ref <= tolerance_mm].sum() + self.area_ref[
            self.dist_ref_to_pred <= tolerance_mm
        ].sum()
        return float(overlap / (self.area_pred.sum() + self.area_ref.sum()))

    def directed_percentile(self, percent: float) -> tuple[float, float]:
        """Area-weighted ``percent``-th percentile of each direction: ``(pred->ref, ref->pred)`` mm.

        Same rule as DeepMind's ``compute_robust_hausdorff``: sort by distance, take the first
        distance whose cumulative area fraction reaches ``percent / 100``.
        """
        if not 0 <= percent <= 100:
            raise InputError(f"percent must be in [0, 100], got {percent}")
        return (
            _weighted_percentile(self.dist_pred_to_ref, self.area_pred, percent),
            _weighted_percentile(self.dist_ref_to_pred, self.area_ref, percent),
        )

    def robust_hausdorff(self, percent: float = 95.0) -> float:
        """Max of the two directed area-weighted percentiles (mm); 0 if both empty, inf if one is."""
        if self.pred_empty and self.ref_empty:
            return 0.0
        if self.pred_empty or self.ref_empty:
            return math.inf
        return max(self.directed_percentile(percent))

    def hausdorff(self) -> float:
        """Maximum surface distance in either direction (mm)."""
        if self.pred_empty and self.ref_empty:
            return 0.0
        if self.pred_empty or self.ref_empty:
            return math.inf
        return float(max(self.dist_pred_to_ref.max(), self.dist_ref_to_pred.max()))

    def assd(self) -> float:
        """Average symmetric surface distance: area-weighted mean over both surfaces (mm)."""
        if self.pred_empty and self.ref_empty:
            return 0.0
        if self.pred_empty or self.ref_empty:
            return math.inf
        num = np.sum(self.dist_pred_to_ref * self.area_pred) + np.sum(self.dist_ref_to_pred * self.area_ref)
        return float(num / (self.area_pred.sum() + self.area_ref.sum()))


def _weighted_percentile(dist: np.ndarray, area: np.ndarray, percent: float) -> float:
    if dist.size == 0:
        return math.inf
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(area[order])
    idx = int(np.searchsorted(cum / cum[-1], percent / 100.0))
    return float(dist[order[min(idx, dist.size - 1)]])


def _directed_distances(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each corner in ``src`` to the nearest corner in ``dst`` (both ``[N, 3]``).

    A k-d tree (scipy) finds the nearest surfel; the distance is then recomputed from the integer
    corner offsets in the same floating-point order as ``scipy.ndimage.distance_transform_edt``
    (which DeepMind's package uses), so values agree bit for bit. Unlike a distance transform over
    the union bounding box, the cost depends on the number of surfels only, not on how far apart
    the objects are (a false positive in the other lung costs nothing extra).
    """
    sp = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(dst * sp, balanced_tree=False, compact_nodes=False)
    _, nearest = tree.query(src * sp, k=1)
    delta = (src - dst[nearest]).astype(np.float64)
    delta *= sp
    delta *= delta
    d2 = delta[:, 0] + delta[:, 1]
    d2 += delta[:, 2]
    return np.sqrt(d2)


def distances_between(
    sp_: MaskSurface, sr: MaskSurface, spacing: tuple[float, float, float]
) -> SurfaceDistances:
    """Distances between two extracted surfaces (all ``inf`` when either mask is empty)."""
    if sp_.n_voxels and sr.n_voxels:
        d_p = _directed_distances(sp_.corners, sr.corners, spacing)
        d_r = _directed_distances(sr.corners, sp_.corners, spacing)
    else:
        d_p = np.full(sp_.areas.shape, math.inf)
        d_r = np.full(sr.areas.shape, math.inf)
    return SurfaceDistances(d_p, d_r, sp_.areas, sr.areas)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> SurfaceDistances:
    """Surfel distances and areas of both masks; ``spacing`` (z, y, x) mm.

    Definitions in :mod:`cmedl.evaluation.metrics`.
    """
    pred, ref = check_pair(pred, ref)
    sp = check_spacing(spacing)
    table = surfel_area_table(sp)
    return distances_between(mask_surface(pred, table), mask_surface(ref, table), sp)


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Spacing, tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm`` (papers' eq. 13), surfel-area weighted.

    Definition in :mod:`cmedl.evaluation.metrics`.
    """
    return surface_distances(pred, ref, spacing).surface_dice(check_tolerance(tolerance_mm))


def robust_hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Spacing, percent: float = 95.0) -> float:
    """Max of the two directed area-weighted ``percent``-th percentile surface distances (mm)."""
    return surface_distances(pred, ref, spacing).robust_hausdorff(percent)


def hausdorff95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """HD95 in mm: max of the two directed 95th percentiles (DeepMind's definition)."""
    return robust_hausdorff(pred, ref, spacing, 95.0)


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """Hausdorff distance (max surface distance in either direction) in mm."""
    return surface_distances(pred, ref, spacing).hausdorff()


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """Average symmetric surface distance in mm (area-weighted over both surfaces)."""
    return surface_distances(pred, ref, spacing).assd()
