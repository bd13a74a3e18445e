"""Known-answer tests of cmedl.evaluation.metrics / objects / translation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmedl.errors import InputError
from cmedl.evaluation import (
    DEFAULT_TOLERANCE_MM,
    assd,
    compute_all,
    dice,
    hausdorff,
    hausdorff95,
    histogram_kl,
    object_metrics,
    relative_volume_difference,
    surface_dice,
    surface_distances,
    volume_ml,
)

SP = (2.5, 0.8, 1.3)  # (z, y, x) mm, deliberately anisotropic


def cube(shape=(20, 24, 28), start=(5, 6, 7), size=8) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def ball(shape, centre, radius_mm, spacing) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2


# ---------------------------------------------------------------------------- overlap / volume
def test_dice_shifted_cube_known_answer() -> None:
    ref = cube()
    for k in range(9):
        pred = np.roll(ref, k, axis=1)
        assert dice(pred, ref) == pytest.approx((8 - k) / 8)


def test_dice_accepts_01_integer_and_float_masks() -> None:
    ref = cube()
    pred = np.roll(ref, 2, axis=0)
    assert dice(pred.astype(np.uint8), ref.astype(np.float32)) == pytest.approx(0.75)


def test_volume_and_rvd() -> None:
    m = cube(size=10)
    assert volume_ml(m, SP) == pytest.approx(1000 * 2.5 * 0.8 * 1.3 / 1000)
    small = cube(size=5)
    assert relative_volume_difference(small, m) == pytest.approx((125 - 1000) / 1000)
    assert relative_volume_difference(m, small) == pytest.approx((1000 - 125) / 125)


# ---------------------------------------------------------------------------- surface metrics
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cube_hausdorff_uses_spacing_of_the_shift_axis(axis: int, k: int) -> None:
    ref = cube()
    pred = np.roll(ref, k, axis=axis)
    r = compute_all(pred, ref, SP, tolerance_mm=k * SP[axis])
    # the far faces are exactly k voxels apart along `axis`; nothing is farther
    assert r["hd"] == pytest.approx(k * SP[axis])
    assert r["hd95"] <= r["hd"] + 1e-12
    assert 0 < r["assd"] < r["hd"]
    # every surfel is within HD, so surface Dice at tolerance HD is 1
    assert r["sdsc"] == pytest.approx(1.0)
    assert r["dsc"] == pytest.approx((8 - k) / 8)


def test_single_voxels_k_apart_known_answers() -> None:
    # A single voxel's surface is its 8 corner surfels of equal area. Shifted by k >= 2 along z,
    # half the corners are (k-1)*s0 away, half k*s0: HD = HD95 = k*s0, ASSD = (k - 0.5)*s0.
    ref = np.zeros((12, 5, 5), bool)
    ref[2, 2, 2] = True
    k = 4
    pred = np.roll(ref, k, axis=0)
    s0 = SP[0]
    sd = surface_distances(pred, ref, SP)
    assert sd.area_pred.size == 8 and np.allclose(sd.area_pred, sd.area_pred[0])
    assert hausdorff(pred, ref, SP) == pytest.approx(k * s0)
    assert hausdorff95(pred, ref, SP) == pytest.approx(k * s0)
    assert assd(pred, ref, SP) == pytest.approx((k - 0.5) * s0)
    assert surface_dice(pred, ref, SP, k * s0) == pytest.approx(1.0)
    assert surface_dice(pred, ref, SP, (k - 0.5) * s0) == pytest.approx(0.5)
    assert surface_dice(pred, ref, SP, (k - 1) * s0 - 0.01) == pytest.approx(0.0)
    assert dice(pred, ref) == 0.0


def test_identical_masks_touching_the_array_border() -> None:
    m = np.zeros((6, 7, 8), bool)
    m[:3, :, 5:] = True  # touches five array faces
    r = compute_all(m, m.copy(), SP)
    assert (r["dsc"], r["sdsc"], r["hd95"], r["hd"], r["assd"]) == (1.0, 1.0, 0.0, 0.0, 0.0)
    # removing the slice at the border moves that face by one slice: HD = s0
    pred = m.copy()
    pred[0] = False
    assert hausdorff(pred, m, SP) == pytest.approx(SP[0])


def test_full_array_mask_has_a_surface_at_the_border() -> None:
    full = np.ones((4, 5, 6), bool)
    sd = surface_distances(full, full, SP)
    assert sd.area_ref.size > 0
    # total surfel area of a box is close to the box surface area (marching cubes chamfers edges)
    box = 2 * (4 * 2.5 * 5 * 0.8 + 4 * 2.5 * 6 * 1.3 + 5 * 0.8 * 6 * 1.3)
    assert 0.75 * box < sd.area_ref.sum() <= box


def test_concentric_balls_hd_close_to_radius_difference() -> None:
    sp = (1.5, 0.7, 0.7)
    shape = (40, 80, 80)
    ref = ball(shape, (20, 40, 40), 20.0, sp)
    pred = ball(shape, (20, 40, 40), 15.0, sp)
    r = compute_all(pred, ref, sp, tolerance_mm=2.0)
    assert r["hd"] == pytest.approx(5.0, abs=1.0)
    assert r["hd95"] == pytest.approx(5.0, abs=1.0)
    assert r["assd"] == pytest.approx(5.0, abs=1.0)
    assert r["sdsc"] < 0.2  # 5 mm apart, tolerance 2 mm
    assert compute_all(pred, ref, sp, tolerance_mm=6.5)["sdsc"] == pytest.approx(1.0)


def test_objects_far_apart_distance_is_exact() -> None:
    # two single voxels at opposite array corners: the distance spans the whole array
    shape = (30, 200, 200)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    ref[0, 0, 0] = True
    pred[29, 199, 199] = True
    d = math.sqrt((29 * SP[0]) ** 2 + (199 * SP[1]) ** 2 + (199 * SP[2]) ** 2)
    # corner (0,0,0) of ref is (29,199,199) corners from the nearest pred corner, and vice versa;
    # that farthest corner carries 1/8 of the area (> 5 %), so HD95 = HD
    assert hausdorff(pred, ref, SP) == pytest.approx(d, rel=1e-12)
    assert hausdorff95(pred, ref, SP) == pytest.approx(d, rel=1e-12)


def test_hd95_is_max_of_directed_not_pooled_percentile() -> None:
    # ref: big cube; pred: the same cube plus one far single voxel. Directed pred->ref has a
    # small far fraction; ref->pred is all zero.
    ref = cube(shape=(30, 30, 30), start=(2, 2, 2), size=12)
    pred = ref.copy()
    pred[27, 27, 27] = True
    sd = surface_distances(pred, ref, (1.0, 1.0, 1.0))
    d_pr, d_rp = sd.directed_percentile(95)
    assert d_rp == 0.0
    assert sd.robust_hausdorff(95) == max(d_pr, d_rp)
    assert hausdorff(pred, ref, (1.0, 1.0, 1.0)) > 15


# ---------------------------------------------------------------------------- empty masks
def test_empty_mask_conventions() -> None:
    empty = np.zeros((5, 6, 7), bool)
    one = empty.copy()
    one[2, 3, 3] = True
    both = compute_all(empty, empty, SP)
    assert (both["dsc"], both["sdsc"], both["hd95"], both["hd"], both["assd"], both["rvd"]) == (1, 1, 0, 0, 0, 0)
    missed = compute_all(empty, one, SP)  # prediction empty
    assert (missed["dsc"], missed["sdsc"], missed["rvd"]) == (0.0, 0.0, -1.0)
    assert math.isinf(missed["hd95"]) and math.isinf(missed["hd"]) and math.isinf(missed["assd"])
    false_alarm = compute_all(one, empty, SP)  # reference empty
    assert (false_alarm["dsc"], false_alarm["sdsc"]) == (0.0, 0.0)
    assert math.isinf(false_alarm["hd95"]) and math.isinf(false_alarm["rvd"])
    assert dice(empty, empty) == 1.0 and hausdorff95(empty, one, SP) == math.inf


def test_compute_all_matches_single_metric_functions() -> None:
    rng = np.random.default_rng(3)
    ref = cube()
    pred = np.roll(ref, 2, axis=2)
    pred[rng.random(pred.shape) < 0.01] = True
    r = compute_all(pred, ref, SP, 2.0)
    assert r["dsc"] == dice(pred, ref)
    assert r["sdsc"] == surface_dice(pred, ref, SP, 2.0)
    assert r["hd95"] == hausdorff95(pred, ref, SP)
    assert r["hd"] == hausdorff(pred, ref, SP)
    assert r["assd"] == assd(pred, ref, SP)
    assert r["n_voxels_pred"] == int(pred.sum()) and r["n_voxels_ref"] == 512
    assert all(isinstance(r[k], float) for k in ("dsc", "sdsc", "hd95", "volume_ref_ml", "rvd"))


def test_default_tolerances() -> None:
    assert DEFAULT_TOLERANCE_MM == {"ct": 2.0, "cbct": 4.38, "mr": 2.0}


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_input_error() -> None:
    m = cube()
    with pytest.raises(InputError, match="not binary"):
        dice(m.astype(np.uint8) * 2, m)
    nan = m.astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        dice(nan, m)
    with pytest.raises(InputError, match="shape"):
        dice(m[:-1], m)
    with pytest.raises(InputError, match="spacing"):
        hausdorff95(m, m, (1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        hausdorff95(m, m, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="3D"):
        hausdorff95(m[0], m[0], (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="tolerance"):
        surface_dice(m, m, SP, -1.0)


# ---------------------------------------------------------------------------- objects
def test_object_metrics_known_answer() -> None:
    ref = np.zeros((10, 40, 40), bool)
    ref[2:6, 2:12, 2:12] = True  # object A, 400 voxels
    ref[2:6, 25:35, 25:35] = True  # object B, 400 voxels
    pred = np.zeros_like(ref)
    pred[2:6, 2:5, 2:12] = True  # covers 30 % of A -> A detected
    pred[2:6, 25:27, 25:35] = True  # covers 20 % of B -> B missed (and this blob is a FP)
    pred[7:9, 30:33, 2:5] = True  # far false positive
    r = object_metrics(pred, ref, SP)
    assert (r["n_objects_ref"], r["n_objects_pred"], r["tp_ref"], r["tp_pred"], r["fp"], r["fn"]) == (2, 3, 1, 1, 2, 1)
    assert r["recall"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 / 3 / (0.5 + 1 / 3))
    # DSC-TP: object A (400) vs its predicted blob (120, all inside A)
    assert r["dsc_tp"] == pytest.approx(2 * 120 / (400 + 120))
    # with a 20 % threshold B counts too
    assert object_metrics(pred, ref, overlap=0.2)["tp_ref"] == 2


def test_object_metrics_connectivity_and_empty() -> None:
    ref = np.zeros((5, 5, 5), bool)
    ref[1, 1, 1] = ref[2, 2, 2] = True  # diagonal neighbours
    assert object_metrics(ref, ref)["n_objects_ref"] == 1
    assert object_metrics(ref, ref, connectivity=6)["n_objects_ref"] == 2
    empty = np.zeros_like(ref)
    both = object_metrics(empty, empty)
    assert both["f1"] == 1.0 and math.isnan(both["precision"]) and math.isnan(both["recall"])
    missed = object_metrics(empty, ref)
    assert missed["f1"] == 0.0 and missed["recall"] == 0.0 and math.isnan(missed["precision"])
    assert math.isnan(missed["dsc_tp"])
    with pytest.raises(InputError):
        object_metrics(ref, ref, overlap=0.0)


# ---------------------------------------------------------------------------- translation KL
def test_histogram_kl_known_answer_and_direction() -> None:
    pmri = np.array([0.1] * 50 + [0.9] * 50)
    mri = np.array([0.1] * 25 + [0.9] * 75)
    kl = histogram_kl(pmri, mri, bins=2, range=(0.0, 1.0))
    assert kl == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75), abs=1e-5)
    reverse = histogram_kl(mri, pmri, bins=2, range=(0.0, 1.0))
    assert reverse == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5), abs=1e-5)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 16, 16))
    assert histogram_kl(vol, vol.copy()) == pytest.approx(0.0, abs=1e-12)


def test_histogram_kl_pooling_masks_and_clipping() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (3, 20, 20))
    b = rng.normal(0.5, 1, (3, 20, 20))
    pooled = histogram_kl([a, a], [b], range=(-4, 4))
    assert pooled == pytest.approx(histogram_kl(a, b, range=(-4, 4)))  # duplicating a changes nothing
    mask = np.zeros(a.shape, bool)
    mask[1] = True
    assert histogram_kl(a, a + 100 * ~mask, mask=mask, range=(-4, 4)) == pytest.approx(0.0, abs=1e-12)
    # values outside the range are clipped into the edge bins, never dropped
    assert histogram_kl(np.full(10, 50.0), np.full(10, 1.0), bins=4, range=(0, 2)) > 1.0
    with pytest.raises(InputError):
        histogram_kl(a, b, mask=np.ones((2, 2), bool))
    with pytest.raises(InputError):
        histogram_kl(a, b, range=(1.0, 1.0))
