"""cmedl's metrics vs DeepMind's ``surface-distance`` (the reference implementation, test-only).

Agreement required by issue 4: Dice equal, surface Dice within 1e-3, HD95 within 0.05 mm. Observed
(random blobs and real STS / LIDC masks, anisotropic spacing): differences <= 1e-15 (identical
surfel areas and bit-identical distances). Empty masks are not compared: the installed
``surface-distance`` uses ``np.Inf``, which numpy 2 removed, and leaves both-empty undefined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared
from scipy import ndimage

from cmedl.evaluation import compute_all
from cmedl.evaluation.metrics import surfel_area_table
from cmedl.io import read_volume

sd = pytest.importorskip("surface_distance")

DSC_TOL, SDSC_TOL, HD95_TOL_MM = 1e-12, 1e-3, 0.05


def oracle(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> dict[str, float]:
    d = sd.compute_surface_distances(ref, pred, spacing)  # DeepMind's order: (gt, pred)
    a_gt, a_pred = d["surfel_areas_gt"].sum(), d["surfel_areas_pred"].sum()
    m_gt, m_pred = sd.compute_average_surface_distance(d)
    return {
        "dsc": float(sd.compute_dice_coefficient(ref, pred)),
        "sdsc": float(sd.compute_surface_dice_at_tolerance(d, tol)),
        "hd95": float(sd.compute_robust_hausdorff(d, 95)),
        "hd": float(sd.compute_robust_hausdorff(d, 100)),
        "assd": float((m_gt * a_gt + m_pred * a_pred) / (a_gt + a_pred)),
    }


def assert_agrees(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> dict[str, float]:
    mine = compute_all(pred, ref, spacing, tol)
    ref_vals = oracle(pred, ref, spacing, tol)
    diffs = {k: abs(mine[k] - ref_vals[k]) for k in ref_vals}
    assert diffs["dsc"] <= DSC_TOL, diffs
    assert diffs["sdsc"] <= SDSC_TOL, diffs
    assert diffs["hd95"] <= HD95_TOL_MM, diffs
    assert diffs["hd"] <= HD95_TOL_MM and diffs["assd"] <= 1e-6, diffs
    return diffs


def test_surfel_area_table_matches_deepmind_for_random_spacings() -> None:
    from surface_distance import lookup_tables

    rng = np.random.default_rng(0)
    for _ in range(25):
        spacing = tuple(np.exp(rng.uniform(-2.0, 2.0, 3)))
        expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surfel_area_table(spacing), expected, rtol=1e-12, atol=1e-12)


def test_random_blobs_anisotropic() -> None:
    rng = np.random.default_rng(42)
    worst = {"dsc": 0.0, "sdsc": 0.0, "hd95": 0.0, "hd": 0.0, "assd": 0.0}
    for i in range(25):
        shape = tuple(int(n) for n in rng.integers(6, 36, 3))
        spacing = tuple(float(s) for s in np.round(rng.uniform(0.4, 4.0, 3), 3))
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5 + i % 3)
        noisy = field + 0.4 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
        thr = np.quantile(field, rng.uniform(0.5, 0.9))
        ref, pred = field > thr, noisy > thr
        if i % 5 == 0:  # shifted copies and blobs touching the array border
            pred = np.roll(ref, int(rng.integers(1, 4)), axis=int(rng.integers(0, 3)))
        if not ref.any() or not pred.any():
            continue
        tol = float(rng.choice([1.0, 2.0, 4.38, float(rng.uniform(0.2, 6.0))]))
        diffs = assert_agrees(pred, ref, spacing, tol)
        worst = {k: max(worst[k], diffs[k]) for k in worst}
    print("max |cmedl - surface-distance| on random blobs:", worst)


def _perturbations(ref: np.ndarray) -> list[np.ndarray]:
    ball = ndimage.generate_binary_structure(3, 1)
    rng = np.random.default_rng(7)
    noise = ndimage.gaussian_filter(rng.standard_normal(ref.shape), 2.0)
    smooth = ndimage.gaussian_filter(ref.astype(np.float32), 1.5) + 0.3 * noise > 0.5
    return [
        np.roll(ref, (1, 2, -1), axis=(0, 1, 2)),
        ndimage.binary_erosion(ref, ball, iterations=2),
        ndimage.binary_dilation(ref, ball, iterations=1),
        smooth,
    ]


def _real_masks() -> list[Path]:
    root = require_shared("sts_nifti")
    paths = sorted(root.glob("*/*/mask.nii.gz"))[::2]  # one per patient (CT), keeps the test quick
    lidc = require_shared("lidc_0314", "nodule_consensus50_2mm.nii.gz")
    return [*paths, lidc]


@pytest.mark.shared_data
def test_real_masks_with_perturbed_predictions() -> None:
    worst = {"dsc": 0.0, "sdsc": 0.0, "hd95": 0.0, "hd": 0.0, "assd": 0.0}
    for path in _real_masks():
        vol = read_volume(path)
        ref = vol.array.astype(bool)
        bb = ndimage.find_objects(ref.astype(np.uint8))[0]
        sl = tuple(slice(max(s.start - 6, 0), s.stop + 6) for s in bb)  # keep the oracle fast
        ref = ref[sl]
        for pred in _perturbations(ref):
            if not pred.any():
                continue
            for tol in (2.0, 4.38):
                diffs = assert_agrees(pred, ref, vol.spacing_zyx, tol)
                worst = {k: max(worst[k], diffs[k]) for k in worst}
    print("max |cmedl - surface-distance| on real masks:", worst)
