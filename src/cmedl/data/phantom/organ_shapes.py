"""Shapes of the thoracic organs as masks, signed distances and distance maps: thoracic cavity,
heart, aorta, pulmonary arteries, superior vena cava, airways, hila, mediastinum and diaphragm.

Nothing is labelled here (:mod:`.organs` writes the label map) and nothing is random: shape
perturbations come from the smooth random fields passed in. Arguments ``axes`` are the open grids
``(Z, Y, X)`` of :meth:`~cmedl.data.phantom.geometry.Grid.axes`; lengths are mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cmedl.data.phantom.geometry import Axes, Grid, ellipse_sdf, lower_to_polyline_distance
from cmedl.data.phantom.patient import Patient

_FAR = np.float32(1e9)  #: "no structure nearby" in the distance maps (mm)


@dataclass(frozen=True)
class Cavity:
    """The thoracic cavity (inside the ribs; lungs, mediastinum and upper abdomen)."""

    half_width: np.ndarray  #: lateral half-width (mm, tapers with z)
    ant_depth: float  #: anterior half-depth (mm)
    sdf: np.ndarray  #: signed distance to the cavity wall (mm, negative inside)
    inside: np.ndarray  #: bool mask


@dataclass(frozen=True)
class Spine:
    """Where the spine is (its labels are drawn after the cavity contents, which it overlaps)."""

    x: float  #: vertebral-body centre (mm)
    y: float
    radius: float  #: vertebral-body radius (mm)
    canal_y: float  #: spinal-canal centre (mm)


@dataclass(frozen=True)
class Heart:
    """The heart: an ellipsoid whose long axis points left-anterior."""

    centre: np.ndarray  #: float32 (x, y, z) mm
    axes: tuple[float, float, float]  #: semi-axes (long, short, height) mm
    r: np.ndarray  #: ellipsoidal radius (1 on the epicardium)
    wall: np.ndarray  #: bool mask of the whole heart
    blood: np.ndarray  #: bool mask of the chambers
    top: float  #: z (mm) where the great vessels leave the heart


@dataclass(frozen=True)
class Tubes:
    """Distance maps (mm, float32) to the centre lines of the vessels and airways."""

    aorta: np.ndarray
    pulmonary: np.ndarray  #: pulmonary trunk and arteries
    svc: np.ndarray  #: superior vena cava
    trachea: np.ndarray
    bronchi: np.ndarray
    hila: np.ndarray  #: to the two hilar points


def body_half_width(p: Patient, zt: np.ndarray) -> np.ndarray:
    """Lateral half-width of the body (mm), slightly narrower at the top."""
    return p.body_a * (1.0 - 0.04 * zt)


def thoracic_cavity(p: Patient, axes: Axes, zt: np.ndarray, f_lung: np.ndarray) -> Cavity:
    """The thoracic cavity: a super-ellipse inside the chest wall, perturbed by ``f_lung``."""
    _, Y, X = axes
    cav_ax = (body_half_width(p, zt) - p.fat - p.wall) * (1.0 - 0.08 * zt)
    cav_ant = p.body_b_ant - p.fat - p.wall - 4.0
    # the lungs reach back to about the rear of the vertebral bodies; behind: paraspinal muscles
    cav_post = (
        p.body_b_post - 0.45 * p.fat - p.vb_depth + p.vb_radius + 0.3 * (p.post_muscle - 24.0)
    )
    d_cav = ellipse_sdf(X, Y, p.cx, p.cy, cav_ax, cav_ant, cav_post, p=2.3) + 3.0 * f_lung
    return Cavity(cav_ax, cav_ant, d_cav, d_cav <= 0)


def spine_position(p: Patient) -> Spine:
    """Vertebral-body and spinal-canal centres, measured from the posterior skin."""
    vy = p.cy + p.body_b_post - 0.45 * p.fat - p.vb_depth
    return Spine(p.cx + 2.0, vy, p.vb_radius, vy + p.vb_radius + 9.0)


def heart_shape(p: Patient, axes: Axes) -> Heart:
    """The heart of ``p`` (see :class:`Heart`)."""
    Z, Y, X = axes
    hx, hy, hz = p.heart_xyz
    hcen = np.array([p.cx + hx, p.cy + hy, p.dome_left + hz], dtype=np.float32)
    ha, hb, hc = p.heart_axes
    ca, sa = math.cos(p.heart_angle), math.sin(p.heart_angle)
    dxh, dyh, dzh = X - hcen[0], Y - hcen[1], Z - hcen[2]
    u1 = dxh * ca - dyh * sa  # long axis points left-anterior
    u2 = dxh * sa + dyh * ca
    heart_r = np.sqrt((u1 / ha) ** 2 + (u2 / hb) ** 2 + (dzh / hc) ** 2)
    heart = heart_r <= 1.0
    heart_blood = heart_r <= 1.0 - 7.5 / min(ha, hb)
    heart_top = float(hcen[2] + 0.7 * hc)
    return Heart(hcen, (ha, hb, hc), heart_r, heart, heart_blood, heart_top)


def tube_distances(p: Patient, grid: Grid, axes: Axes, heart: Heart, spine: Spine) -> Tubes:
    """Distance maps to the aorta, pulmonary arteries, SVC, trachea, main bronchi and hila."""
    aorta, pulmonary, svc = _great_vessels(p, grid, axes, heart, spine)
    trachea, bronchi = _airways(p, grid, axes, spine)
    return Tubes(aorta, pulmonary, svc, trachea, bronchi, _hilum_distance(p, axes, grid.shape))


def _z_beyond_grid(grid: Grid) -> tuple[float, float]:
    """z (mm) 40 mm below the first and above the last slice: where vertical tubes end."""
    z_low = float(grid.origin[2]) - 40.0
    z_high = float(grid.origin[2] + grid.spacing[2] * (grid.shape[0] - 1)) + 40.0
    return z_low, z_high


def _great_vessels(
    p: Patient, grid: Grid, axes: Axes, heart: Heart, spine: Spine
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance maps (mm) to the aorta (root, arch, descending), the pulmonary trunk with both
    pulmonary arteries, and the superior vena cava."""
    cx, cy = p.cx, p.cy
    vx, vy, rv = spine.x, spine.y, spine.radius
    d_aorta = np.full(grid.shape, _FAR, dtype=np.float32)
    d_pa = np.full(grid.shape, _FAR, dtype=np.float32)
    d_svc = np.full(grid.shape, _FAR, dtype=np.float32)
    z_arch = p.carina_z + 22.0
    z_low, z_high = _z_beyond_grid(grid)
    aorta_pts = [
        (cx + 2.0, float(heart.centre[1]) + 8.0, heart.top - 15.0),
        (cx + 2.0, cy - 22.0, z_arch - 10.0),
        (cx + 8.0, cy - 12.0, z_arch + 8.0),
        (cx + 18.0, vy - rv - 8.0, z_arch + 10.0),
        (vx + 22.0, vy - 14.0, z_arch - 8.0),
        (vx + 20.0, vy - 12.0, z_low),
    ]
    lower_to_polyline_distance(d_aorta, axes, grid, aorta_pts, p.aorta_r + 8.0)
    pa_pts = [
        (cx + 14.0, float(heart.centre[1]) - 6.0, heart.top - 12.0),
        (cx + 20.0, cy - 14.0, p.carina_z - 12.0),
        (cx + 48.0, cy + 4.0, p.carina_z - 18.0),
    ]
    rpa_pts = [
        (cx + 18.0, cy - 12.0, p.carina_z - 12.0),
        (cx - 10.0, cy - 2.0, p.carina_z - 14.0),
        (cx - 48.0, cy + 4.0, p.carina_z - 20.0),
    ]
    lower_to_polyline_distance(d_pa, axes, grid, pa_pts, 20.0)
    lower_to_polyline_distance(d_pa, axes, grid, rpa_pts, 20.0)
    svc_pts = [(cx - 24.0, cy - 14.0, heart.top - 20.0), (cx - 22.0, cy - 8.0, z_high)]
    lower_to_polyline_distance(d_svc, axes, grid, svc_pts, 20.0)
    return d_aorta, d_pa, d_svc


