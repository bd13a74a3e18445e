"""Where a phantom tumour meets the soft tissue it abuts: the voxels that carry (or lack) the CT cue.

The CT cue of a cohort (:mod:`.options`) is only visible where tumour and abutting soft tissue meet
without lung, fat or air nearby: elsewhere the partial-volume blur of the interface with lung
(~900 HU lower) dominates every voxel. :func:`boundary_voxels` picks, from the tissue label map, the
tumour voxels within ``width`` voxels of soft tissue and the soft-tissue voxels within ``width``
voxels of the tumour, both at least one voxel from any other tissue. The demo's mechanism
diagnostics measure the per-voxel AUC of an image (CT, or the pMRI drawn from it) on these two sets.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cmedl.data.phantom.tissue import Tissue

T = Tissue
#: Soft tissues a tumour abuts: mediastinum, heart (wall and blood pool), chest-wall muscle.
SOFT_TISSUES = (T.MEDIASTINUM, T.MYOCARDIUM, T.BLOOD, T.MUSCLE)


def boundary_voxels(labels: np.ndarray, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(tumour side, soft-tissue side) boolean masks of the tumour / abutting-soft-tissue interface of
    a tissue label map ``[z, y, x]`` (necrotic cores excluded: they are 18 HU darker by design)."""
    if width < 1:
        raise ValueError(f"width must be >= 1 voxel, got {width}")
    tumour = labels == T.TUMOUR
    soft = np.isin(labels, SOFT_TISSUES)
    clear = ndi.binary_erosion(tumour | soft, iterations=1)  # one voxel from lung, fat, air, bone
    near_soft = ndi.binary_dilation(soft, iterations=width)
    near_tumour = ndi.binary_dilation(tumour, iterations=width)
    return tumour & near_soft & clear, soft & near_tumour & clear
