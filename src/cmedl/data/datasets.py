"""2D slice datasets for training and validating the slice networks (torch ``Dataset`` classes).

- :class:`VolumeCache` reads the cases of a manifest selection once, runs
  :func:`cmedl.data.preprocess.prepare_volume` on each (labels go through the same resampling and
  crop, nearest neighbour) and keeps the working-grid arrays in memory. It holds only numpy
  arrays and plain data, so it pickles into DataLoader workers.
- :class:`SliceDataset` draws 2D slices ``[1, H, W]``: a configurable share of tumour slices
  (patch placed so the tumour lies inside it, at a random position) and tumour-free slices
  (patch centred on a random body pixel); ``patch_size=None`` gives whole slices padded to a
  common size (validation). Items::

      {"image": float32 [1, H, W], "label": float32 [1, H, W] in {0, 1}, "has_label": bool,
       "case_id": str, "slice_index": int}

  plus ``"paired"`` (float32 [1, H, W], the same window of the case's paired MRI) when the cache was
  loaded with a ``paired`` preprocessing (the paired-oracle control arm, :mod:`cmedl.data.paired`).

- :class:`UnpairedDataset` pairs each CT (or CBCT) sample with an MRI sample drawn independently
  from a disjoint set of patients (the CMEDL setting).

Determinism: item ``i`` depends only on ``(seed, epoch, i)`` (``numpy.random.default_rng([seed,
epoch, i])``), never on the worker that computes it, so ``num_workers=0`` and ``num_workers=2``
give identical batches. Call ``set_epoch(epoch)`` before creating each epoch's DataLoader
iterator (with ``persistent_workers=True`` the workers would keep the old epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cmedl.data.augment import AugmentConfig, Augmenter
from cmedl.data.manifest import Case, Manifest
from cmedl.data.paired import prepare_paired
from cmedl.data.selection import check_disjoint_patients
from cmedl.data.preprocess import (
    PreparedVolume,
    PreprocessConfig,
    extract_window,
    prepare_label,
    prepare_volume,
)
from cmedl.errors import InputError
from cmedl.io.volume import Volume, check_same_geometry, read_volume

#: Golden-ratio fraction: ``frac(offset + i * PHI)`` is a low-discrepancy sequence, so marking
#: index ``i`` as a tumour sample when it is below ``tumour_fraction`` gives the requested share
#: to within a couple of samples per epoch, computed from ``i`` alone (no shared permutation that
#: every worker would have to rebuild).
_PHI = (math.sqrt(5.0) - 1.0) / 2.0


# ====================================================================== cache
@dataclass
class CachedCase:
    """One preprocessed case: the working-grid image/body (in ``prepared``) and its label."""

    case_id: str
    patient_id: str
    modality: str
    prepared: PreparedVolume
    label: np.ndarray | None  # uint8 {0, 1} [z, rows, cols] on the working grid, None if unlabelled
    #: the case's paired MRI on the working grid (float32), only for the paired-oracle control arm
    paired: np.ndarray | None = None

    @property
    def image(self) -> np.ndarray:
        return self.prepared.image

    @property
    def body(self) -> np.ndarray:
        return self.prepared.body


def load_case(manifest: Manifest, case: Case, preprocess: PreprocessConfig,
              paired: PreprocessConfig | None = None) -> CachedCase:
    """Read and prepare one manifest case (image and, if any, label: 0/1 only, on the image grid);
    with ``paired`` (an MRI preprocessing) also its ``paired_mr`` image (an InputError if it has none)."""
    image_path, label_path = manifest.image_path(case), manifest.label_path(case)
    if case.modality != preprocess.modality:
        raise InputError(
            f"case '{case.id}' is {case.modality} but the preprocessing is for {preprocess.modality}", image_path
        )
    image = read_volume(image_path)
    label_vol = None if label_path is None else read_volume(label_path)
    if label_vol is not None:
        check_same_geometry(image, label_vol, image_path, label_path)
        check_binary_label(label_vol, label_path)  # type: ignore[arg-type]
    prepared = prepare_volume(image, preprocess)
    label = None if label_vol is None else prepare_label(label_vol.array > 0, prepared).astype(np.uint8)
    paired_arr = None
    if paired is not None:
        paired_path = manifest.paired_mr_path(case)
        if paired_path is None:
            raise InputError(f"case '{case.id}' has no paired_mr image; the paired-oracle arm needs a cohort made "
                             "with `cmedl data phantom --paired-oracle`", manifest.source)
        paired_arr = prepare_paired(read_volume(paired_path), prepared, paired, paired_path)
    return CachedCase(case.id, case.patient_id, case.modality, prepared, label, paired_arr)


def check_binary_label(label: Volume, path: Path) -> None:
    """A training label holds 0 and 1 only (the rule of ``cmedl evaluate``'s masks): a CT image, a
    multi-label map or a mask with NaN voxels given as a label is an InputError naming ``path``."""
    if label.meta.get("has_nonfinite") == "1":
        raise InputError("label contains NaN or infinite voxels; a label must hold 0 and 1 only", path)
    arr = label.array
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(arr[bad]).astype(np.float64)[:6])
        raise InputError(f"label is not binary (values {shown} besides 0 and 1); a label must hold 0 and 1 only", path)


class VolumeCache:
    """Preprocessed cases kept in memory (numpy only: picklable, shareable with workers)."""

    def __init__(self, cases: Sequence[CachedCase]) -> None:
        if not cases:
            raise InputError("no cases to load (empty selection)")
        self.cases: list[CachedCase] = list(cases)

    @classmethod
    def load(
        cls,
        manifest: Manifest,
        cases: Sequence[Case],
        preprocess: PreprocessConfig,
        workers: int = 1,
        progress: bool = False,
        paired: PreprocessConfig | None = None,
    ) -> VolumeCache:
        """Read and prepare ``cases`` of ``manifest`` (``workers`` threads; SimpleITK I/O, resampling
        and numpy release the GIL), with an optional tqdm progress bar. Order is kept. ``paired``:
        also load each case's paired MRI with this preprocessing (see :func:`load_case`)."""
        if not cases:
            raise InputError("no cases selected", manifest.source)
        bar = tqdm(total=len(cases), desc=f"loading {preprocess.modality}", unit="case", disable=not progress)
        try:
            if workers <= 1:
                loaded = []
                for c in cases:
                    loaded.append(load_case(manifest, c, preprocess, paired))
                    bar.update()
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = [pool.submit(load_case, manifest, c, preprocess, paired) for c in cases]
                    loaded = []
                    for f in futures:
                        loaded.append(f.result())
                        bar.update()
        finally:
            bar.close()
        return cls(loaded)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> CachedCase:
        return self.cases[i]

    @property
    def patient_ids(self) -> set[str]:
        return {c.patient_id for c in self.cases}

    @property
    def config(self) -> PreprocessConfig:
        return self.cases[0].prepared.config

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        return sum(
            c.image.nbytes + c.body.nbytes + (0 if c.label is None else c.label.nbytes)
            + (0 if c.paired is None else c.paired.nbytes)
            for c in self.cases
        )


# ====================================================================== slices
def _start_range(n: int, patch: int) -> tuple[int, int]:
    """Window starts that keep a ``patch`` inside ``n`` pixels (or cover all of them if larger)."""
    return (0, n - patch) if n >= patch else (n - patch, 0)


class SliceDataset(Dataset):
    """2D slices (or fixed-size patches) of the cached volumes, with tumour/background balancing.

    Args:
        cache: the preprocessed cases.
        patch_size: ``(H, W)`` pixels of the working grid, or None for whole slices padded to the
            largest slice of the cache (validation).
        tumour_fraction: share of samples drawn from tumour-containing slices (the rest from
            tumour-free slices, unlabelled cases counting as tumour-free); None: slices in their
            natural proportion (index ``i`` is slice ``i`` when ``samples_per_epoch`` is None).
        samples_per_epoch: dataset length; None: the number of slices that contain body.
        augment: False, True (default :class:`AugmentConfig`), an AugmentConfig or an Augmenter.
        seed: base seed; item ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
    """

    def __init__(
        self,
        cache: VolumeCache,
        patch_size: tuple[int, int] | None = None,
        tumour_fraction: float | None = 0.5,
        samples_per_epoch: int | None = None,
        augment: bool | AugmentConfig | Augmenter = False,
        seed: int = 0,
    ) -> None:
        if tumour_fraction is not None and not 0.0 <= tumour_fraction <= 1.0:
            raise InputError(f"tumour_fraction must be in [0, 1], got {tumour_fraction}")
        if patch_size is not None:
            if len(patch_size) != 2 or min(patch_size) < 1:
                raise InputError(f"patch_size must be two positive ints, got {patch_size}")
            patch_size = (int(patch_size[0]), int(patch_size[1]))
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise InputError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        self.cache = cache
        self.patch_size = patch_size
        self.tumour_fraction = tumour_fraction
        self.seed = int(seed)
        if augment is True:
            augment = Augmenter()
        elif isinstance(augment, AugmentConfig):
            augment = Augmenter(augment)
        self.augmenter: Augmenter | None = augment if isinstance(augment, Augmenter) else None

        case_idx, z_idx, tumour = [], [], []
        for ci, c in enumerate(cache.cases):
            has_body = c.body.any(axis=(1, 2))
            has_tumour = (
                c.label.any(axis=(1, 2))
                if c.label is not None
                else np.zeros(c.image.shape[0], dtype=bool)
            )
            keep = has_body | has_tumour
            if not keep.any():  # no body found: use every slice
                keep[:] = True
            zs = np.flatnonzero(keep)
            case_idx.append(np.full(zs.size, ci, dtype=np.int64))
            z_idx.append(zs)
            tumour.append(has_tumour[zs])
        self._case = np.concatenate(case_idx)
        self._z = np.concatenate(z_idx)
        self._is_tumour = np.concatenate(tumour)
        self._tumour_slices = np.flatnonzero(self._is_tumour)
        self._other_slices = np.flatnonzero(~self._is_tumour)
        self.samples_per_epoch = samples_per_epoch
        self.full_size = (
            max(c.image.shape[1] for c in cache.cases),
            max(c.image.shape[2] for c in cache.cases),
        )
        self.set_epoch(0)

    # ------------------------------------------------------------------ sizes
    @property
    def num_slices(self) -> int:
        return int(self._z.size)

    @property
    def num_tumour_slices(self) -> int:
        return int(self._tumour_slices.size)

    @property
    def patient_ids(self) -> set[str]:
        return self.cache.patient_ids

    def __len__(self) -> int:
        return self.samples_per_epoch if self.samples_per_epoch is not None else self.num_slices

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (call before iterating)."""
        self.epoch = int(epoch)
        self._offset = float(np.random.default_rng([self.seed, self.epoch]).random())

    # ------------------------------------------------------------------ sampling
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def is_tumour_sample(self, index: int) -> bool:
        """Whether item ``index`` of the current epoch is drawn from the tumour slices."""
        if self.tumour_fraction is None or self._tumour_slices.size == 0:
            return False
        if self._other_slices.size == 0:
            return True
        return ((self._offset + index * _PHI) % 1.0) < self.tumour_fraction

    def _pick_slice(self, index: int, rng: np.random.Generator) -> int:
        if self.tumour_fraction is None:
            if self.samples_per_epoch is None:
                return index
            return int(rng.integers(self.num_slices))
        pool = self._tumour_slices if self.is_tumour_sample(index) else self._other_slices
        if pool.size == 0:
            pool = np.arange(self.num_slices)
        return int(pool[rng.integers(pool.size)])

    def _patch_start(
        self, label: np.ndarray | None, body: np.ndarray, tumour: bool, rng: np.random.Generator
    ) -> tuple[int, int]:
        assert self.patch_size is not None
        starts = []
        if tumour and label is not None and label.any():
            pts = np.nonzero(label)
            pick = int(rng.integers(pts[0].size))
            for ax in range(2):
                n, p = label.shape[ax], self.patch_size[ax]
                t0, t1 = int(pts[ax].min()), int(pts[ax].max()) + 1
                lo, hi = t1 - p, t0  # starts that keep the whole tumour extent inside
                if lo > hi:  # tumour larger than the patch: centre on a random tumour pixel
                    starts.append(int(pts[ax][pick]) - p // 2)
                    continue
                a, b = _start_range(n, p)
                lo2, hi2 = max(lo, a), min(hi, b)
                if lo2 <= hi2:
                    lo, hi = lo2, hi2
                starts.append(int(rng.integers(lo, hi + 1)))
        else:
            pts = np.nonzero(body)
            if pts[0].size:
                k = int(rng.integers(pts[0].size))
                centre = (int(pts[0][k]), int(pts[1][k]))
            else:
                centre = (int(rng.integers(body.shape[0])), int(rng.integers(body.shape[1])))
            for ax in range(2):
                a, b = _start_range(body.shape[ax], self.patch_size[ax])
                starts.append(int(np.clip(centre[ax] - self.patch_size[ax] // 2, a, b)))
        return starts[0], starts[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = self._rng(index)
        s = self._pick_slice(index, rng)
        case = self.cache.cases[int(self._case[s])]
        z = int(self._z[s])
        image = case.image[z]
        label = case.label[z] if case.label is not None else None
        pad = case.prepared.pad_value
        if self.patch_size is None:
            size = self.full_size
            start = ((image.shape[0] - size[0]) // 2, (image.shape[1] - size[1]) // 2)
        else:
            size = self.patch_size
            start = self._patch_start(label, case.body[z], bool(self._is_tumour[s]), rng)
        img = extract_window(image, start, size, pad)[None]
        channels = 1
        if case.paired is not None:  # same window of the paired MRI, augmented as a second channel
            paired = case.paired[z]
            img = np.concatenate([img, extract_window(paired, start, size, float(paired.min()))[None]])
            channels = 2
        if label is not None:
            lab = extract_window(label, start, size, 0)[None].astype(np.float32)
        else:
            lab = np.zeros_like(img[:1])
        if self.augmenter is not None:
            img_t, lab_t = self.augmenter(img, lab, seed=int(rng.integers(2**31)))
        else:
            img_t, lab_t = (
                torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                torch.from_numpy(lab),
            )
        item = {
            "image": img_t[:1],
            "label": lab_t,
            "has_label": case.label is not None,
            "case_id": case.case_id,
            "slice_index": z,
        }
        if channels == 2:
            item["paired"] = img_t[1:]
        return item


# ====================================================================== unpaired
class UnpairedDataset(Dataset):
    """CT (or CBCT) samples paired with MRI samples of OTHER patients, drawn independently.

    Length and CT order follow ``ct``; the MRI item for index ``i`` is an index of ``mr`` drawn
    from ``default_rng([seed, epoch, i, 1])``. Items::

        {"ct", "ct_label", "ct_has_label", "ct_case_id",
         "mr", "mr_label", "mr_has_label", "mr_case_id"}

    Raises:
        InputError: if the two datasets share a patient id.
    """

    def __init__(self, ct: SliceDataset, mr: SliceDataset, seed: int = 0) -> None:
        check_disjoint_patients(ct.patient_ids, mr.patient_ids, ct.cache.config.modality)
        self.ct, self.mr, self.seed, self.epoch = ct, mr, int(seed), 0

    def __len__(self) -> int:
        return len(self.ct)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.ct.set_epoch(epoch)
        self.mr.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        a = self.ct[index]
        j = int(
            np.random.default_rng([self.seed, self.epoch, int(index), 1]).integers(len(self.mr))
        )
        b = self.mr[j]
        out = {
            "ct": a["image"],
            "ct_label": a["label"],
            "ct_has_label": a["has_label"],
            "ct_case_id": a["case_id"],
            "mr": b["image"],
            "mr_label": b["label"],
            "mr_has_label": b["has_label"],
            "mr_case_id": b["case_id"],
        }
        if "paired" in a:
            out["ct_paired_mr"] = a["paired"]
        return out
