"""Patient anatomy of the synthetic thorax: a label map of tissue classes on a voxel grid.

Everything is built in patient millimetres (LPS, as ITK: +x = patient's left, +y = posterior,
+z = superior) from a handful of per-patient parameters (:class:`Patient`) plus smooth random
fields, then rasterised on a :class:`Grid`. The modality renderers (:mod:`.ct`, :mod:`.cbct`,
:mod:`.mri`) turn the label map into intensities; the tumour mask is exactly
``labels in (TUMOUR, NECROSIS)``.

Arrays are indexed ``[z, y, x]``; spacing and origin are ``(x, y, z)`` mm (the
:class:`cmedl.io.Volume` convention). Row 0 of an axial slice is anterior, column 0 is the
patient's right (radiological display).

Why hand-written: no maintained library draws a randomised, labelled thorax quickly enough for
CPU training demos (XCAT/4D-XCAT is licensed and slow; TorchIO/MONAI only add artefacts to an
existing image). The shapes below are implicit functions evaluated with numpy broadcasting on open
grids, and random fields are drawn on coarse grids, smoothed with ``scipy.ndimage`` and
interpolated up, which keeps a 128x128x48 case well under a second.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from scipy import ndimage as ndi

from cmedl.io.volume import Volume


class Tissue(IntEnum):
    """Tissue classes of the label map (uint8 values)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3  #: cortical bone (ribs, vertebral shell, sternum shell, posterior arch)
    MARROW = 4  #: trabecular bone / marrow (vertebral bodies, sternum)
    LUNG = 5
    LUNG_VESSEL = 6
    MYOCARDIUM = 7
    BLOOD = 8  #: heart chambers, aorta, pulmonary arteries, superior vena cava
    MEDIASTINUM = 9  #: mediastinal soft tissue (nodes, oesophagus, vessel walls, hila)
    AIRWAY = 10  #: trachea and main bronchi (air)
    SPINAL_CANAL = 11
    LIVER = 12  #: sub-diaphragmatic organs (liver on the right, stomach/spleen on the left)
    DISC = 13
    TUMOUR = 14
    NECROSIS = 15  #: necrotic tumour core (part of the tumour mask)


N_TISSUES = len(Tissue)
TUMOUR_CLASSES = (Tissue.TUMOUR, Tissue.NECROSIS)


