"""The tumour-free thorax of a phantom patient rasterised as a tissue label map: body wall, ribs,
lungs, mediastinum, heart, great vessels, airways, abdomen below the diaphragm, spine, sternum and
lung vessels.

One function per structure group; :func:`rasterise_organs` calls them in the order in which their
labels overwrite each other (the shapes they fill come from :mod:`.organ_shapes`). Nothing here
draws random numbers: every random shape perturbation comes from the :class:`RandomFields`
drawn up front by :func:`draw_random_fields`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from cmedl.data.phantom.geometry import Axes, Grid, ellipse_sdf, smooth_field
from cmedl.data.phantom.organ_shapes import (
    Cavity,
    Heart,
    Spine,
    Tubes,
    below_diaphragm,
    body_half_width,
    heart_shape,
    mediastinum_mask,
    spine_position,
    thoracic_cavity,
    tube_distances,
)
from cmedl.data.phantom.patient import Patient
from cmedl.data.phantom.tissue import Tissue

T = Tissue


@dataclass(frozen=True)
class RandomFields:
    """The smooth random fields (zero mean, unit SD, float32 ``[z, y, x]``) of one anatomy."""

    body: np.ndarray  #: body-outline and fat-thickness perturbation (70 mm)
    lung: np.ndarray  #: cavity/mediastinum perturbation, anterior fat, necrosis (40 mm)
    vessel_a: np.ndarray  #: first level set of the lung vessels (18 mm)
    vessel_b: np.ndarray  #: second level set of the lung vessels (18 mm)
    texture: np.ndarray  #: tissue texture (7 mm)


def draw_random_fields(rng: np.random.Generator, grid: Grid) -> RandomFields:
    """Draw the five fields of :class:`RandomFields` from ``rng``, in field order."""
    body = smooth_field(rng, grid, 70.0)
    lung = smooth_field(rng, grid, 40.0)
    vessel_a = smooth_field(rng, grid, 18.0)
    vessel_b = smooth_field(rng, grid, 18.0)
    texture = smooth_field(rng, grid, 7.0)
    return RandomFields(body, lung, vessel_a, vessel_b, texture)


@dataclass(frozen=True)
class OrganMap:
    """The tumour-free label map and the cavity distance that tumour placement needs."""

    labels: np.ndarray  #: uint8 :class:`Tissue` values ``[z, y, x]``
    cavity_sdf: np.ndarray  #: signed distance to the thoracic-cavity wall (mm, negative inside)


def rasterise_organs(
    patient: Patient, grid: Grid, axes: Axes, fields: RandomFields
) -> OrganMap:
    """Rasterise the tumour-free thorax of ``patient`` on ``grid`` (``axes`` = ``grid.axes()``)."""
    p = patient
    labels = np.zeros(grid.shape, dtype=np.uint8)
    zt = np.clip(axes[0] / 80.0, -1.2, 1.2)  # normalised height, for tapering
    body = _body_wall(labels, p, axes, zt, fields.body)
    cavity = keep_wall(thoracic_cavity(p, axes, zt, fields.lung), body, grid.spacing)
    _ribs(labels, p, axes, cavity.sdf, body)
    spine = spine_position(p)
    heart = heart_shape(p, axes)
    tubes = tube_distances(p, grid, axes, heart, spine)
    med = mediastinum_mask(p, axes, fields.lung, spine, heart, tubes, cavity.inside)
    below = below_diaphragm(p, axes, cavity.half_width)
    lung, thorax = _lungs_and_mediastinum(
        labels, p, axes, cavity.inside, below, med, heart, tubes, fields.lung
    )
    _heart_vessels_airways(labels, p, cavity.inside, thorax, heart, tubes)
    _spine(labels, p, axes, grid.shape, body, spine)
    _sternum(labels, p, axes, body, cavity.ant_depth)
    _lung_vessels(labels, lung, tubes.hila, fields.vessel_a, fields.vessel_b)
    return OrganMap(labels, cavity.sdf)


#: The thinnest chest wall, skin to thoracic cavity, in-plane (mm). The cavity's super-ellipse widens towards
#: the diaphragm faster than the body's, and the two carry independent perturbations: without this floor a
#: thin patient's lower lungs reached the skin (3 of 50 CTs of a 48 x 128 x 128 cohort, over up to 23
#: slices), where a lung mask loses them to the outside air.
MIN_WALL_MM = 8.0


def keep_wall(cavity: Cavity, body: np.ndarray, spacing_xyz: tuple[float, float, float],
              min_wall_mm: float = MIN_WALL_MM) -> Cavity:
    """The cavity kept at least ``min_wall_mm`` inside the body outline in every slice (its signed
    distance raised to ``min_wall_mm - depth``; unchanged wherever the wall is already that thick)."""
    # in-plane depth below the skin: a z sampling far beyond the grid makes the nearest outside voxel in-plane
    depth = ndimage.distance_transform_edt(body, sampling=(1e6, spacing_xyz[1], spacing_xyz[0])).astype(np.float32)
    sdf = np.maximum(cavity.sdf, np.float32(min_wall_mm) - depth)
    return replace(cavity, sdf=sdf, inside=sdf <= 0)


def _body_wall(
    labels: np.ndarray, p: Patient, axes: Axes, zt: np.ndarray, f_body: np.ndarray
) -> np.ndarray:
    """Label the body (super-ellipse, flatter at the back) as fat with muscle under the
    subcutaneous fat; return the body mask."""
    _, Y, X = axes
    d_body = ellipse_sdf(
        X, Y, p.cx, p.cy, body_half_width(p, zt), p.body_b_ant * (1 - 0.03 * zt), p.body_b_post,
        p=2.25,
    )
    d_body = d_body + 4.0 * f_body
    body = d_body <= 0
    labels[body] = T.FAT
    yn = np.clip((Y - p.cy) / p.body_b_post, 0.0, 1.0)
    fat_local = p.fat * (1.0 - 0.55 * yn) + 2.5 * f_body + 1.0
    labels[body & (d_body < -fat_local)] = T.MUSCLE
    return body


def _ribs(
    labels: np.ndarray, p: Patient, axes: Axes, d_cav: np.ndarray, body: np.ndarray
) -> None:
    """Label the ribs: arcs just outside the cavity, descending from the spine to the front.
    (Costal cartilage near the sternum, slightly denser than muscle, stays muscle.)"""
    Z, Y, X = axes
    theta = np.arctan2(X - p.cx, -(Y - p.cy))  # 0 = anterior, +-pi = posterior
    s = np.abs(theta) / np.pi  # 0 front .. 1 back
    phase = np.mod(Z - p.rib_phase + p.rib_drop * (1.0 - s), p.rib_pitch)
    rib_h = 0.33 * p.rib_pitch
    rib_band = (d_cav > 0.5) & (d_cav < 7.5) & (phase < rib_h) & (s > 0.16) & body
    rib_core = rib_band & (d_cav > 2.5) & (d_cav < 5.5) & (phase > 2.5) & (phase < rib_h - 2.5)
    labels[rib_band] = T.BONE
    labels[rib_core] = T.MARROW


def _lungs_and_mediastinum(
    labels: np.ndarray,
    p: Patient,
    axes: Axes,
    cavity: np.ndarray,
    below: np.ndarray,
    med: np.ndarray,
    heart: Heart,
    tubes: Tubes,
    f_lung: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill the cavity: liver/abdomen below the diaphragm, lung and mediastinum above, anterior
    mediastinal fat. Returns the masks (lung, thorax = cavity above the diaphragm)."""
    Y = axes[1]
    thorax = cavity & ~below
    labels[cavity & below] = T.LIVER
    lung = thorax & ~med
    labels[lung] = T.LUNG
    medl = thorax & med
    labels[medl] = T.MEDIASTINUM
    # anterior mediastinal (thymic) fat and a thin pericardial fat line: fat on CT, bright on T2
    hb = heart.axes[1]
    ant_fat = (
        medl
        & (Y < heart.centre[1] - hb * 0.55)
        & (tubes.aorta > p.aorta_r + 2.0)
        & (tubes.svc > 12.0)
        & (f_lung > -0.3)
    )
    labels[ant_fat & (heart.r > 1.0)] = T.FAT
    return lung, thorax


