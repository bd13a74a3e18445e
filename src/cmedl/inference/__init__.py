"""Whole-volume inference: segmentation with a method's test-time model and image translation.

- :func:`segment_volume` ``(volume, net, preprocess, ...) -> SegmentationResult`` (mask,
  probabilities, MC-dropout SD), and :func:`segment_files` (``cmedl segment``);
- :func:`translate_volume` ``(volume, generator, preprocess, ...) -> Volume`` (pMRI), and
  :func:`translate_files` (``cmedl translate``);
- :mod:`cmedl.inference.postprocess`: threshold, largest connected component, hole filling;
- :mod:`cmedl.inference.files`: input and output checks, case names, the per-case loop (a failing
  case is reported and the next goes on; :class:`CasesFailed` at the end), progress.

Networks run on the preprocessed working grid through :mod:`cmedl.nets.predict` (the path
training-time validation uses too); every output is written on exactly the input volume's grid
(shape, spacing, origin, direction).
"""

from cmedl.inference.files import CasesFailed, case_name, check_inputs
from cmedl.inference.postprocess import (
    fill_holes_per_slice,
    largest_connected_component,
    postprocess_probabilities,
    threshold_mask,
)
from cmedl.inference.segment import SegmentationResult, segment_files, segment_volume
from cmedl.inference.translate import translate_files, translate_volume

__all__ = [
    "CasesFailed", "SegmentationResult", "case_name", "check_inputs", "fill_holes_per_slice",
    "largest_connected_component", "postprocess_probabilities", "segment_files", "segment_volume", "threshold_mask",
    "translate_files", "translate_volume",
]