# ---------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` ``(z, y, x)``; ``spacing`` and ``origin`` ``(x, y, z)`` mm; identity
    direction."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centred(
        cls,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> Grid:
        """A grid whose field of view is centred on patient point ``shift`` (x, y, z mm)."""
        nz, ny, nx = shape
        n = (nx, ny, nz)
        origin = tuple(float(shift[i] - (n[i] - 1) * spacing[i] / 2.0) for i in range(3))
        return cls(tuple(int(s) for s in shape), tuple(float(s) for s in spacing), origin)  # type: ignore[arg-type]

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.array(self.spacing[::-1], dtype=float)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid patient coordinates (mm, float32): ``Z`` [nz,1,1], ``Y`` [1,ny,1], ``X`` [1,1,nx]."""
        nz, ny, nx = self.shape
        ox, oy, oz = self.origin
        sx, sy, sz = self.spacing
        z = (oz + sz * np.arange(nz, dtype=np.float32)).reshape(nz, 1, 1)
        y = (oy + sy * np.arange(ny, dtype=np.float32)).reshape(1, ny, 1)
        x = (ox + sx * np.arange(nx, dtype=np.float32)).reshape(1, 1, nx)
        return z.astype(np.float32), y.astype(np.float32), x.astype(np.float32)

    def volume(self, array: np.ndarray) -> Volume:
        """Wrap ``array`` ``[z, y, x]`` as a :class:`Volume` on this grid."""
        return Volume(array, self.spacing, self.origin)


def smooth_field(rng: np.random.Generator, grid: Grid, scale_mm: float) -> np.ndarray:
    """Gaussian random field with zero mean, unit SD and correlation length ~``scale_mm`` on ``grid``.

    White noise on a coarse isotropic grid (spacing ``scale_mm / 2``) is smoothed by a Gaussian
    of one coarse voxel and linearly interpolated onto ``grid`` (one ``affine_transform`` with a
    diagonal matrix): ~50x cheaper than smoothing at full resolution. Returns float32 ``[z,y,x]``.
    """
    step = scale_mm / 2.0
    extent = (np.array(grid.shape) - 1) * grid.spacing_zyx
    margin = 2
    low_shape = tuple(math.ceil(e / step) + 2 * margin + 1 for e in extent)
    low = rng.standard_normal(low_shape).astype(np.float32)
    low = ndi.gaussian_filter(low, 1.0, mode="wrap")
    low /= max(float(low.std()), 1e-6)
    out = ndi.affine_transform(
        low,
        grid.spacing_zyx / step,
        offset=float(margin),
        output_shape=grid.shape,
        order=1,
        mode="nearest",
    )
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------- patient
@dataclass
class Patient:
    """Per-patient anatomy parameters (mm, patient LPS frame with the body axis at ``(cx, cy)``)."""

    cx: float
    cy: float
    body_a: float  #: lateral half-width of the body
    body_b_ant: float  #: anterior half-depth
    body_b_post: float  #: posterior half-depth
    fat: float  #: subcutaneous fat thickness (anterior/lateral)
    wall: float  #: chest-wall muscle thickness (lateral)
    post_muscle: float  #: paraspinal muscle depth
    breath: float  #: 0 = expiration, 1 = deep inspiration
    dome_right: float  #: z of the right diaphragm dome top
    dome_left: float
    heart_xyz: tuple[float, float, float]  #: offset from (cx, cy, dome_left)
    heart_axes: tuple[float, float, float]
    heart_angle: float  #: rotation of the heart's long axis about z (radians)
    carina_z: float
    vb_radius: float  #: vertebral body radius
    vb_depth: float  #: posterior skin to vertebral-body centre
    rib_pitch: float
    rib_phase: float
    rib_drop: float  #: how far ribs descend from the spine to the front
    aorta_r: float
    n_tumours: int
    tumour_kinds: tuple[str, ...]
    tumour_diameters: tuple[float, ...]
    tumour_contrast: (
        float  #: in [-1, 1]: tumour brightness relative to its neighbours, per modality
    )


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw one adult thorax (all lengths mm)."""
    u = rng.uniform
    breath = float(u(0, 1))
    dome_right = float(u(-45, -10) - 18 * breath)
    n_tum = 1 + int(rng.random() < 0.4)
    kinds = tuple(
        rng.choice(
            ["lung", "chest_wall", "mediastinal"],
            size=n_tum,
            replace=n_tum > 3,
            p=[0.4, 0.25, 0.35],
        )
    )
    # diameters: a radiotherapy (locally advanced NSCLC) cohort: log-uniform 15..70 mm, with 15 % small
    # nodules of 5..15 mm, so most cases carry a tumour the demo networks can learn at ~3 mm voxels
    diam = tuple(
        float(
            np.exp(
                u(np.log(5.0), np.log(15.0))
                if rng.random() < 0.15
                else u(np.log(15.0), np.log(70.0))
            )
        )
        for _ in range(n_tum)
    )
    return Patient(
        cx=float(rng.normal(0, 5)),
        cy=float(rng.normal(5, 5)),
        body_a=float(u(135, 175)),
        body_b_ant=float(u(88, 112)),
        body_b_post=float(u(95, 120)),
        fat=float(u(5, 22)),
        wall=float(u(7, 11)),
        post_muscle=float(u(24, 34)),
        breath=breath,
        dome_right=dome_right,
        dome_left=float(dome_right - u(8, 20)),
        heart_xyz=(float(u(18, 32)), float(u(-30, -12)), float(u(22, 40))),
        heart_axes=(float(u(44, 56)), float(u(32, 42)), float(u(40, 52))),
        heart_angle=float(np.deg2rad(u(20, 45))),
        carina_z=float(u(25, 60)),
        vb_radius=float(u(14, 19)),
        vb_depth=float(u(62, 76)),
        rib_pitch=float(u(26, 33)),
        rib_phase=float(u(0, 40)),
        rib_drop=float(u(70, 110)),
        aorta_r=float(u(11, 14)),
        n_tumours=n_tum,
        tumour_kinds=tuple(str(k) for k in kinds),
        tumour_diameters=diam,
        tumour_contrast=float(u(-1, 1)),
    )


