"""T2-weighted MRI rendering of a phantom :class:`~.anatomy.Anatomy` (arbitrary units).

Calibration (measured on ``shared/data/real/cmbcrc_t2_mri/scan001_ax_t2.nii.gz``, axial T2w
TSE, slice 32 through the lung bases, ROI means; and the histogram of ``scan00{1,2}``):

==================  ======  ====================
subcutaneous fat    ~2300   (ring near the skin: median 1650-2450)
paraspinal muscle   ~850    (ROIs 840-970; abdominal soft-tissue peak 550-650)
vertebral marrow    ~1430
heart (blood)       ~350-480 (flow voids: dark)
lung                ~150    (noise floor)
background          0       (the scanner zeroes air)
==================  ======  ====================

So fat/muscle ~2.7, marrow/muscle ~1.7, blood/muscle ~0.5, lung/muscle ~0.18. The tumour
(T2-bright: oedematous, cellular) is set to 2.0-2.6x muscle, clearly brighter than muscle and
mediastinal soft tissue (~1.1x muscle), and its necrotic core brighter still (fluid).
A smooth multiplicative bias field (coil sensitivity, brighter near the skin) and Rician noise
(magnitude of complex Gaussian noise, SD ~2.5 % of fat) are applied.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cmedl.data.phantom.anatomy import N_TISSUES, Anatomy, Tissue, smooth_field

T = Tissue

#: Mean T2w signal per tissue (arbitrary units, muscle = 850).
T2_SIGNAL: dict[Tissue, float] = {
    T.AIR: 0.0,
    T.FAT: 2300.0,
    T.MUSCLE: 850.0,
    T.BONE: 90.0,
    T.MARROW: 1400.0,
    T.LUNG: 110.0,
    T.LUNG_VESSEL: 110.0,  # flowing blood in small vessels: void, like lung
    T.MYOCARDIUM: 800.0,
    T.BLOOD: 330.0,  # flow void, dark-ish
    T.MEDIASTINUM: 950.0,
    T.AIRWAY: 30.0,
    T.SPINAL_CANAL: 2600.0,  # CSF
    T.LIVER: 620.0,
    T.DISC: 1500.0,
    T.TUMOUR: 1950.0,  # replaced per patient: muscle * (2.0 .. 2.6)
    T.NECROSIS: 2500.0,
}

#: Texture amplitude (signal SD) per tissue.
T2_TEXTURE: dict[Tissue, float] = {
    T.FAT: 110.0,
    T.MUSCLE: 60.0,
    T.MARROW: 120.0,
    T.LUNG: 30.0,
    T.MEDIASTINUM: 80.0,
    T.LIVER: 40.0,
    T.TUMOUR: 170.0,
    T.NECROSIS: 150.0,
    T.BLOOD: 90.0,
}


def _lut(values: dict[Tissue, float]) -> np.ndarray:
    lut = np.zeros(N_TISSUES, dtype=np.float32)
    for k, v in values.items():
        lut[int(k)] = v
    return lut


def render_mr(
    anatomy: Anatomy,
    rng: np.random.Generator,
    noise_frac: float = 0.025,
    bias_strength: float = 0.2,
) -> np.ndarray:
    """T2w MRI (float32 ``[z, y, x]``, >= 0, arbitrary units, muscle ~850).

    ``noise_frac``: Rician noise SD as a fraction of the fat signal; ``bias_strength``: SD of the
    log bias field."""
    grid, labels, p = anatomy.grid, anatomy.labels, anatomy.patient
    values = dict(T2_SIGNAL)
    ratio = 2.3 + 0.3 * p.tumour_contrast
    values[T.TUMOUR] = T2_SIGNAL[T.MUSCLE] * ratio
    sig = _lut(values)[labels]
    sig += _lut(T2_TEXTURE)[labels] * anatomy.texture
    sig = ndi.gaussian_filter(sig, (0.4, 0.6, 0.6))
    np.maximum(sig, 0.0, out=sig)

    # bias: a smooth random field times a coil profile (brighter towards the skin)
    _, Y, X = grid.axes()
    r = np.sqrt(((X - p.cx) / p.body_a) ** 2 + ((Y - p.cy) / p.body_b_post) ** 2)
    log_bias = bias_strength * smooth_field(rng, grid, 160.0) + 0.3 * np.clip(r, 0.0, 1.2) ** 2
    sig *= np.exp(log_bias - float(np.mean(log_bias)))

    sd = noise_frac * T2_SIGNAL[T.FAT]
    n1 = rng.standard_normal(sig.shape, dtype=np.float32) * sd
    n2 = rng.standard_normal(sig.shape, dtype=np.float32) * sd
    out = np.sqrt((sig + n1) ** 2 + n2 * n2)
    # the scanner zeroes the background outside the (slightly dilated) body
    body = ndi.binary_dilation(labels != T.AIR, iterations=2)
    out[~body] = 0.0
    return out.astype(np.float32, copy=False)
