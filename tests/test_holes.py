"""Slice-wise hole filling (cmedl.data.holes): known answers and voxel-for-voxel agreement with
scipy's per-slice ``binary_fill_holes``, which it replaces for speed."""

import numpy as np
import pytest
from scipy import ndimage

from cmedl.data.holes import fill_holes_slicewise
from cmedl.errors import InputError


def test_a_ring_is_filled_in_its_slice_only_and_an_open_ring_is_not() -> None:
    m = np.zeros((3, 9, 9), bool)
    m[0, 2:7, 2:7] = True
    m[0, 3:6, 3:6] = False  # closed ring: 9 hole pixels
    m[1] = m[0]
    m[1, 4, 2] = False  # the ring opened to the outside: no hole any more
    out = fill_holes_slicewise(m)
    assert out.dtype == bool
    assert out[0].sum() == 25 and out[0, 2:7, 2:7].all()
    assert (out[1] == m[1]).all()
    assert not out[2].any()


def test_a_cavity_open_along_z_is_still_a_hole_of_each_slice() -> None:
    m = np.zeros((4, 8, 8), bool)
    m[:, 1:7, 1:7] = True
    m[:, 3:5, 3:5] = False  # a tube through every slice: a 3D filling would leave it open
    assert fill_holes_slicewise(m)[:, 1:7, 1:7].all()


def test_background_touching_the_image_edge_is_never_a_hole() -> None:
    m = np.zeros((1, 6, 6), bool)
    m[0, 0:4, 0:4] = True  # mask against the top-left corner
    m[0, 0, 1:3] = False  # a notch on the image edge
    m[0, 1:3, 1:3] = False  # joined to the notch, so open to the outside
    out = fill_holes_slicewise(m)
    assert (out == m).all()


@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_per_slice_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = np.zeros((5, 31, 27), bool)
    r0, c0 = rng.integers(0, 8, 2)
    r1, c1 = rng.integers(20, 32), rng.integers(18, 28)
    m[:, r0:r1, c0:c1] = rng.random((5, r1 - r0, c1 - c0)) < rng.uniform(0.4, 0.8)
    ref = np.stack([ndimage.binary_fill_holes(s) for s in m])
    assert (ref != m).any()  # the case has holes to fill
    assert (fill_holes_slicewise(m) == ref).all()
    assert (fill_holes_slicewise(m.astype(np.uint8) * 3) == ref).all()  # any non-zero is inside


def test_empty_full_and_bad_shapes() -> None:
    assert not fill_holes_slicewise(np.zeros((2, 4, 4))).any()
    assert fill_holes_slicewise(np.ones((2, 4, 4))).all()
    with pytest.raises(InputError, match="3D"):
        fill_holes_slicewise(np.zeros((4, 4)))
