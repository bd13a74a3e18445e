"""CT rendering of a phantom :class:`~.anatomy.Anatomy`: Hounsfield units with partial-volume
blur and correlated noise.

Calibration (measured on ``shared/data/real/lidc_0314/ct_thorax_2mm.nii.gz``, LIDC-IDRI-0314,
histogram peaks inside the body, 10/5 HU bins; see ``benchmarks/make_phantom_figure.py``):

================  ==========================================================
lung parenchyma   peak -857 HU (median -846, IQR -879..-797)
fat               peak -87 HU (mean of eroded fat -94)
soft tissue       peak +52 HU (muscle); heart ROI +35 HU (non-contrast)
bone (> 200 HU)   median 532, 75th pct 832, 90th pct 1112 HU
nodule (LIDC)     core median +78 HU (10-90 %: 43..102)
noise             local SD ~13 HU in soft tissue and ~15 HU in fat on 2-mm averaged slices,
                  i.e. ~18-20 HU on a single 3-mm slice of a standard-dose scan
================  ==========================================================

The tumour is set relative to the soft tissue it abuts (mediastinum at 40 HU; chest-wall muscle at
50 HU for a ``chest-wall`` tumour) by the patient's ``ct_tumour_offset_hu`` (:mod:`.options`): by
default +20..30 HU in every patient (the *cue cohort*: a weak but consistent cue, per-voxel AUC ~0.75
against 18 HU noise), or a random-sign 0..12 HU in the negative control (the calibrated original: a
boundary against the mediastinum that is below the noise, no consistent sign). Against lung (~900 HU
lower) every tumour is obvious: the premise of CMEDL.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cmedl.data.phantom.anatomy import N_TISSUES, Anatomy, Tissue

T = Tissue

#: Mean HU per tissue (see the calibration table in the module docstring).
CT_HU: dict[Tissue, float] = {
    T.AIR: -1000.0,
    T.FAT: -90.0,
    T.MUSCLE: 50.0,
    T.BONE: 700.0,
    T.MARROW: 230.0,
    T.LUNG: -857.0,
    T.LUNG_VESSEL: 40.0,
    T.MYOCARDIUM: 45.0,
    T.BLOOD: 38.0,
    T.MEDIASTINUM: 40.0,
    T.AIRWAY: -1000.0,
    T.SPINAL_CANAL: 20.0,
    T.LIVER: 58.0,
    T.DISC: 80.0,
    T.TUMOUR: 40.0,  # replaced per patient by mediastinum + offset (see tumour_offset_hu)
    T.NECROSIS: 22.0,
}

#: Texture amplitude (HU, SD of the smooth texture field) per tissue.
CT_TEXTURE: dict[Tissue, float] = {
    T.FAT: 8.0,
    T.MUSCLE: 5.0,
    T.MARROW: 45.0,
    T.LUNG: 22.0,
    T.MEDIASTINUM: 6.0,
    T.LIVER: 4.0,
    T.TUMOUR: 9.0,
    T.NECROSIS: 6.0,
    T.BONE: 80.0,
}


def tumour_reference_hu(anatomy: Anatomy) -> float:
    """HU of the soft tissue the patient's dominant tumour abuts: chest-wall muscle for a
    ``chest-wall`` tumour, mediastinal soft tissue otherwise (the CT cue is relative to it)."""
    kinds = [t.kind for t in anatomy.tumours] or list(anatomy.patient.tumour_kinds)
    return CT_HU[T.MUSCLE] if kinds and kinds[0] == "chest-wall" else CT_HU[T.MEDIASTINUM]


def tumour_hu(anatomy: Anatomy) -> float:
    """Mean CT HU of the patient's tumours: the abutting tissue plus ``ct_tumour_offset_hu``."""
    return tumour_reference_hu(anatomy) + anatomy.patient.ct_tumour_offset_hu


def _lut(values: dict[Tissue, float], default: float = 0.0) -> np.ndarray:
    lut = np.full(N_TISSUES, default, dtype=np.float32)
    for k, v in values.items():
        lut[int(k)] = v
    return lut


def correlated_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sd: float, sigma_vox: float
) -> np.ndarray:
    """Gaussian noise with SD ``sd`` and in-plane correlation ``sigma_vox`` voxels (float32),
    like reconstructed CT noise (the ramp filter and interpolation correlate neighbours)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_vox > 0:
        n = ndi.gaussian_filter(n, (0.0, sigma_vox, sigma_vox))
        n *= sd / max(float(n.std()), 1e-6)
    else:
        n *= sd
    return n


def ct_clean(anatomy: Anatomy, blur_vox: tuple[float, float, float] = (0.4, 0.6, 0.6)) -> np.ndarray:
    """Noise-free CT (HU, float32 ``[z, y, x]``): tissue means + texture, gravity-dependent lung
    density, breathing-dependent lung HU, the tumour at :func:`tumour_hu` (necrosis 18 HU below),
    partial-volume blur of ``blur_vox`` voxels (z, y, x)."""
    p = anatomy.patient
    values = dict(CT_HU)
    values[T.LUNG] = CT_HU[T.LUNG] + (0.5 - p.breath) * 50.0
    values[T.TUMOUR] = tumour_hu(anatomy)
    values[T.NECROSIS] = values[T.TUMOUR] - 18.0
    labels = anatomy.labels
    hu = _lut(values)[labels]
    hu += _lut(CT_TEXTURE)[labels] * anatomy.texture
    # dependent (posterior) lung is denser: up to +40 HU at the back
    _, Y, _ = anatomy.grid.axes()
    grad = np.clip((Y - p.cy) / p.body_b_post, -1.0, 1.0) * 25.0 + 15.0
    lung = labels == T.LUNG
    hu += np.where(lung, grad, 0.0).astype(np.float32)
    return ndi.gaussian_filter(hu, blur_vox)


def render_ct(anatomy: Anatomy, rng: np.random.Generator, noise_sd: float = 18.0) -> np.ndarray:
    """CT in HU (float32 ``[z, y, x]``, clipped to [-1024, 3071]) with correlated noise of SD
    ``noise_sd`` HU."""
    hu = ct_clean(anatomy)
    hu += correlated_noise(rng, hu.shape, noise_sd, 0.7)
    return np.clip(hu, -1024.0, 3071.0, out=hu)