def _heart_vessels_airways(
    labels: np.ndarray,
    p: Patient,
    cavity: np.ndarray,
    thorax: np.ndarray,
    heart: Heart,
    tubes: Tubes,
) -> None:
    """Label the myocardium, the blood of the heart and great vessels, the trachea and the main
    bronchi (with a soft-tissue wall, inside the lungs)."""
    labels[cavity & heart.wall] = T.MYOCARDIUM
    labels[cavity & heart.blood] = T.BLOOD
    labels[tubes.aorta < p.aorta_r] = T.BLOOD
    labels[(tubes.pulmonary < 11.0) & cavity] = T.BLOOD
    labels[(tubes.svc < 9.5) & cavity] = T.BLOOD
    labels[tubes.trachea < 8.5] = T.AIRWAY
    d_bronch = tubes.bronchi
    labels[(d_bronch < 8.0) & thorax & (d_bronch >= 5.5)] = T.MEDIASTINUM
    labels[(d_bronch < 5.5) & thorax] = T.AIRWAY


def _spine(
    labels: np.ndarray,
    p: Patient,
    axes: Axes,
    shape: tuple[int, int, int],
    body: np.ndarray,
    spine: Spine,
) -> None:
    """Label the vertebral bodies (cortex, marrow, discs), posterior arches, transverse processes
    and spinal canal."""
    Z, Y, X = axes
    vx, vy, rv, canal_y = spine.x, spine.y, spine.radius, spine.canal_y
    r_vb = np.sqrt(((X - vx) / 1.1) ** 2 + (Y - vy) ** 2)
    vb = np.broadcast_to(r_vb < rv, shape)
    labels[vb] = T.BONE
    disc_phase = np.mod(Z - p.rib_phase - 8.0, p.rib_pitch)
    labels[(r_vb < rv - 2.5) & np.broadcast_to(disc_phase >= 6.0, vb.shape)] = T.MARROW
    labels[(r_vb < rv - 1.0) & np.broadcast_to(disc_phase < 6.0, vb.shape)] = T.DISC
    r_can = np.sqrt((X - vx) ** 2 + (Y - canal_y) ** 2)
    arch = (r_can < 12.5) | ((np.abs(X - vx) < 4.0) & (Y > canal_y) & (Y < canal_y + 32.0))
    # transverse processes: short, angled backwards (y grows with |x|)
    arch |= (np.abs(Y - canal_y + 6.0 - 0.7 * np.abs(X - vx)) < 3.0) & (np.abs(X - vx) < 20.0)
    labels[arch & body] = T.BONE
    labels[np.broadcast_to(r_can < 7.5, shape)] = T.SPINAL_CANAL


def _sternum(
    labels: np.ndarray, p: Patient, axes: Axes, body: np.ndarray, cav_ant: float
) -> None:
    """Label the sternum (anterior midline, just inside the muscle layer)."""
    _, Y, X = axes
    st_y = p.cy - cav_ant - 9.0
    r_st = np.sqrt(((X - p.cx) / 15.0) ** 2 + ((Y - st_y) / 6.0) ** 2)
    labels[(r_st < 1.0) & body] = T.BONE
    labels[(r_st < 0.6) & body] = T.MARROW


def _lung_vessels(
    labels: np.ndarray,
    lung: np.ndarray,
    d_hilum: np.ndarray,
    f_v1: np.ndarray,
    f_v2: np.ndarray,
) -> None:
    """Label lung vessels: intersections of two zero level sets = random tubes, thicker near the
    hila. ``lung`` is the lung mask as first labelled (before the spine and sternum)."""
    eps = 0.11 + 0.3 * np.exp(-d_hilum / 45.0)
    vessel = lung & (np.abs(f_v1) < eps) & (np.abs(f_v2) < eps)
    labels[vessel] = T.LUNG_VESSEL
