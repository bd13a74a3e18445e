"""Object-wise (lesion-wise) detection metrics: precision, recall, F1 and DSC-TP.

Definitions (teacher-student paper, section 2.5: an object is a true positive at >= 25 % overlap):

- Objects are the 3D connected components of each mask (26-connectivity by default, so a tumour
  touching itself only diagonally across a thick slice stays one object; pass ``connectivity=6``
  for face-connectivity).
- A **reference object** R is *detected* when the prediction covers at least ``overlap`` of it:
  ``|R & pred| >= overlap * |R|``. Recall = detected reference objects / reference objects.
- A **predicted object** P is a *true positive* when it touches a detected reference object;
  otherwise it is a false positive. Precision = true-positive predicted objects / predicted
  objects. (A prediction bloated around a found tumour therefore counts as a detection; its
  excess is penalised by DSC, not by precision.)
- F1 = 2 * precision * recall / (precision + recall).
- DSC-TP = Dice between the detected reference objects and the true-positive predicted objects
  (false positives and missed objects left out): segmentation quality of what was found.

Empty cases: precision is NaN when nothing is predicted, recall is NaN when there is no reference
object (0/0: undefined, shown as "n/a" in summaries). F1 is 1 when both masks are empty and 0
when exactly one is; DSC-TP is NaN when no object was detected. Object counts are returned so that
pooled (micro-averaged) scores can be computed over a data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cmedl.errors import InputError
from cmedl.evaluation.binary_masks import check_pair, check_spacing, union_crop

#: Default minimum covered fraction of a reference object for it to count as detected.
DEFAULT_OVERLAP = 0.25


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 26:
        return np.ones((3, 3, 3), bool)
    if connectivity == 18:
        return ndimage.generate_binary_structure(3, 2)
    if connectivity == 6:
        return ndimage.generate_binary_structure(3, 1)
    raise InputError(f"connectivity must be 6, 18 or 26, got {connectivity}")


def object_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    overlap: float = DEFAULT_OVERLAP,
    connectivity: int = 26,
) -> dict[str, float]:
    """Object-wise detection scores of one pair of 3D binary masks ``[z, y, x]``.

    Args:
        pred, ref: binary masks of the same shape (prediction, reference).
        spacing: ``(z, y, x)`` mm; unused by the scores (they are voxel-count ratios) and
            accepted only for a uniform metric signature; validated when given.
        overlap: minimum fraction of a reference object covered by the prediction (0-1].
        connectivity: 6, 18 or 26 (3D neighbourhood defining an object).

    Returns:
        ``precision``, ``recall``, ``f1``, ``dsc_tp`` (floats, NaN where undefined, see module
        docstring) and the counts ``n_objects_ref``, ``n_objects_pred``, ``tp_ref`` (detected
        reference objects), ``tp_pred`` (true-positive predicted objects), ``fp`` and ``fn``.
    """
    pred, ref = check_pair(pred, ref)
    if spacing is not None:
        check_spacing(spacing)
    if not 0.0 < float(overlap) <= 1.0:
        raise InputError(f"overlap must be in (0, 1], got {overlap}")
    structure = _structure(connectivity)
    crop = union_crop(pred, ref)
    if crop is None:
        return _result(0, 0, 0, 0, math.nan)
    p, r = crop
    lab_r, n_r = ndimage.label(r, structure=structure)
    lab_p, n_p = ndimage.label(p, structure=structure)
    size_r = np.bincount(lab_r.ravel(), minlength=n_r + 1)
    covered_r = np.bincount(lab_r[p], minlength=n_r + 1)
    detected = covered_r >= overlap * size_r
    detected[0] = False
    tp_ref = int(detected[1:].sum())
    # predicted objects touching a detected reference object
    det_vox = detected[lab_r]
    touching = np.bincount(lab_p[det_vox & p], minlength=n_p + 1) > 0
    touching[0] = False
    tp_pred = int(touching[1:].sum())
    if tp_ref:
        tp_pred_mask = touching[lab_p]
        inter = int(np.count_nonzero(det_vox & tp_pred_mask))
        dsc_tp = 2.0 * inter / (int(np.count_nonzero(det_vox)) + int(np.count_nonzero(tp_pred_mask)))
    else:
        dsc_tp = math.nan
    return _result(n_r, n_p, tp_ref, tp_pred, dsc_tp)


def _result(n_ref: int, n_pred: int, tp_ref: int, tp_pred: int, dsc_tp: float) -> dict[str, float]:
    precision = tp_pred / n_pred if n_pred else math.nan
    recall = tp_ref / n_ref if n_ref else math.nan
    if n_ref == 0 and n_pred == 0:
        f1 = 1.0
    elif n_ref == 0 or n_pred == 0 or precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2.0 * precision * recall / (precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "dsc_tp": dsc_tp,
        "n_objects_ref": n_ref,
        "n_objects_pred": n_pred,
        "tp_ref": tp_ref,
        "tp_pred": tp_pred,
        "fp": n_pred - tp_pred,
        "fn": n_ref - tp_ref,
    }
