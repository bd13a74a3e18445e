"""Benchmark: surface metrics on a full-size CT pair (issue 4 speed target).

Builds a 512x512x134 pair at 0.98 x 0.98 x 3 mm (x, y, z) with a ~50,000-voxel lobulated tumour
and a perturbed prediction (shifted, with a different lobulation), then times

- cmedl: ``compute_all`` (surface Dice + HD95 + HD + ASSD + DSC + volumes, distances computed once),
- DeepMind ``surface-distance``: ``compute_surface_distances`` + surface Dice + robust Hausdorff 95
  + Hausdorff + average surface distance,
- MONAI: ``compute_surface_dice`` + ``compute_hausdorff_distance(percentile=95)`` (skip: --no-monai),

and prints median timings, the ratios, and the metric values side by side.
Target: cmedl <= 0.25 s and no slower than surface-distance.

Run: ``python benchmarks/bench_metrics.py [--repeats 5] [--no-monai]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from cmedl.evaluation import compute_all

SHAPE_ZYX = (134, 512, 512)
SPACING_ZYX = (3.0, 0.98, 0.98)
TOLERANCE_MM = 2.0


def lobulated_tumour(seed: int, centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Bool mask [z, y, x]: a sphere whose radius varies smoothly with direction (lobulated)."""
    rng = np.random.default_rng(seed)
    half = [int(1.6 * radius_mm / s) + 2 for s in SPACING_ZYX]
    c_vox = [round(c / s) for c, s in zip(centre_mm, SPACING_ZYX)]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, SPACING_ZYX)], indexing="ij")
    dist = np.sqrt(sum(g**2 for g in grids))
    noise = ndimage.gaussian_filter(rng.standard_normal(dist.shape), sigma=(2, 6, 6))
    noise /= np.abs(noise).max()
    local = dist < radius_mm * (1.0 + 0.35 * noise)
    mask = np.zeros(SHAPE_ZYX, bool)
    sl = tuple(slice(c - h, c + h + 1) for c, h in zip(c_vox, half))
    mask[sl] = local
    return mask


def make_pair(false_positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(pred, ref); with ``false_positive`` the prediction also has a small blob in the other lung."""
    ref = lobulated_tumour(0, (200.0, 240.0, 260.0), 32.0)
    pred = lobulated_tumour(1, (203.0, 242.0, 257.0), 31.0)
    if false_positive:
        pred |= lobulated_tumour(2, (120.0, 300.0, 430.0), 6.0)
    return pred, ref


def timeit(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (lookup tables, imports)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_cmedl(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    r = compute_all(pred, ref, SPACING_ZYX, TOLERANCE_MM)
    return {k: r[k] for k in ("sdsc", "hd95", "hd", "assd")}


def run_surface_distance(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    import surface_distance as sd

    d = sd.compute_surface_distances(ref, pred, SPACING_ZYX)
    a_gt, a_pred = d["surfel_areas_gt"].sum(), d["surfel_areas_pred"].sum()
    m_gt, m_pred = sd.compute_average_surface_distance(d)
    return {
        "sdsc": float(sd.compute_surface_dice_at_tolerance(d, TOLERANCE_MM)),
        "hd95": float(sd.compute_robust_hausdorff(d, 95)),
        "hd": float(sd.compute_robust_hausdorff(d, 100)),
        "assd": float((m_gt * a_gt + m_pred * a_pred) / (a_gt + a_pred)),
    }


def run_monai(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    p = torch.from_numpy(pred)[None, None]
    r = torch.from_numpy(ref)[None, None]
    sdsc = compute_surface_dice(p, r, [TOLERANCE_MM], include_background=True, spacing=SPACING_ZYX)
    hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=SPACING_ZYX)
    return {"sdsc": float(sdsc.item()), "hd95": float(hd95.item())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-monai", action="store_true")
    args = parser.parse_args()

    for false_positive in (False, True):
        pred, ref = make_pair(false_positive)
        _report(pred, ref, args, "with a false positive in the other lung" if false_positive else "single tumour")


def _report(pred: np.ndarray, ref: np.ndarray, args: argparse.Namespace, title: str) -> None:
    print(f"\n[{title}] volume {SHAPE_ZYX} (z, y, x) at {SPACING_ZYX} mm (z, y, x); tumour {int(ref.sum())} "
          f"voxels, prediction {int(pred.sum())} voxels; tolerance {TOLERANCE_MM} mm; median of {args.repeats}")
    results: dict[str, tuple[float, dict[str, float]]] = {}
    results["cmedl compute_all"] = timeit(lambda: run_cmedl(pred, ref), args.repeats)  # type: ignore[assignment]
    results["surface-distance"] = timeit(lambda: run_surface_distance(pred, ref), args.repeats)  # type: ignore[assignment]
    if not args.no_monai:
        results["MONAI"] = timeit(lambda: run_monai(pred, ref), max(1, args.repeats // 2))  # type: ignore[assignment]
    base = results["cmedl compute_all"][0]
    print(f"{'implementation':<20} {'time (s)':>9} {'x cmedl':>8}   sDSC    HD95    HD      ASSD")
    for name, (t, vals) in results.items():
        cells = "  ".join(f"{vals[k]:.4f}" if k in vals else "   -  " for k in ("sdsc", "hd95", "hd", "assd"))
        print(f"{name:<20} {t:9.4f} {t / base:8.2f}   {cells}")
    sd_t = results["surface-distance"][0]
    print(f"target: cmedl <= 0.25 s: {'PASS' if base <= 0.25 else 'FAIL'} ({base:.3f} s); "
          f"speed-up vs surface-distance {sd_t / base:.1f}x")

if __name__ == "__main__":
    main()
