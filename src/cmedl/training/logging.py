"""Run logs: per-epoch CSV, TensorBoard scalars and per-epoch PNG image grids.

- :func:`write_history_csv` rewrites ``log.csv`` from the whole per-epoch history (atomically), so a
  resumed run's CSV is exactly the uninterrupted run's.
- :class:`TensorBoardLogger` wraps ``torch.utils.tensorboard.SummaryWriter`` (scalars under
  ``train/<term>`` every ``log_every`` steps, ``epoch/<key>`` once per epoch); it degrades to a no-op
  if TensorBoard cannot be imported.
- :func:`save_image_grid` draws rows of samples x columns (CT, pMRI, reconstructed CT, expert mask,
  predicted mask) with matplotlib (Agg backend, no display needed).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmedl.io.atomic import atomic_path


def write_history_csv(path: str | Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """Write one row per epoch; columns are the union of keys in first-seen order."""
    path = Path(path)
    columns: list[str] = []
    for row in history:
        for k in row:
            if k not in columns:
                columns.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


class TensorBoardLogger:
    """Thin wrapper of ``SummaryWriter`` writing to ``log_dir``; ``purge_step`` drops events after a resume point;
    ``enabled=False``: a no-op (the ranks other than 0 of a data-parallel run)."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:  # ranks other than 0 of a data-parallel run log nothing
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter  # lazy: TensorBoard (~1 s) only when logging

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        except Exception as exc:  # noqa: BLE001 - logging must never stop training
            warnings.warn(f"TensorBoard logging disabled ({exc})", stacklevel=2)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def image(self, tag: str, png_path: str | Path, step: int) -> None:
        """Add a saved PNG grid as an image (HWC uint8)."""
        if self.writer is None:
            return
        import matplotlib.image as mpimg  # lazy: matplotlib (~0.5 s) only for image grids

        img = mpimg.imread(str(png_path))
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        self.writer.add_image(tag, img[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


#: columns drawn as binary masks (no intensity window)
MASK_COLUMNS = ("expert", "predicted")


def save_image_grid(
    path: str | Path, images: Mapping[str, torch.Tensor], max_rows: int = 4, title: str | None = None
) -> Path:
    """Save a grid: one row per sample (at most ``max_rows``), one column per entry of ``images``.

    ``images`` maps a column title to ``[B, 1, H, W]`` tensors (images in about [-1, 1], masks in
    {0, 1}); the predicted mask is drawn over the CT with the expert contour for comparison.
    """
    import matplotlib  # lazy: matplotlib (~0.5 s) only for image grids

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: as above

    names = list(images)
    n = min(max_rows, min(int(v.shape[0]) for v in images.values()))
    fig, axes = plt.subplots(n, len(names), figsize=(2.0 * len(names), 2.0 * n), squeeze=False)
    for r in range(n):
        for c, name in enumerate(names):
            ax = axes[r][c]
            arr = images[name][r, 0].detach().float().cpu().numpy()
            if name in MASK_COLUMNS:
                ax.imshow(arr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if "expert" in images and name != "expert":
                    expert = images["expert"][r, 0].float().cpu().numpy()
                    if expert.any():
                        ax.contour(expert, levels=[0.5], colors="lime", linewidths=0.8)
            else:
                ax.imshow(arr, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # an OSError (disk full) becomes an InputError naming path
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
    return path