@dataclass
class TumourInfo:
    """Where a tumour was put: kind, centre (x, y, z mm), nominal diameter (mm), voxel count."""

    kind: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    voxels: int


@dataclass
class Anatomy:
    """A rasterised patient: tissue labels plus a unit-SD texture field, both ``[z, y, x]``."""

    grid: Grid
    labels: np.ndarray  #: uint8 :class:`Tissue` values
    texture: np.ndarray  #: float32 smooth random field (zero mean, unit SD), tissue texture
    patient: Patient
    tumours: list[TumourInfo] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        """Exact tumour mask (uint8, union of all tumours, necrotic cores included)."""
        return np.isin(self.labels, TUMOUR_CLASSES).astype(np.uint8)

    def body_mask(self) -> np.ndarray:
        return self.labels != Tissue.AIR


# ---------------------------------------------------------------------------------------- shapes
def _ellipse_sdf(
    x: np.ndarray,
    y: np.ndarray,
    cx: float | np.ndarray,
    cy: float | np.ndarray,
    ax: float | np.ndarray,
    ay_ant: float | np.ndarray,
    ay_post: float | np.ndarray,
    p: float = 2.0,
) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to a super-ellipse with different
    anterior (y < cy) and posterior half-depths; first-order ``(r - 1) / |grad r|``."""
    dx = x - cx
    dy = y - cy
    ay = np.where(dy < 0, ay_ant, ay_post)
    u = np.abs(dx) / ax + 1e-6
    v = np.abs(dy) / ay + 1e-6
    up = u**p
    vp = v**p
    r = (up + vp) ** (1.0 / p)
    rp1 = r ** (1.0 - p)
    gx = rp1 * up / u / ax
    gy = rp1 * vp / v / ay
    grad = np.sqrt(gx * gx + gy * gy) + 1e-6
    return ((r - 1.0) / grad).astype(np.float32)


def _capsule_distance(
    out: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    grid: Grid,
    points: list[tuple[float, float, float]],
    reach: float,
) -> None:
    """Lower ``out`` (float32 ``[z,y,x]``) to the distance (mm) from each voxel to the polyline
    ``points`` (x, y, z mm), evaluated only within ``reach`` mm of each segment (bounding boxes)."""
    Z, Y, X = axes
    sx, sy, sz = grid.spacing
    ox, oy, oz = grid.origin
    nz, ny, nx = grid.shape
    for a, b in itertools.pairwise(points):
        a_ = np.asarray(a, dtype=np.float32)
        b_ = np.asarray(b, dtype=np.float32)
        lo = np.minimum(a_, b_) - reach
        hi = np.maximum(a_, b_) + reach
        i0 = max(int(np.floor((lo[0] - ox) / sx)), 0)
        i1 = min(int(np.ceil((hi[0] - ox) / sx)) + 1, nx)
        j0 = max(int(np.floor((lo[1] - oy) / sy)), 0)
        j1 = min(int(np.ceil((hi[1] - oy) / sy)) + 1, ny)
        k0 = max(int(np.floor((lo[2] - oz) / sz)), 0)
        k1 = min(int(np.ceil((hi[2] - oz) / sz)) + 1, nz)
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        px, py, pz = X[:, :, i0:i1] - a_[0], Y[:, j0:j1, :] - a_[1], Z[k0:k1] - a_[2]
        d = b_ - a_
        dd = float(d @ d) + 1e-6
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        sub = out[k0:k1, j0:j1, i0:i1]
        np.minimum(sub, dist, out=sub)


def _boxed(grid: Grid, centre: np.ndarray, half: float) -> tuple[slice, slice, slice] | None:
    """Index slices ``[z, y, x]`` of the grid box within ``half`` mm of ``centre`` (x, y, z)."""
    sl = []
    for ax_xyz, ax_zyx in ((2, 0), (1, 1), (0, 2)):
        o, s, n = grid.origin[ax_xyz], grid.spacing[ax_xyz], grid.shape[ax_zyx]
        lo = max(int(np.floor((centre[ax_xyz] - half - o) / s)), 0)
        hi = min(int(np.ceil((centre[ax_xyz] + half - o) / s)) + 1, n)
        if lo >= hi:
            return None
        sl.append(slice(lo, hi))
    return tuple(sl)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- build
def build_anatomy(patient: Patient, grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Rasterise ``patient`` on ``grid`` (tumours included); ``rng`` draws the random fields and
    tumour shapes/places. Deterministic given the generator state."""
    p = patient
    Z, Y, X = grid.axes()
    shape = grid.shape
    T = Tissue
    cx, cy = p.cx, p.cy

    # smooth random fields (unit SD): shape perturbations, vessels, texture
    f_body = smooth_field(rng, grid, 70.0)
    f_lung = smooth_field(rng, grid, 40.0)
    f_v1 = smooth_field(rng, grid, 18.0)
    f_v2 = smooth_field(rng, grid, 18.0)
    texture = smooth_field(rng, grid, 7.0)

    zt = np.clip(Z / 80.0, -1.2, 1.2)  # normalised height, for tapering
    # ---- body outline: super-ellipse, flatter at the back, slightly narrower at the top
    A = p.body_a * (1.0 - 0.04 * zt)
    d_body = _ellipse_sdf(X, Y, cx, cy, A, p.body_b_ant * (1 - 0.03 * zt), p.body_b_post, p=2.25)
    d_body = d_body + 4.0 * f_body
    body = d_body <= 0
    labels = np.zeros(shape, dtype=np.uint8)
    labels[body] = T.FAT

    yn = np.clip((Y - cy) / p.body_b_post, 0.0, 1.0)
    fat_local = p.fat * (1.0 - 0.55 * yn) + 2.5 * f_body + 1.0
    labels[body & (d_body < -fat_local)] = T.MUSCLE

    # ---- thoracic cavity (inside the ribs)
    cav_ax = (A - p.fat - p.wall) * (1.0 - 0.08 * zt)
    cav_ant = p.body_b_ant - p.fat - p.wall - 4.0
    # the lungs reach back to about the rear of the vertebral bodies; behind: paraspinal muscles
    cav_post = (
        p.body_b_post - 0.45 * p.fat - p.vb_depth + p.vb_radius + 0.3 * (p.post_muscle - 24.0)
    )
    d_cav = _ellipse_sdf(X, Y, cx, cy, cav_ax, cav_ant, cav_post, p=2.3) + 3.0 * f_lung
    cavity = d_cav <= 0

    # ---- ribs: arcs just outside the cavity, descending from the spine to the front
    theta = np.arctan2(X - cx, -(Y - cy))  # 0 = anterior, +-pi = posterior
    s = np.abs(theta) / np.pi  # 0 front .. 1 back
    phase = np.mod(Z - p.rib_phase + p.rib_drop * (1.0 - s), p.rib_pitch)
    rib_h = 0.33 * p.rib_pitch
    rib_band = (d_cav > 0.5) & (d_cav < 7.5) & (phase < rib_h) & (s > 0.16) & body
    rib_core = rib_band & (d_cav > 2.5) & (d_cav < 5.5) & (phase > 2.5) & (phase < rib_h - 2.5)
    labels[rib_band] = T.BONE
    labels[rib_core] = T.MARROW
    # costal cartilage near the sternum: slightly denser than muscle, label as muscle

    # spine position (drawn after the cavity contents, which it overlaps)
    post_skin = cy + p.body_b_post
    vx = cx + 2.0
    vy = post_skin - 0.45 * p.fat - p.vb_depth
    rv = p.vb_radius
    canal_y = vy + rv + 9.0

    # ---- mediastinal objects (x, y, z mm polylines)
    hx, hy, hz = p.heart_xyz
    hcen = np.array([cx + hx, cy + hy, p.dome_left + hz], dtype=np.float32)
    ha, hb, hc = p.heart_axes
    ca, sa = math.cos(p.heart_angle), math.sin(p.heart_angle)
    dxh, dyh, dzh = X - hcen[0], Y - hcen[1], Z - hcen[2]
    u1 = dxh * ca - dyh * sa  # long axis points left-anterior
    u2 = dxh * sa + dyh * ca
    heart_r = np.sqrt((u1 / ha) ** 2 + (u2 / hb) ** 2 + (dzh / hc) ** 2)
    heart = heart_r <= 1.0
    heart_blood = heart_r <= 1.0 - 7.5 / min(ha, hb)
    heart_top = float(hcen[2] + 0.7 * hc)

    inf = np.float32(1e9)
    d_aorta = np.full(shape, inf, dtype=np.float32)
    d_pa = np.full(shape, inf, dtype=np.float32)
    d_svc = np.full(shape, inf, dtype=np.float32)
    d_trach = np.full(shape, inf, dtype=np.float32)
    d_bronch = np.full(shape, inf, dtype=np.float32)
    axes3 = (Z, Y, X)
    z_arch = p.carina_z + 22.0
    z_low = float(grid.origin[2]) - 40.0
    z_high = float(grid.origin[2] + grid.spacing[2] * (shape[0] - 1)) + 40.0
    ar = p.aorta_r
    aorta_pts = [
        (cx + 2.0, float(hcen[1]) + 8.0, heart_top - 15.0),
        (cx + 2.0, cy - 22.0, z_arch - 10.0),
        (cx + 8.0, cy - 12.0, z_arch + 8.0),
        (cx + 18.0, vy - rv - 8.0, z_arch + 10.0),
        (vx + 22.0, vy - 14.0, z_arch - 8.0),
        (vx + 20.0, vy - 12.0, z_low),
    ]
    _capsule_distance(d_aorta, axes3, grid, aorta_pts, ar + 8.0)
    pa_pts = [
        (cx + 14.0, float(hcen[1]) - 6.0, heart_top - 12.0),
        (cx + 20.0, cy - 14.0, p.carina_z - 12.0),
        (cx + 48.0, cy + 4.0, p.carina_z - 18.0),
    ]
    rpa_pts = [
        (cx + 18.0, cy - 12.0, p.carina_z - 12.0),
        (cx - 10.0, cy - 2.0, p.carina_z - 14.0),
        (cx - 48.0, cy + 4.0, p.carina_z - 20.0),
    ]
    _capsule_distance(d_pa, axes3, grid, pa_pts, 20.0)
    _capsule_distance(d_pa, axes3, grid, rpa_pts, 20.0)
    _capsule_distance(
        d_svc,
        axes3,
        grid,
        [(cx - 24.0, cy - 14.0, heart_top - 20.0), (cx - 22.0, cy - 8.0, z_high)],
        20.0,
    )
    ty = vy - rv - 16.0
    _capsule_distance(d_trach, axes3, grid, [(cx, ty, z_high), (cx, ty, p.carina_z)], 20.0)
    for side in (-1.0, 1.0):
        _capsule_distance(
            d_bronch,
            axes3,
            grid,
            [(cx, ty, p.carina_z), (cx + side * 42.0, ty + 4.0, p.carina_z - 26.0)],
            20.0,
        )
    hila = [
        np.array([cx + sd * 50.0, cy + 2.0, p.carina_z - 24.0], dtype=np.float32)
        for sd in (-1.0, 1.0)
    ]
    d_hilum = np.full(shape, inf, dtype=np.float32)
    for h in hila:
        np.minimum(
            d_hilum, np.sqrt((X - h[0]) ** 2 + (Y - h[1]) ** 2 + (Z - h[2]) ** 2), out=d_hilum
        )

    # ---- mediastinum: central band + paravertebral block + margins around the objects
    mx = cx + 4.0 + 4.0 * f_lung
    band_w = 5.0 + 7.0 * np.clip((Y - (cy - 40.0)) / 60.0, 0.0, 1.0)
    med = (np.abs(X - mx) < band_w) & (Y < vy)
    med = med | ((np.abs(X - vx) < rv + 6.0) & (Y > vy - rv - 18.0) & (Y < canal_y))
    med |= heart_r <= 1.0 + 5.0 / min(ha, hb)
    med |= d_aorta < ar + 5.0
    med |= d_pa < 15.0
    med |= d_svc < 13.0
    med |= d_trach < 12.0
    med |= d_hilum < 14.0 + 3.0 * f_lung
    med &= cavity

    # ---- diaphragm domes: lungs only above, liver/abdomen below
    half_x = np.maximum(cav_ax, 1.0)
    dome_r = p.dome_right - 45.0 * (
        ((X - (cx - 0.45 * half_x)) / (0.75 * half_x)) ** 2 + ((Y - cy) / 110.0) ** 2
    )
    dome_l = p.dome_left - 45.0 * (
        ((X - (cx + 0.45 * half_x)) / (0.75 * half_x)) ** 2 + ((Y - cy) / 110.0) ** 2
    )
    dome = np.where(X < cx, dome_r, dome_l)
    below = Z < dome

    thorax = cavity & ~below
    labels[cavity & below] = T.LIVER
    lung = thorax & ~med
    labels[lung] = T.LUNG
    medl = thorax & med
    labels[medl] = T.MEDIASTINUM
    # anterior mediastinal (thymic) fat and a thin pericardial fat line: fat on CT, bright on T2
    ant_fat = (
        medl & (Y < hcen[1] - hb * 0.55) & (d_aorta > ar + 2.0) & (d_svc > 12.0) & (f_lung > -0.3)
    )
    labels[ant_fat & (heart_r > 1.0)] = T.FAT
    labels[cavity & heart] = T.MYOCARDIUM
    labels[cavity & heart_blood] = T.BLOOD
    labels[d_aorta < ar] = T.BLOOD
    labels[(d_pa < 11.0) & cavity] = T.BLOOD
    labels[(d_svc < 9.5) & cavity] = T.BLOOD
    labels[d_trach < 8.5] = T.AIRWAY
    # main bronchi with a soft-tissue wall, inside the lungs
    labels[(d_bronch < 8.0) & thorax & (d_bronch >= 5.5)] = T.MEDIASTINUM
    labels[(d_bronch < 5.5) & thorax] = T.AIRWAY

    # ---- spine
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

    # ---- sternum (anterior midline, just inside the muscle layer)
    st_y = cy - cav_ant - 9.0
    r_st = np.sqrt(((X - cx) / 15.0) ** 2 + ((Y - st_y) / 6.0) ** 2)
    labels[(r_st < 1.0) & body] = T.BONE
    labels[(r_st < 0.6) & body] = T.MARROW

    # ---- lung vessels: intersections of two zero level sets = random tubes, thicker near the hila
    eps = 0.11 + 0.3 * np.exp(-d_hilum / 45.0)
    vessel = lung & (np.abs(f_v1) < eps) & (np.abs(f_v2) < eps)
    labels[vessel] = T.LUNG_VESSEL

    anatomy = Anatomy(grid, labels, texture, p)
    anatomy.tumours = _add_tumours(anatomy, rng, axes3, (cx, cy), d_cav, f_lung)
    return anatomy


