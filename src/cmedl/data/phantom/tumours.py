"""Tumours of the phantom: lobulated or spiculated solids placed in the lung, on the chest wall or
against the mediastinum, written into a tissue label map (necrotic cores included).

Each tumour gets up to 12 attempts, three per size, shrinking by 0.8 every three: pick a random
candidate centre for its kind, draw a shape, and keep it if at least 3 voxels land on tissue a tumour
may replace and it abuts what its kind says (:func:`abutting_share`): a ``lung`` tumour is enclosed
by lung, a ``mediastinal`` one touches mediastinal soft tissue or the heart, a ``chest-wall`` one the
chest wall. A kind that cannot be placed on the grid falls back to ``lung``, and the recorded kind is
always the placed one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cmedl.data.phantom.geometry import Axes, Grid, box_slices
from cmedl.data.phantom.patient import Patient
from cmedl.data.phantom.tissue import N_TISSUES, Tissue

T = Tissue
_ATTEMPTS = 12
_TRIES_PER_SIZE = 3

#: What each kind abuts, and the least share of the tumour's one-voxel outer shell it must cover.
ABUTTING: dict[str, tuple[tuple[int, ...], float]] = {
    "lung": ((T.LUNG, T.LUNG_VESSEL, T.AIRWAY), 0.85),
    "mediastinal": ((T.MEDIASTINUM, T.MYOCARDIUM, T.BLOOD), 0.15),
    "chest-wall": ((T.MUSCLE, T.FAT, T.BONE, T.MARROW), 0.15),
}

#: Tissues a tumour may not replace. Tumours grow in lung and mediastinal soft tissue and can
#: reach (but not replace) the heart and vessels.
_NO_TUMOUR = np.zeros(N_TISSUES, dtype=bool)
for _t in (
    T.BONE,
    T.MARROW,
    T.AIRWAY,
    T.SPINAL_CANAL,
    T.DISC,
    T.AIR,
    T.FAT,
    T.MUSCLE,
    T.LIVER,
    T.BLOOD,
    T.MYOCARDIUM,
):
    _NO_TUMOUR[_t] = True


@dataclass
class TumourInfo:
    """Where a tumour was put: kind, centre (x, y, z mm), nominal diameter (mm), voxel count."""

    kind: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    voxels: int


class _LungDepth:
    """Distance (mm) from lung voxels to the nearest non-lung voxel, computed on first use and
    recomputed only after :meth:`refresh` (called when a tumour has been placed)."""

    def __init__(self, labels: np.ndarray, grid: Grid) -> None:
        self._labels = labels
        self._sampling = tuple(grid.spacing_zyx)
        self._lung = labels == T.LUNG
        self._edt: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self._edt is None:
            self._edt = ndi.distance_transform_edt(self._lung, sampling=self._sampling).astype(
                np.float32
            )
        return self._edt

    def refresh(self) -> None:
        self._lung = self._labels == T.LUNG
        self._edt = None


def tumour_shape(
    rng: np.random.Generator,
    axes: Axes,
    sl: tuple[slice, slice, slice],
    centre: np.ndarray,
    radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lobulated (and maybe spiculated) solid around ``centre`` inside box ``sl``.

    Returns (inside, relative radius ``dist / r(direction)``) on the box. The surface radius is
    ``R * (1 + sum of random low-order ridge functions of the direction)`` (lobulation) plus
    narrow spikes ``(u . e_m)^p`` (spiculation)."""
    Z, Y, X = axes
    dz = Z[sl[0]] - centre[2]
    dy = Y[:, sl[1]] - centre[1]
    dx = X[:, :, sl[2]] - centre[0]
    stretch = rng.uniform(0.8, 1.2, size=3)
    dx, dy, dz = dx / stretch[0], dy / stretch[1], dz / stretch[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    ux, uy, uz = dx / dist, dy / dist, dz / dist
    lob = rng.uniform(0.05, 0.22)
    rel = np.ones(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
    for _ in range(6):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        freq = rng.uniform(1.0, 3.5)
        rel = rel + lob / 2.0 * np.cos(
            freq * np.pi * (ux * d[0] + uy * d[1] + uz * d[2]) + rng.uniform(0, 2 * np.pi)
        )
    if rng.random() < 0.45 and radius > 6.0:  # spiculated
        for _ in range(int(rng.integers(5, 14))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            c = np.clip(ux * d[0] + uy * d[1] + uz * d[2], 0.0, 1.0)
            rel = rel + rng.uniform(0.3, 0.8) * c ** rng.uniform(150, 400)
    rr = dist / (radius * rel)
    return rr <= 1.0, rr


def add_tumours(
    labels: np.ndarray,
    grid: Grid,
    patient: Patient,
    rng: np.random.Generator,
    axes: Axes,
    body_xy: tuple[float, float],
    cavity_sdf: np.ndarray,
    f_lung: np.ndarray,
) -> list[TumourInfo]:
    """Place ``patient.n_tumours`` tumours (lung / chest wall / mediastinal) into ``labels``
    (in place) and describe them. ``body_xy``: the body axis (x, y mm); ``cavity_sdf``: signed
    distance to the thoracic-cavity wall; ``f_lung``: the unit-SD field that shapes necrosis."""
    min_r = 1.3 * float(max(grid.spacing))  # at least ~2.5 voxels across
    depth = _LungDepth(labels, grid)
    infos: list[TumourInfo] = []
    for kind, diam in zip(patient.tumour_kinds, patient.tumour_diameters):
        radius = max(diam / 2.0, min_r)
        info = None
        for attempt in range(2 * _ATTEMPTS):
            if attempt == _ATTEMPTS:
                kind = "lung"  # this kind does not fit the anatomy: place a lung tumour instead
            r = max(radius * 0.8 ** ((attempt % _ATTEMPTS) // _TRIES_PER_SIZE), min_r)
            cand = _candidate_centres(kind, r, labels, cavity_sdf, depth)
            if cand.size == 0:
                continue
            info = _try_tumour(kind, r, cand, labels, grid, rng, axes, body_xy, cavity_sdf, f_lung)
            if info is not None:
                depth.refresh()
                break
        if info is None:  # pragma: no cover - extremely small grids only
            info = _fallback_tumour(kind, labels, grid, axes, min_r)
        infos.append(info)
    return infos


def _candidate_centres(
    kind: str, r: float, labels: np.ndarray, cavity_sdf: np.ndarray, depth: _LungDepth
) -> np.ndarray:
    """Flat indices of the lung voxels where a tumour of ``kind`` and radius ``r`` may be centred:
    deep enough in the lung, near the chest wall, or touching mediastinal soft tissue."""
    if kind == "lung":
        return np.flatnonzero((depth.get() >= max(0.6 * r, 1.0)) & (labels == T.LUNG))
    if kind == "chest-wall":
        near_wall = (
            (cavity_sdf > -max(0.5 * r, 3.0)) & (cavity_sdf < -0.5 * r + 3.0) & (labels == T.LUNG)
        )
        return np.flatnonzero(near_wall)
    # mediastinal: lung voxels touching mediastinal soft tissue
    soft = labels == T.MEDIASTINUM
    return np.flatnonzero(ndi.binary_dilation(soft, iterations=1) & (labels == T.LUNG))


def _try_tumour(
    kind: str,
    r: float,
    cand: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    rng: np.random.Generator,
    axes: Axes,
    body_xy: tuple[float, float],
    cavity_sdf: np.ndarray,
    f_lung: np.ndarray,
) -> TumourInfo | None:
    """One placement attempt at a random candidate centre; writes the tumour (and maybe a necrotic
    core) into ``labels`` and returns its info, or None (labels untouched) if it does not fit."""
    Z, Y, X = axes
    k, j, i = np.unravel_index(int(cand[rng.integers(cand.size)]), grid.shape)
    centre = np.array([X[0, 0, i], Y[0, j, 0], Z[k, 0, 0]], dtype=np.float64)
    if kind == "mediastinal":
        # push the centre 0..0.6 R towards the midline: abutting or inside the mediastinum
        direction = np.array([np.sign(body_xy[0] - centre[0]) or 1.0, 0.0, 0.0])
        centre = centre + direction * rng.uniform(0.0, 0.6) * r
    sl = box_slices(grid, centre, 2.0 * r + 2 * max(grid.spacing))
    if sl is None:
        return None
    inside, rr = tumour_shape(rng, axes, sl, centre, r)
    sub = labels[sl]
    allowed = ~_NO_TUMOUR[sub]
    if kind == "chest-wall":
        allowed &= cavity_sdf[sl] <= 0.0
    put = inside & allowed
    if int(put.sum()) < 3 or abutting_share(put, sub, kind) < ABUTTING[kind][1]:
        return None
    core = put & (rr < 0.5)
    sub[put] = T.TUMOUR
    if 2 * r > 28.0 and rng.random() < 0.5:
        sub[core & (f_lung[sl] > -0.5)] = T.NECROSIS
    centre_mm = (float(centre[0]), float(centre[1]), float(centre[2]))
    return TumourInfo(kind, centre_mm, float(2 * r), int(put.sum()))


def abutting_share(tumour: np.ndarray, labels: np.ndarray, kind: str) -> float:
    """Share of the one-voxel outer shell of ``tumour`` (bool, same shape as ``labels``) made of the
    tissues a tumour of ``kind`` abuts (:data:`ABUTTING`); 0 for an empty shell."""
    shell = ndi.binary_dilation(tumour) & ~tumour
    n = int(shell.sum())
    if n == 0:
        return 0.0
    return float(np.isin(labels[shell], ABUTTING[kind][0]).sum()) / n


def _fallback_tumour(  # pragma: no cover - extremely small grids only
    kind: str, labels: np.ndarray, grid: Grid, axes: Axes, min_r: float
) -> TumourInfo:
    """Last resort: a one-voxel tumour in the middle of the lung voxels (else of the body)."""
    Z, Y, X = axes
    idx = np.flatnonzero(labels == T.LUNG)
    if idx.size == 0:
        idx = np.flatnonzero(labels != T.AIR)
    k, j, i = np.unravel_index(int(idx[idx.size // 2]), grid.shape)
    labels[k, j, i] = T.TUMOUR
    return TumourInfo(kind, (float(X[0, 0, i]), float(Y[0, j, 0]), float(Z[k, 0, 0])), min_r, 1)
