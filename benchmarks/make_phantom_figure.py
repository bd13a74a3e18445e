"""Write ``docs/figures/phantom_vs_real.png``: phantom CT / CBCT / T2w MRI next to real scans.

Top row: phantom CT (lung window), phantom CT (mediastinal window, tumour outline in red),
phantom CBCT (same window), phantom T2w MRI (tumour outline). Bottom row: real chest CT
LIDC-IDRI-0314 in the same two windows (nodule outline of >= 2 readers), the phantom's tissue
label map, and a real axial T2w MRI through the lung bases (CMB-CRC). All panels are drawn in
millimetres, so sizes compare directly. Also prints the CT calibration numbers measured on the
real CT (histogram peaks inside the body), which ``cmedl.data.phantom.ct`` uses.

Usage: ``python benchmarks/make_phantom_figure.py [--out docs/figures/phantom_vs_real.png]``
(needs ``../shared/data`` or ``CMEDL_SHARED_DATA``; real panels are left empty without it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage as ndi

from cmedl.data.phantom import generate_case
from cmedl.io import read_volume

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("CMEDL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "real"


def measure_real_ct(hu: np.ndarray) -> dict[str, float]:
    """Histogram peaks of lung, fat, soft tissue and bone inside the body of a chest CT (HU)."""
    body = ndi.binary_opening(hu > -400, iterations=2)
    lab, n = ndi.label(body)
    body = lab == (np.argmax(ndi.sum(body, lab, range(1, n + 1))) + 1)
    body = np.stack([ndi.binary_fill_holes(s) for s in body])
    inside = ndi.binary_erosion(body, iterations=3)

    def peak(v: np.ndarray, lo: float, hi: float, step: float = 5.0) -> float:
        h, e = np.histogram(v, bins=np.arange(lo, hi, step))
        return float(e[np.argmax(h)] + step / 2)

    vals = hu[inside]
    return {
        "lung_peak": peak(vals, -1000, -400),
        "fat_peak": peak(vals, -200, -30),
        "soft_peak": peak(vals, -10, 120),
        "bone_median_over_200": float(np.median(vals[vals > 200])),
    }


def _show(ax, img, spacing_xy, vmin, vmax, title, mask=None, cmap="gray"):
    ny, nx = img.shape
    extent = (0, nx * spacing_xy[0], ny * spacing_xy[1], 0)
    ax.imshow(
        img,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=extent,
        interpolation="nearest" if cmap != "gray" else "bilinear",
    )
    if mask is not None and mask.any():
        xs = (np.arange(nx) + 0.5) * spacing_xy[0]
        ys = (np.arange(ny) + 0.5) * spacing_xy[1]
        ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors="r", linewidths=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _pick(modality: str, seed: int, kinds: tuple[str, ...]) -> tuple:
    """The first case with a tumour of one of ``kinds`` larger than 25 mm (for a readable figure)."""
    for k in range(20):
        case, anat = generate_case(modality, k, seed, return_anatomy=True)
        if any(t.kind in kinds and t.diameter_mm > 25 for t in case.tumours):
            return case, anat
    return case, anat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "phantom_vs_real.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ct, anat = _pick("ct", args.seed, ("mediastinal",))
    from cmedl.data.phantom.cbct import render_cbct

    cb = render_cbct(anat, np.random.default_rng(1))
    mr, _ = _pick("mr", args.seed, ("mediastinal", "lung"))
    z = int(np.argmax(ct.mask.array.sum(axis=(1, 2))))
    zm = int(np.argmax(mr.mask.array.sum(axis=(1, 2))))
    sp = ct.image.spacing[:2]
    soft = (-160, 240)
    lungw = (-1000, 400)

    fig, axes = plt.subplots(2, 4, figsize=(16, 8.2))
    _show(axes[0, 0], ct.image.array[z], sp, *lungw, f"phantom CT {ct.case_id} (lung window)")
    _show(
        axes[0, 1],
        ct.image.array[z],
        sp,
        *soft,
        "phantom CT, mediastinal window + tumour",
        ct.mask.array[z],
    )
    _show(axes[0, 2], cb[z], sp, *soft, "phantom CBCT (same anatomy)", ct.mask.array[z])
    mimg = mr.image.array[zm]
    _show(
        axes[0, 3],
        mimg,
        mr.image.spacing[:2],
        0,
        float(np.percentile(mr.image.array, 99.5)),
        f"phantom T2w MRI {mr.case_id}",
        mr.mask.array[zm],
    )
    _show(axes[1, 2], anat.labels[z], sp, 0, 19, "phantom tissue labels", cmap="tab20")

    if (REAL / "lidc_0314").exists():
        vol = read_volume(REAL / "lidc_0314" / "ct_thorax_2mm.nii.gz")
        nod = read_volume(REAL / "lidc_0314" / "nodule_consensus50_2mm.nii.gz").array
        zr = int(np.argmax(nod.sum(axis=(1, 2))))
        hu = vol.array.astype(np.float32)
        print(
            "real CT calibration (LIDC-IDRI-0314):",
            {k: round(v, 1) for k, v in measure_real_ct(hu).items()},
        )
        _show(axes[1, 0], hu[zr], vol.spacing[:2], *lungw, "real CT LIDC-IDRI-0314 (lung window)")
        _show(
            axes[1, 1],
            hu[zr],
            vol.spacing[:2],
            *soft,
            "real CT, mediastinal window + nodule",
            nod[zr],
        )
    if (REAL / "cmbcrc_t2_mri").exists():
        mv = read_volume(REAL / "cmbcrc_t2_mri" / "scan001_ax_t2.nii.gz")
        zr = mv.shape[0] - 1
        _show(
            axes[1, 3],
            mv.array[zr],
            mv.spacing[:2],
            0,
            float(np.percentile(mv.array, 99.5)),
            "real T2w MRI CMB-CRC (lung bases)",
        )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