# ---------------------------------------------------------------------------------------- tumours
_NO_TUMOUR = np.zeros(N_TISSUES, dtype=bool)
for _t in (
    Tissue.BONE,
    Tissue.MARROW,
    Tissue.AIRWAY,
    Tissue.SPINAL_CANAL,
    Tissue.DISC,
    Tissue.AIR,
    Tissue.FAT,
    Tissue.MUSCLE,
    Tissue.LIVER,
):
    _NO_TUMOUR[_t] = True
# tumours grow in lung, mediastinal soft tissue and can reach (but not replace) heart and vessels
_NO_TUMOUR[Tissue.BLOOD] = True
_NO_TUMOUR[Tissue.MYOCARDIUM] = True


def _tumour_shape(
    rng: np.random.Generator,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
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


def _add_tumours(
    anat: Anatomy,
    rng: np.random.Generator,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    body_xy: tuple[float, float],
    d_cav: np.ndarray,
    f_lung: np.ndarray,
) -> list[TumourInfo]:
    """Place ``patient.n_tumours`` tumours (lung / chest wall / mediastinal) into ``anat.labels``."""
    grid, labels, p = anat.grid, anat.labels, anat.patient
    T = Tissue
    Z, Y, X = axes
    min_r = 1.3 * float(max(grid.spacing))  # at least ~2.5 voxels across
    lung = labels == T.LUNG
    edt = None
    infos: list[TumourInfo] = []
    kinds = list(p.tumour_kinds)
    diams = list(p.tumour_diameters)
    for kind, diam in zip(kinds, diams):
        radius = max(diam / 2.0, min_r)
        placed = False
        for attempt in range(12):
            r = radius * (0.8**attempt) if attempt else radius
            r = max(r, min_r)
            if kind == "lung":
                if edt is None:
                    edt = ndi.distance_transform_edt(lung, sampling=tuple(grid.spacing_zyx)).astype(
                        np.float32
                    )
                cand = np.flatnonzero((edt >= max(0.6 * r, 1.0)) & (labels == T.LUNG))
            elif kind == "chest_wall":
                near_wall = (
                    (d_cav > -max(0.5 * r, 3.0)) & (d_cav < -0.5 * r + 3.0) & (labels == T.LUNG)
                )
                cand = np.flatnonzero(near_wall)
            else:  # mediastinal: lung voxels touching mediastinal soft tissue
                soft = labels == T.MEDIASTINUM
                cand = np.flatnonzero(ndi.binary_dilation(soft, iterations=1) & (labels == T.LUNG))
            if cand.size == 0:
                kind = "lung"  # no wall or mediastinal contact on this grid: fall back
                continue
            k, j, i = np.unravel_index(int(cand[rng.integers(cand.size)]), grid.shape)
            centre = np.array([X[0, 0, i], Y[0, j, 0], Z[k, 0, 0]], dtype=np.float64)
            if kind == "mediastinal":
                # push the centre 0..0.6 R towards the midline: abutting or inside the mediastinum
                direction = np.array([np.sign(body_xy[0] - centre[0]) or 1.0, 0.0, 0.0])
                centre = centre + direction * rng.uniform(0.0, 0.6) * r
            sl = _boxed(grid, centre, 2.0 * r + 2 * max(grid.spacing))
            if sl is None:
                continue
            inside, rr = _tumour_shape(rng, axes, sl, centre, r)
            sub = labels[sl]
            allowed = ~_NO_TUMOUR[sub]
            if kind == "chest_wall":
                allowed &= d_cav[sl] <= 0.0
            put = inside & allowed
            if int(put.sum()) < 3:
                continue
            core = put & (rr < 0.5)
            sub[put] = T.TUMOUR
            if 2 * r > 28.0 and rng.random() < 0.5:
                sub[core & (f_lung[sl] > -0.5)] = T.NECROSIS
            infos.append(
                TumourInfo(kind, tuple(float(c) for c in centre), float(2 * r), int(put.sum()))
            )  # type: ignore[arg-type]
            lung = labels == T.LUNG
            edt = None
            placed = True
            break
        if not placed:  # pragma: no cover - extremely small grids only
            # last resort: a small tumour in the middle of the largest lung region
            idx = np.flatnonzero(labels == T.LUNG)
            if idx.size == 0:
                idx = np.flatnonzero(labels != T.AIR)
            k, j, i = np.unravel_index(int(idx[idx.size // 2]), grid.shape)
            labels[k, j, i] = T.TUMOUR
            infos.append(
                TumourInfo(
                    kind, (float(X[0, 0, i]), float(Y[0, j, 0]), float(Z[k, 0, 0])), min_r, 1
                )
            )
    return infos
