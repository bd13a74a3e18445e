"""Mechanism diagnostics: can an image separate tumour from the tissue around it at all?

:func:`separation_auc` is the per-voxel area under the ROC curve of an image's intensities for two
voxel sets (tumour side vs neighbour side of a boundary): 0.5 means the boundary is invisible to any
voxel-wise rule, 1.0 perfectly separated. The demo reports it on CT and on the pMRI of the trained
generator over the same voxels, so a reader can see whether a CT method could possibly find a
boundary and whether the translator drew a contrast the CT does not hold.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps


def separation_auc(image: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """AUC of ``image`` values on ``positive`` voxels vs ``negative`` voxels (boolean masks of the
    image's shape): P(positive > negative) + P(tie) / 2 (the Mann-Whitney U statistic over
    n_pos x n_neg). NaN when either set is empty. Values below 0.5 mean the positive side is darker."""
    img = np.asarray(image)
    pos = np.asarray(positive, dtype=bool)
    neg = np.asarray(negative, dtype=bool)
    if pos.shape != img.shape or neg.shape != img.shape:
        raise ValueError(f"masks {pos.shape}, {neg.shape} must have the image's shape {img.shape}")
    a = img[pos].astype(np.float64)
    b = img[neg].astype(np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan
    u = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (a.size * b.size)