def _airways(p: Patient, grid: Grid, axes: Axes, spine: Spine) -> tuple[np.ndarray, np.ndarray]:
    """Distance maps (mm) to the trachea (in front of the spine, down to the carina) and the two
    main bronchi."""
    cx = p.cx
    d_trach = np.full(grid.shape, _FAR, dtype=np.float32)
    d_bronch = np.full(grid.shape, _FAR, dtype=np.float32)
    _, z_high = _z_beyond_grid(grid)
    ty = spine.y - spine.radius - 16.0
    lower_to_polyline_distance(d_trach, axes, grid, [(cx, ty, z_high), (cx, ty, p.carina_z)], 20.0)
    for side in (-1.0, 1.0):
        lower_to_polyline_distance(
            d_bronch,
            axes,
            grid,
            [(cx, ty, p.carina_z), (cx + side * 42.0, ty + 4.0, p.carina_z - 26.0)],
            20.0,
        )
    return d_trach, d_bronch


def _hilum_distance(p: Patient, axes: Axes, shape: tuple[int, int, int]) -> np.ndarray:
    """Distance map (mm) to the nearer of the two hilar points."""
    Z, Y, X = axes
    hila = [
        np.array([p.cx + sd * 50.0, p.cy + 2.0, p.carina_z - 24.0], dtype=np.float32)
        for sd in (-1.0, 1.0)
    ]
    d_hilum = np.full(shape, _FAR, dtype=np.float32)
    for h in hila:
        np.minimum(
            d_hilum, np.sqrt((X - h[0]) ** 2 + (Y - h[1]) ** 2 + (Z - h[2]) ** 2), out=d_hilum
        )
    return d_hilum


