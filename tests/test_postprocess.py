"""Small-component removal (cmedl.inference.postprocess.remove_small_components): known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cmedl.errors import InputError
from cmedl.inference.postprocess import postprocess_probabilities, remove_small_components


def test_components_below_the_volume_are_removed_others_kept():
    m = np.zeros((6, 20, 20), np.uint8)
    m[1:3, 2:5, 2:5] = 1      # 18 voxels
    m[1:5, 10:15, 10:15] = 1  # 100 voxels
    m[5, 0, 19] = 1           # 1 voxel
    spacing = (2.0, 1.0, 1.0)  # 2 mm^3 per voxel: 0.036 ml, 0.2 ml, 0.002 ml
    out = remove_small_components(m, spacing, 0.03)
    assert out.sum() == 118 and out[5, 0, 19] == 0
    assert remove_small_components(m, spacing, 0.1).sum() == 100
    assert remove_small_components(m, spacing, 1.0).sum() == 0
    np.testing.assert_array_equal(remove_small_components(m, spacing, 0.0), m)
    diag = np.zeros((3, 3, 3), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = 1  # corner neighbours: one component with 26-connectivity
    assert remove_small_components(diag, (1.0, 1.0, 1.0), 0.0015).sum() == 2
    assert remove_small_components(diag, (1.0, 1.0, 1.0), 0.0015, connectivity=1).sum() == 0
    with pytest.raises(InputError, match=">= 0 ml"):
        remove_small_components(m, spacing, -1)


def test_postprocess_applies_the_minimum_before_the_largest_component():
    p = np.zeros((4, 10, 10), np.float32)
    p[0:2, 0:2, 0:2] = 0.9   # 8 voxels
    p[0:4, 5:9, 5:9] = 0.8   # 64 voxels
    out = postprocess_probabilities(p, 0.5, min_component_ml=0.01, spacing_zyx=(1.0, 1.0, 1.0))
    assert out.sum() == 64
    with pytest.raises(InputError, match="spacing"):
        postprocess_probabilities(p, 0.5, min_component_ml=0.01)
