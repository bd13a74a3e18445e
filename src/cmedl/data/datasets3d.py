"""3D patch dataset for volumetric networks (the CBCT paper's 3D U-Net baseline, ``ct-only-3d``).

:class:`PatchDataset3D` draws fixed-size 3D patches ``(d, h, w)`` voxels (z, y, x order, like
:class:`cmedl.io.Volume` arrays) from the working-grid volumes of a
:class:`cmedl.data.datasets.VolumeCache` (the same preprocessing as the 2D slice datasets):

- a ``tumour_fraction`` share of the samples is centred on a random tumour voxel (uniform over
  the tumour voxels of a case; the case is drawn uniformly among the cases with a tumour), moved
  by a random jitter of up to a quarter of the patch per axis so the tumour is not always at the
  centre; the rest is centred on a random body voxel (random body-containing slice, random body
  pixel of it) of a random case;
- patches are kept inside the volume where it is large enough (a tumour voxel always stays
  inside the patch) and padded with the preprocessing's background value where it is not;
- augmentation is random flips (each axis of ``flip_axes`` with probability ``flip_prob``).

Items (collated by the default collate into ``[B, 1, d, h, w]`` batches)::

    {"image": float32 [1, d, h, w], "label": float32 [1, d, h, w] in {0, 1}, "has_label": bool,
     "case_id": str, "start": int64 [3] (z, y, x start of the patch on the working grid)}

Determinism: item ``i`` of epoch ``e`` depends only on ``(seed, e, i)`` through
``numpy.random.default_rng([seed, e, i])``, as in :class:`cmedl.data.datasets.SliceDataset`, so
any number of DataLoader workers gives identical batches. Call ``set_epoch(epoch)`` before each
epoch; a validation set simply stays at epoch 0 (fixed patches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cmedl.data.datasets import VolumeCache
from cmedl.data.preprocess import extract_window
from cmedl.errors import InputError

#: Golden-ratio fraction for the tumour/background choice of item ``i``: ``frac(offset + i*PHI)``
#: is a low-discrepancy sequence, so the tumour share of an epoch matches ``tumour_fraction`` to
#: within a sample or two (a Bernoulli draw per item would vary binomially), from ``i`` alone.
_PHI = (math.sqrt(5.0) - 1.0) / 2.0


class PatchDataset3D(Dataset):
    """Fixed-size 3D patches of the cached volumes, a share of them centred on the tumour.

    Args:
        cache: the preprocessed cases (labels on the working grid; unlabelled cases count as
            tumour-free and give ``has_label=False`` with an all-zero label).
        patch_size: ``(d, h, w)`` voxels of the working grid (z, y, x).
        tumour_fraction: share of samples centred on a tumour voxel, in ``[0, 1]``.
        samples_per_epoch: dataset length (patches per epoch).
        flip_prob: probability of flipping each axis in ``flip_axes`` (0: no augmentation).
        flip_axes: patch axes that may be flipped (0 = z, 1 = y, 2 = x).
        seed: base seed; item ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
    """

    def __init__(
        self,
        cache: VolumeCache,
        patch_size: Sequence[int] = (16, 64, 64),
        tumour_fraction: float = 0.5,
        samples_per_epoch: int = 100,
        flip_prob: float = 0.0,
        flip_axes: Sequence[int] = (0, 1, 2),
        seed: int = 0,
    ) -> None:
        if len(patch_size) != 3 or min(int(s) for s in patch_size) < 1:
            raise InputError(f"3D patch_size must be three positive ints (d, h, w), got {tuple(patch_size)}")
        if not 0.0 <= float(tumour_fraction) <= 1.0:
            raise InputError(f"tumour_fraction must be in [0, 1], got {tumour_fraction}")
        if int(samples_per_epoch) < 1:
            raise InputError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        if not 0.0 <= float(flip_prob) <= 1.0:
            raise InputError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if any(a not in (0, 1, 2) for a in flip_axes):
            raise InputError(f"flip_axes must be among 0, 1, 2 (z, y, x), got {tuple(flip_axes)}")
        self.cache = cache
        self.patch_size: tuple[int, int, int] = tuple(int(s) for s in patch_size)  # type: ignore[assignment]
        self.tumour_fraction = float(tumour_fraction)
        self.samples_per_epoch = int(samples_per_epoch)
        self.flip_prob = float(flip_prob)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.seed = int(seed)
        # Tumours are small: their voxel coordinates are kept (int32 [n, 3]); the body is large, so
        # only its slice indices are kept and a body pixel is found in the drawn slice on demand.
        self._tumour_voxels: list[np.ndarray] = []
        self._body_slices: list[np.ndarray] = []
        for c in cache.cases:
            vox = np.argwhere(c.label > 0).astype(np.int32) if c.label is not None else np.zeros((0, 3), np.int32)
            self._tumour_voxels.append(vox)
            zs = np.flatnonzero(c.body.any(axis=(1, 2)))
            self._body_slices.append(zs if zs.size else np.arange(c.image.shape[0]))
        self._tumour_cases = np.array([i for i, v in enumerate(self._tumour_voxels) if len(v)], dtype=np.int64)
        self.set_epoch(0)

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def patient_ids(self) -> set[str]:
        return self.cache.patient_ids

    @property
    def num_tumour_cases(self) -> int:
        return int(self._tumour_cases.size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (call before iterating)."""
        self.epoch = int(epoch)
        self._offset = float(np.random.default_rng([self.seed, self.epoch]).random())

    # ------------------------------------------------------------------ sampling
    def is_tumour_sample(self, index: int) -> bool:
        """Whether item ``index`` of the current epoch is centred on a tumour voxel."""
        if self._tumour_cases.size == 0:
            return False
        return ((self._offset + index * _PHI) % 1.0) < self.tumour_fraction

    def _starts(self, centre: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
        """Patch starts centred on ``centre``, clipped into the volume on axes where it fits."""
        starts = []
        for c, p, n in zip(centre, self.patch_size, shape):
            s = int(c) - p // 2
            # inside [0, n - p] when the volume is large enough, else centred padding [n - p, 0]
            lo, hi = (0, n - p) if n >= p else (n - p, 0)
            if n < p:
                s = (n - p) // 2
            starts.append(int(min(max(s, lo), hi)))
        return starts[0], starts[1], starts[2]

    def sample_start(self, index: int) -> tuple[int, tuple[int, int, int], bool, np.random.Generator]:
        """``(case index, patch start (z, y, x), tumour sample?, rng)`` of item ``index``."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        tumour = self.is_tumour_sample(index)
        if tumour:
            ci = int(self._tumour_cases[rng.integers(self._tumour_cases.size)])
            vox = self._tumour_voxels[ci]
            v = vox[rng.integers(len(vox))]
            jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in self.patch_size]
            centre = [int(v[a]) + jitter[a] for a in range(3)]
            # |jitter| <= p // 4 keeps v inside the centred window, and clipping a window that
            # contains v into [0, n - p] keeps it containing v (v itself lies in [0, n)).
            starts = self._starts(centre, self.cache.cases[ci].image.shape)
        else:
            ci = int(rng.integers(len(self.cache)))
            case = self.cache.cases[ci]
            zs = self._body_slices[ci]
            z = int(zs[rng.integers(zs.size)])
            pix = np.flatnonzero(case.body[z])
            if pix.size:
                k = int(pix[rng.integers(pix.size)])
                y, x = divmod(k, case.body.shape[2])
            else:
                y, x = int(rng.integers(case.body.shape[1])), int(rng.integers(case.body.shape[2]))
            starts = self._starts((z, y, x), case.image.shape)
        return ci, starts, tumour, rng  # type: ignore[return-value]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        ci, starts, _, rng = self.sample_start(index)
        case = self.cache.cases[ci]
        img = extract_window(case.image, starts, self.patch_size, case.prepared.pad_value)
        if case.label is not None:
            lab = extract_window(case.label, starts, self.patch_size, 0).astype(np.float32)
        else:
            lab = np.zeros(self.patch_size, dtype=np.float32)
        if self.flip_prob > 0:
            axes = tuple(a for a in self.flip_axes if rng.random() < self.flip_prob)
            if axes:
                img, lab = np.flip(img, axes), np.flip(lab, axes)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)[None]),
            "label": torch.from_numpy(np.ascontiguousarray(lab, dtype=np.float32)[None]),
            "has_label": case.label is not None,
            "case_id": case.case_id,
            "start": torch.tensor(starts, dtype=torch.int64),
        }


__all__ = ["PatchDataset3D"]
