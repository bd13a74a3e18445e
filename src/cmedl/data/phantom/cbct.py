"""Cone-beam CT rendering of a phantom :class:`~.anatomy.Anatomy` (HU-like values).

Starts from the noise-free CT (:func:`cmedl.data.phantom.ct.ct_clean`) and adds the artefacts
that make on-board CBCT harder to read than planning CT:

- scatter: a fraction ``kappa`` of each slice's mean attenuation is mixed into every voxel,
  which lowers soft-tissue contrast (fat vs muscle, tumour vs lung);
- cupping: a radial shading, darker at the centre of the body;
- streaks: a sparse-view filtered back-projection residual of the bones (projection along a few
  random angles, high-pass filtered, smeared back), bright/dark lines through ribs and spine;
- rings: small concentric detector-gain rings;
- stronger, coarser noise (SD ~40 HU vs 18 HU for CT) and more blur;
- a limited cylindrical field of view (radius ~120-140 mm for a 350-mm CT FOV), outside which
  values are -1000; a bright rim where the body is truncated by the FOV.

The tumour mask is unchanged (exactly the anatomy's tumour labels).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cmedl.data.phantom.anatomy import Anatomy, Tissue
from cmedl.data.phantom.ct import correlated_noise, ct_clean


def _streaks(
    rng: np.random.Generator, excess: np.ndarray, X: np.ndarray, Y: np.ndarray, ds: float
) -> np.ndarray:
    """Sparse-view streaks of the dense structures ``excess`` (float32 ``[z, y, x]``): project along
    random angles (``np.bincount`` over detector bins; cheaper than ``skimage.transform.radon`` for
    a whole stack), high-pass, back-project by gathering. Returns float32 of unit robust scale."""
    nz = excess.shape[0]
    out = np.zeros(excess.shape, dtype=np.float32)
    n_angles = int(rng.integers(6, 12))
    angles = rng.uniform(0.0, np.pi, size=n_angles)
    flat = excess.reshape(nz, -1)
    for th in angles:
        s = (X * np.cos(th) + Y * np.sin(th)) / ds  # [ny, nx] detector coordinate (bins)
        s_idx = np.rint(s - s.min()).astype(np.int64).ravel()
        nb = int(s_idx.max()) + 1
        idx = (np.arange(nz)[:, None] * nb + s_idx[None, :]).ravel()
        proj = np.bincount(idx, weights=flat.ravel(), minlength=nz * nb).reshape(nz, nb)
        hp = proj - ndi.gaussian_filter1d(proj, 2.0, axis=1)
        out += hp[:, s_idx].reshape(excess.shape).astype(np.float32)
    scale = float(np.percentile(np.abs(out), 99.5)) + 1e-6
    return out / scale


def render_cbct(
    anatomy: Anatomy,
    rng: np.random.Generator,
    noise_sd: float = 40.0,
    fov_radius_mm: float | None = None,
) -> np.ndarray:
    """CBCT in HU (float32 ``[z, y, x]``, clipped to [-1024, 3071]).

    ``fov_radius_mm``: radius of the reconstructed cylinder (default: 0.36-0.42 of the in-plane
    field of view, i.e. ~125-145 mm for the default 346-mm grid, centred near the body axis).
    The tumour's HU is that of the CT (:func:`~cmedl.data.phantom.ct.tumour_hu`) before the artefacts."""
    grid, labels, p = anatomy.grid, anatomy.labels, anatomy.patient
    _, Y, X = grid.axes()
    Y2, X2 = Y[0], X[0]  # [ny,1], [1,nx]
    hu = ct_clean(anatomy, blur_vox=(0.5, 0.9, 0.9))
    body = labels != Tissue.AIR

    mu = (hu + 1000.0) / 1000.0  # attenuation relative to water
    # scatter: mix a fraction of the slice-mean attenuation (inside the body) into every voxel
    kappa = rng.uniform(0.12, 0.2)
    nb = np.maximum(body.sum(axis=(1, 2)), 1)
    mean_mu = (np.where(body, mu, 0.0).sum(axis=(1, 2)) / nb).astype(np.float32)[:, None, None]
    # (normalised so that water stays at 0 HU, as after a CBCT's water calibration)
    mu = np.where(
        body, ((1.0 - kappa) * mu + kappa * mean_mu) / ((1.0 - kappa) + kappa * mean_mu), mu
    )
    # cupping: darker centre, relative to the body's half-width
    r = np.sqrt(
        ((X2 - p.cx) / p.body_a) ** 2 + ((Y2 - p.cy) / (0.5 * (p.body_b_ant + p.body_b_post))) ** 2
    )
    cup = rng.uniform(0.03, 0.06) * np.clip(1.0 - r * r, 0.0, 1.0)
    mu = np.where(body, mu * (1.0 - cup), mu)
    hu = mu * 1000.0 - 1000.0

    # streaks from bone
    excess = np.clip(hu - 150.0, 0.0, None).astype(np.float32)
    if excess.any():
        hu += rng.uniform(90.0, 150.0) * _streaks(rng, excess, X2, Y2, grid.spacing[0])
    # rings around the rotation centre
    iso = np.array([p.cx + rng.normal(0, 10), p.cy + rng.normal(0, 10)])
    r_iso = np.sqrt((X2 - iso[0]) ** 2 + (Y2 - iso[1]) ** 2)
    ring_prof = rng.normal(0.0, 1.0, size=64).astype(np.float32)
    ring_bin = np.clip((r_iso / (2.0 * grid.spacing[0])).astype(int), 0, 63)
    hu += 8.0 * ring_prof[ring_bin]

    hu += correlated_noise(rng, hu.shape, noise_sd, 1.0)

    # limited cylindrical field of view
    fov_x = grid.spacing[0] * grid.shape[2]
    radius = fov_radius_mm if fov_radius_mm is not None else rng.uniform(0.36, 0.42) * fov_x
    edge = radius - r_iso
    hu += np.where(body & (edge > 0), 60.0 * np.exp(-edge / 8.0), 0.0).astype(np.float32)
    hu = np.where(edge > 0, hu, -1000.0).astype(np.float32)
    return np.clip(hu, -1024.0, 3071.0)
