"""Slice-wise hole filling of 3D masks: the body mask, the lung mask and the segmentation clean-up all
fill holes in every axial slice (a lung or cavity open towards the next slice is still a hole in the
slice's contour).

Written here rather than calling ``scipy.ndimage.binary_fill_holes`` slice by slice: that function
grows the background inward by repeated binary erosions, which took 0.65 s of the 1.0 s that
preparing a 512x512x134 CT cost. One connected-component labelling of the background over the whole
stack, with in-plane connectivity only, gives the same mask two to three times faster (0.2-0.45 s
against 0.7-0.9 s on 2 cores): a background component is a hole exactly when it does not reach the
edge of its slice (``binary_fill_holes`` treats the outside of the image as background, with the same
4-connectivity; ``tests/test_holes.py`` checks the two agree voxel for voxel).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmedl.data.cropping import bounding_box
from cmedl.errors import InputError

#: 4-connectivity within an axial slice, none across slices (scipy's default 2D structure, stacked).
_IN_PLANE_CROSS = np.zeros((3, 3, 3), bool)
_IN_PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    """``mask`` (any dtype, non-zero = inside) with the holes of every axial slice filled; bool ``[z, y, x]``.

    Equal to ``binary_fill_holes(mask[k])`` for every slice ``k``.
    """
    m = np.asarray(mask) != 0
    if m.ndim != 3:
        raise InputError(f"slice-wise hole filling needs a 3D [z, y, x] mask, got shape {m.shape}")
    plane = m.any(axis=0)
    if not plane.any():
        return m
    # Work inside the mask's in-plane bounding box (over all slices): a background voxel on the box's
    # edge lies on the image's edge or next to the background around the box, which reaches it.
    box = (slice(None), *bounding_box(plane))
    sub = m[box]
    labels, n = ndimage.label(~sub, structure=_IN_PLANE_CROSS)
    outside = np.zeros(n + 1, bool)  # background components that touch their slice's (box's) edge
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[edge] = True
    outside[0] = False  # label 0 is the mask itself
    out = m.copy()
    out[box] = ~outside[labels]
    return out


__all__ = ["fill_holes_slicewise"]
