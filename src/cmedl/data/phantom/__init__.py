"""Synthetic thoracic phantom cohorts: CT, cone-beam CT and T2-weighted MRI with exact tumour masks.

The built-in data set of cmedl: it lets the whole CMEDL study run without downloads. Each case is
a randomised adult thorax (body outline, fat, muscle, ribs, spine, sternum, lungs with vessels,
heart, aorta and great vessels, airways, mediastinum, diaphragm) with one dominant lobulated or
spiculated tumour (20-50 mm by default) of a recorded kind: ``lung``, ``mediastinal`` or
``chest-wall`` (:mod:`.options`: sizes, kind mix, the CT cue, the paired oracle).
A tissue label map (:mod:`.anatomy`) is rendered per modality:

- :mod:`.ct`: HU calibrated on a real chest CT; the tumour is 20-30 HU brighter than the soft tissue
  it abuts (the cue cohort; a weak, learnable cue against 18 HU noise), or within a random-sign
  +-12 HU of it in the negative control (``PhantomOptions.control()``: nearly invisible);
- :mod:`.cbct`: CT plus scatter, cupping, streaks, rings, stronger noise and a limited FOV;
- :mod:`.mri`: T2w contrast calibrated on real T2w MRI (tumour and fat bright, lung/bone dark,
  blood flow voids), bias field and Rician noise, on its own spacing and field of view.

CT/CBCT and MRI cohorts are different (unpaired) patients. Entry points: :func:`generate_case`,
:func:`generate_cohort` (files + manifest), CLI ``cmedl data phantom``.
"""

from cmedl.data.phantom.anatomy import (
    Anatomy,
    Grid,
    Patient,
    Tissue,
    TumourInfo,
    build_anatomy,
    sample_patient,
)
from cmedl.data.phantom.cbct import render_cbct
from cmedl.data.phantom.cohort import (
    DEFAULT_SHAPE,
    PhantomCase,
    case_id,
    default_spacing,
    generate_case,
    generate_cohort,
)
from cmedl.data.phantom.ct import render_ct
from cmedl.data.phantom.mri import render_mr
from cmedl.data.phantom.options import TUMOUR_KINDS, PhantomOptions

__all__ = [
    "DEFAULT_SHAPE",
    "Anatomy",
    "Grid",
    "Patient",
    "PhantomCase",
    "PhantomOptions",
    "TUMOUR_KINDS",
    "Tissue",
    "TumourInfo",
    "build_anatomy",
    "case_id",
    "default_spacing",
    "generate_case",
    "generate_cohort",
    "render_cbct",
    "render_ct",
    "render_mr",
    "sample_patient",
]
