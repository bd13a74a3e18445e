"""Per-patient parameters of the phantom thorax and how they are drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    # diameters: a radiotherapy (locally advanced NSCLC) cohort: log-uniform 15..70 mm, with
    # 15 % small nodules of 5..15 mm, so most cases carry a tumour the demo networks can learn at
    # ~3 mm voxels
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
