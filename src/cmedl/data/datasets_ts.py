"""Datasets of the teacher-student paper's methods (box-guided teachers, 3D students).

- :class:`~cmedl.data.ts_cases.TSCache` (re-exported here) reads and prepares the cases once, with
  the paper's preprocessing (clip + z-score, 1 x 1 x 1.5 mm; students: one unit per lung crop) or the
  legacy working grid, and keeps besides image and label the case's **axial box mask** on that grid
  (its box file, else derived from its label) and whether the label is a teacher's pseudo label
  (see :mod:`cmedl.data.ts_cases`).
- :class:`GuidedCropDataset` (``BatchKind.GUIDED_CROPS_3D``): crops of ``crop_size`` voxels centred on
  one lesion (a 26-connected component of the label; lesions drawn uniformly), the centre moved by a
  random jitter of up to ``jitter`` of the crop per axis, random flips. Items::

      {"image": float32 [1, d, h, w], "label": [1, d, h, w], "box": [1, d, h, w] (the case's box mask),
       "case_id": str, "start": int64 [3]}

- :class:`BoxPatchDataset3D` (``strong-patches-3d`` / ``mixed-patches-3d``): the 3D patches of
  :class:`cmedl.data.datasets3d.PatchDataset3D` (a share centred on tumour voxels) drawn from the
  cache's units (paper pipeline: the lung crops), with the box mask as a second target (the
  dual-output student's) and ``"pseudo"`` (bool: a teacher-made label).

Determinism as in the other datasets: item ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cmedl.data.datasets3d import PatchDataset3D
from cmedl.data.preprocess import extract_window
from cmedl.data.ts_cases import TSCache, TSCase, derived_box_mask, lesion_regions, load_ts_case
from cmedl.errors import InputError


def window_start(centre: Sequence[float], size: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """Start of a window of ``size`` centred on ``centre``, kept inside ``shape`` on axes where it fits
    (centred padding where it does not)."""
    starts = []
    for c, p, n in zip(centre, size, shape):
        if n < p:
            starts.append((n - p) // 2)
        else:
            starts.append(int(min(max(int(round(c)) - p // 2, 0), n - p)))
    return starts[0], starts[1], starts[2]


def _flip(arrays: list[np.ndarray], rng: np.random.Generator, flip_prob: float) -> list[np.ndarray]:
    if flip_prob <= 0:
        return arrays
    axes = tuple(a for a in (0, 1, 2) if rng.random() < flip_prob)
    return [np.flip(a, axes) for a in arrays] if axes else arrays


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)[None])


class GuidedCropDataset(Dataset):
    """Lesion-centred crops for the teachers (see the module docstring).

    Args:
        cache: labelled cases (cases without a lesion are skipped; none at all is an InputError).
        crop_size: ``(d, h, w)`` voxels.
        samples_per_epoch: dataset length.
        jitter: largest shift of the crop centre from the lesion's box centre, as a fraction of the crop.
        flip_prob: probability of flipping each axis.
        seed: base seed.
    """

    def __init__(self, cache: TSCache, crop_size: Sequence[int], samples_per_epoch: int, jitter: float = 0.125,
                 flip_prob: float = 0.0, seed: int = 0) -> None:
        self.cache = cache
        self.crop_size = tuple(int(s) for s in crop_size)
        self.samples_per_epoch = int(samples_per_epoch)
        self.jitter = float(jitter)
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.lesions: list[tuple[int, tuple[slice, slice, slice]]] = [
            (i, region) for i, c in enumerate(cache.cases) if c.cached.label is not None
            for region in lesion_regions(c.cached.label)
        ]
        if not self.lesions:
            raise InputError("no lesion in the labelled cases: a guided teacher needs tumours to crop around")
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        ci, region = self.lesions[int(rng.integers(len(self.lesions)))]
        case = self.cache.cases[ci]
        centre = [(r.start + r.stop - 1) / 2 + rng.uniform(-self.jitter, self.jitter) * p
                  for r, p in zip(region, self.crop_size)]
        starts = window_start(centre, self.crop_size, case.cached.image.shape)
        img = extract_window(case.cached.image, starts, self.crop_size, case.cached.prepared.pad_value)
        lab = extract_window(case.cached.label, starts, self.crop_size, 0)  # type: ignore[arg-type]
        box = extract_window(case.box, starts, self.crop_size, 0)
        img, lab, box = _flip([img, lab, box], rng, self.flip_prob)
        return {"image": _tensor(img), "label": _tensor(lab), "box": _tensor(box), "case_id": case.case_id,
                "start": torch.tensor(starts, dtype=torch.int64)}


class BoxPatchDataset3D(PatchDataset3D):
    """:class:`PatchDataset3D` patches with the box mask target and the label's source (see the module
    docstring); sampling is PatchDataset3D's."""

    def __init__(self, cache: TSCache, patch_size: Sequence[int] = (16, 64, 64), tumour_fraction: float = 0.5,
                 samples_per_epoch: int = 100, flip_prob: float = 0.0, seed: int = 0) -> None:
        super().__init__(cache.unit_cache(), patch_size, tumour_fraction, samples_per_epoch, flip_prob, seed=seed)
        self.ts_cache = cache

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        ci, starts, _, rng = self.sample_start(index)
        ts = self.ts_cache.cases[ci]
        case = ts.cached
        img = extract_window(case.image, starts, self.patch_size, case.prepared.pad_value)
        lab = (extract_window(case.label, starts, self.patch_size, 0) if case.label is not None
               else np.zeros(self.patch_size, np.uint8))
        box = extract_window(ts.box, starts, self.patch_size, 0)
        img, lab, box = _flip([img, lab, box], rng, self.flip_prob)
        return {"image": _tensor(img), "label": _tensor(lab), "box": _tensor(box), "has_label": case.label is not None,
                "pseudo": ts.pseudo, "case_id": case.case_id, "start": torch.tensor(starts, dtype=torch.int64)}


__all__ = ["BoxPatchDataset3D", "GuidedCropDataset", "TSCache", "TSCase", "derived_box_mask", "lesion_regions",
           "load_ts_case", "window_start"]
