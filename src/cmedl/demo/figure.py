"""The demo's figure: test slices with the CT, a pMRI and every method's contour."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmedl.data.manifest import Case, Manifest
from cmedl.inference.translate import translate_volume
from cmedl.io import atomic_path, read_volume
from cmedl.methods import build_generator_from_checkpoint, get_method
from cmedl.training import load_checkpoint


def save_demo_figure(manifest: Manifest, cases: list[Case], out: Path, checkpoints: dict[str, Path], path: Path,
                     n: int = 4) -> Path:
    """Test slices (largest tumour area): CT, the pMRI of the first method with a CT->MRI translator,
    and the expert (green) and each method's contours."""
    import matplotlib  # lazy: matplotlib (~0.5 s) only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    translating = [m for m, ck in checkpoints.items() if "ct2mr" in get_method(m).translators]
    gen = None
    if translating:
        ckpt = checkpoints[translating[0]]
        gen, pre = build_generator_from_checkpoint(load_checkpoint(ckpt), "ct2mr", source=ckpt)
    colours = ["deepskyblue", "red", "orange", "magenta", "yellow", "cyan"]
    cases = list(cases)[:n]
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        ct = read_volume(manifest.image_path(case))
        ref = read_volume(manifest.label_path(case)).array > 0
        k = int(np.argmax(ref.sum(axis=(1, 2))))
        row[0].imshow(ct.array[k], cmap="gray", vmin=-1000, vmax=400)
        row[0].set_title(f"{case.id} CT (slice {k})", fontsize=8)
        if gen is not None:
            row[1].imshow(translate_volume(ct, gen, pre).array[k], cmap="gray")
            row[1].set_title(f"pMRI ({translating[0]} generator)", fontsize=8)
        row[2].imshow(ct.array[k], cmap="gray", vmin=-160, vmax=240)
        row[2].set_title("mediastinal window: expert / " + " / ".join(checkpoints), fontsize=8)
        masks = [(ref[k], "lime")] + [(read_volume(out / m / "pred" / f"{case.id}.nii.gz").array[k] > 0, colour)
                                      for m, colour in zip(checkpoints, colours)]
        for mask, colour in masks:
            if mask.any():
                row[2].contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