def mediastinum_mask(
    p: Patient,
    axes: Axes,
    f_lung: np.ndarray,
    spine: Spine,
    heart: Heart,
    tubes: Tubes,
    cavity: np.ndarray,
) -> np.ndarray:
    """Mediastinum mask: a central band, a paravertebral block and margins around the heart,
    vessels, trachea and hila, within the cavity."""
    _, Y, X = axes
    cx, cy = p.cx, p.cy
    vx, vy, rv = spine.x, spine.y, spine.radius
    ha, hb, _ = heart.axes
    mx = cx + 4.0 + 4.0 * f_lung
    band_w = 5.0 + 7.0 * np.clip((Y - (cy - 40.0)) / 60.0, 0.0, 1.0)
    med = (np.abs(X - mx) < band_w) & (Y < vy)
    med = med | ((np.abs(X - vx) < rv + 6.0) & (Y > vy - rv - 18.0) & (Y < spine.canal_y))
    med |= heart.r <= 1.0 + 5.0 / min(ha, hb)
    med |= tubes.aorta < p.aorta_r + 5.0
    med |= tubes.pulmonary < 15.0
    med |= tubes.svc < 13.0
    med |= tubes.trachea < 12.0
    med |= tubes.hila < 14.0 + 3.0 * f_lung
    med &= cavity
    return med


def below_diaphragm(p: Patient, axes: Axes, cav_half_width: np.ndarray) -> np.ndarray:
    """Mask of everything below the two diaphragm domes (lungs only above, abdomen below)."""
    Z, Y, X = axes
    cx, cy = p.cx, p.cy
    half_x = np.maximum(cav_half_width, 1.0)
    dome_r = p.dome_right - 45.0 * (
        ((X - (cx - 0.45 * half_x)) / (0.75 * half_x)) ** 2 + ((Y - cy) / 110.0) ** 2
    )
    dome_l = p.dome_left - 45.0 * (
        ((X - (cx + 0.45 * half_x)) / (0.75 * half_x)) ** 2 + ((Y - cy) / 110.0) ** 2
    )
    dome = np.where(X < cx, dome_r, dome_l)
    return Z < dome

