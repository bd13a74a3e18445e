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
existing image). The shapes are implicit functions evaluated with numpy broadcasting on open
grids, and random fields are drawn on coarse grids, smoothed with ``scipy.ndimage`` and
interpolated up, which keeps a 128x128x48 case well under a second.

This module assembles an :class:`Anatomy` and re-exports the building blocks: tissue classes
(:mod:`.tissue`), grids and random fields (:mod:`.geometry`), patient parameters
(:mod:`.patient`), the tumour-free organs (:mod:`.organs`) and the tumours (:mod:`.tumours`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmedl.data.phantom.geometry import Grid, smooth_field
from cmedl.data.phantom.organs import draw_random_fields, rasterise_organs
from cmedl.data.phantom.patient import Patient, sample_patient
from cmedl.data.phantom.tissue import N_TISSUES, TUMOUR_CLASSES, Tissue
from cmedl.data.phantom.tumours import TumourInfo, add_tumours

__all__ = [
    "N_TISSUES",
    "TUMOUR_CLASSES",
    "Anatomy",
    "Grid",
    "Patient",
    "Tissue",
    "TumourInfo",
    "build_anatomy",
    "sample_patient",
    "smooth_field",
]


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


def build_anatomy(patient: Patient, grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Rasterise ``patient`` on ``grid`` (tumours included); ``rng`` draws the random fields and
    tumour shapes/places. Deterministic given the generator state."""
    axes = grid.axes()
    fields = draw_random_fields(rng, grid)
    organs = rasterise_organs(patient, grid, axes, fields)
    anatomy = Anatomy(grid, organs.labels, fields.texture, patient)
    anatomy.tumours = add_tumours(
        organs.labels,
        grid,
        patient,
        rng,
        axes,
        (patient.cx, patient.cy),
        organs.cavity_sdf,
        fields.lung,
    )
    return anatomy
