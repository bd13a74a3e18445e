"""Per-patient parameters of the phantom thorax and how they are drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmedl.data.phantom.options import TUMOUR_KINDS, PhantomOptions


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
    tumour_contrast: float  #: in [-1, 1]: tumour brightness vs its neighbours, per modality
    #: CT/CBCT tumour minus the soft tissue it abuts (HU): the CT cue (see :mod:`.options`)
    ct_tumour_offset_hu: float = 0.0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def ct_offset_hu(contrast: float, options: PhantomOptions) -> float:
    """Tumour minus abutting soft tissue on CT (HU) for a patient's contrast draw ``contrast`` in [-1, 1]:
    ``lo + (hi - lo) |c|`` with a positive sign (cue cohort) or the sign of ``c`` (control)."""
    lo, hi = options.ct_cue_hu
    magnitude = lo + (hi - lo) * abs(contrast)
    if options.cue_sign == "positive":
        return float(magnitude)
    return float(np.sign(contrast)) * magnitude if contrast != 0 else 0.0


def sample_patient(
    rng: np.random.Generator, options: PhantomOptions | None = None, index: int = 0
) -> Patient:
    """Draw one adult thorax (all lengths mm) with the tumours of ``options`` (default: the cue cohort);
    ``index`` (the case index) sets the dominant tumour's kind (:meth:`PhantomOptions.kind_for_index`)."""
    options = options or PhantomOptions()
    u = rng.uniform
    breath = float(u(0, 1))
    dome_right = float(u(-45, -10) - 18 * breath)
    kinds = [options.kind_for_index(index)]
    lo, hi = options.diameter_mm
    # one dominant tumour (a radiotherapy cohort: locally advanced NSCLC), maybe a small nodule
    diam = [_log_uniform(rng, 5.0, 15.0) if rng.random() < options.nodule_share
            else _log_uniform(rng, lo, hi)]
    if rng.random() < options.second_tumour:  # a second, smaller tumour of a random kind
        kinds.append(TUMOUR_KINDS[int(rng.choice(len(TUMOUR_KINDS), p=options.kind_mix))])
        diam.append(diam[0] * float(u(0.3, 0.6)))
    n_tum = len(kinds)
    contrast = float(u(-1, 1))
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
        tumour_kinds=tuple(kinds),
        tumour_diameters=tuple(diam),
        tumour_contrast=contrast,
        ct_tumour_offset_hu=ct_offset_hu(contrast, options),
    )
