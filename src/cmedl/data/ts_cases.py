"""The cases of the teacher-student paper's datasets, prepared once (:class:`TSCache`).

Two pipelines, chosen by the method's ``<method>.pipeline`` (:mod:`cmedl.methods.ts_common`):

- **paper** (``ts``: a :class:`~cmedl.data.ts_preprocess.TSPreprocessConfig`): the paper's Sec. 2.2.
  Every case is clipped to ``clip_hu`` and z-scored, resampled to ``spacing`` (1 x 1 x 1.5 mm), its label
  resampled by nearest neighbour and its boxes re-derived on that grid
  (:func:`~cmedl.data.ts_preprocess.ts_prepare`). The teachers (``lungs=False``) get one
  :class:`TSCase` per case, the whole resampled volume (their datasets crop ``data.patch_size_3d`` around
  each lesion: the paper's 128^3 tumour crops). The students (``lungs=True``) get one :class:`TSCase` per
  lung crop (:func:`~cmedl.data.ts_preprocess.student_crops`: the lung mask of the input CT, each lung's
  box grown by ``lung_margin_mm``), ``case_id`` ``<case>:lung<k>``; their whole-volume validation uses
  the bounding box of the case's lung crops (what the students segment at test time).
- **legacy** (``ts=None``): the repository's working grid (:func:`cmedl.data.preprocess.prepare_volume`:
  CT window to [-1, 1], optional in-plane resampling, body crop); one case per volume.

Every :class:`TSCase` carries the case's **axial box mask** on its grid: from the box file when the case
has one, else derived from its label (one box per lesion and slice, :func:`derived_box_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmedl.data.boxes import BoxSet, box_mask, boxes_from_mask, read_boxes
from cmedl.data.datasets import CachedCase, VolumeCache, check_binary_label
from cmedl.data.manifest import Case, Manifest
from cmedl.data.preprocess import PreparedVolume, PreprocessConfig, prepare_label, prepare_volume
from cmedl.data.selection import is_pseudo
from cmedl.data.ts_preprocess import TSPreprocessConfig, crop_volume, student_crops, ts_prepare, union_box
from cmedl.errors import InputError
from cmedl.io.volume import Volume, check_same_geometry, read_volume


def derived_box_mask(label: np.ndarray) -> np.ndarray:
    """``uint8`` union of the axial boxes of a mask ``[z, y, x]``: per 26-connected lesion and slice, the
    bounding box of the lesion on that slice (:func:`cmedl.data.boxes.boxes_from_mask`)."""
    arr = np.asarray(label) != 0
    if not arr.any():
        return np.zeros(arr.shape, np.uint8)
    boxes = boxes_from_mask(arr, Volume(arr.astype(np.uint8)))
    return box_mask(boxes, arr.shape).astype(np.uint8)


def lesion_regions(mask: np.ndarray) -> list[tuple[slice, slice, slice]]:
    """Bounding boxes ``(z, y, x)`` slices of the 26-connected components of a mask (raster order)."""
    labels, _ = ndimage.label(np.asarray(mask) != 0, structure=np.ones((3, 3, 3), bool))
    return [r for r in ndimage.find_objects(labels) if r is not None]


@dataclass
class TSCase:
    """One prepared case (or lung crop) with its box mask (``uint8``, its grid; zeros without boxes or label)."""

    cached: CachedCase
    box: np.ndarray
    pseudo: bool = False

    @property
    def case_id(self) -> str:
        return self.cached.case_id


def grid_case(case: Case, volume: Volume, background: float, preprocess: PreprocessConfig,
              label: np.ndarray | None) -> CachedCase:
    """A :class:`CachedCase` whose working grid is ``volume`` itself (already normalised: a resampled case or a
    crop of it): no further crop, every voxel counts as body, padding with ``background``."""
    image = np.ascontiguousarray(volume.array, dtype=np.float32)
    prepared = PreparedVolume(
        image=image, body=np.broadcast_to(np.True_, image.shape), config=preprocess, input_shape=volume.shape,
        input_spacing=volume.spacing, origin=volume.origin, direction=volume.direction, resampled_shape=volume.shape,
        resampled_spacing=volume.spacing, crop_start=(0, 0), pad_value=float(background),
        meta={"source": volume.meta.get("source", case.id)})
    return CachedCase(case.id, case.patient_id, case.modality, prepared, label)


def _read(manifest: Manifest, case: Case, preprocess: PreprocessConfig) -> tuple[Volume, Volume | None, BoxSet | None]:
    image_path, label_path, boxes_path = manifest.image_path(case), manifest.label_path(case), manifest.boxes_path(case)
    if case.modality != preprocess.modality:
        raise InputError(f"case '{case.id}' is {case.modality} but the preprocessing is for {preprocess.modality}",
                         image_path)
    image = read_volume(image_path)
    label = None if label_path is None else read_volume(label_path)
    if label is not None:
        check_same_geometry(image, label, image_path, label_path)
        check_binary_label(label, label_path)  # type: ignore[arg-type]
    boxes = read_boxes(boxes_path, image) if boxes_path is not None else None
    return image, label, boxes


def _box_mask_of(boxes: BoxSet | None, label: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The case's ``uint8`` box mask on a grid: from its box file, else derived from its label, else zeros."""
    if boxes is not None:
        return box_mask(boxes, shape).astype(np.uint8)
    return derived_box_mask(label) if label is not None else np.zeros(shape, np.uint8)


def load_ts_case(manifest: Manifest, case: Case, preprocess: PreprocessConfig,
                 ts: TSPreprocessConfig | None = None, lungs: bool = False) -> tuple[list[TSCase], CachedCase]:
    """Read and prepare one case: its training units (the whole case, or with the paper pipeline and
    ``lungs`` one per lung crop) and its whole-volume validation case (see the module docstring)."""
    image, label_vol, boxes = _read(manifest, case, preprocess)
    pseudo = is_pseudo(case)
    if ts is None:
        box = _box_mask_of(boxes, None if label_vol is None else label_vol.array, image.shape)
        prepared = prepare_volume(image, preprocess)
        label = None if label_vol is None else prepare_label(label_vol.array > 0, prepared).astype(np.uint8)
        cached = CachedCase(case.id, case.patient_id, case.modality, prepared, label)
        return [TSCase(cached, prepare_label(box, prepared).astype(np.uint8), pseudo)], cached
    prep = ts_prepare(image, ts, label=label_vol, boxes=boxes, lungs=lungs)
    label = None if prep.label is None else prep.label.array
    box = _box_mask_of(prep.boxes, label, prep.image.shape)
    if not lungs:
        cached = grid_case(case, prep.image, prep.background, preprocess, label)
        return [TSCase(cached, box, pseudo)], cached
    crops = student_crops(prep, ts)
    units = []
    for crop in crops:
        sub = crop_volume(prep.image, crop.box)
        cached = grid_case(case, sub, prep.background, preprocess,
                           None if label is None else np.ascontiguousarray(label[crop.box]))
        cached.case_id = f"{case.id}:lung{crop.lung}"
        units.append(TSCase(cached, np.ascontiguousarray(box[crop.box]), pseudo))
    whole = union_box(crops, prep.image.shape)
    val = grid_case(case, crop_volume(prep.image, whole), prep.background, preprocess,
                    None if label is None else np.ascontiguousarray(label[whole]))
    return units, val


class TSCache:
    """Prepared training units (:class:`TSCase`) and whole validation cases (numpy only: picklable)."""

    def __init__(self, cases: Sequence[TSCase], whole: Sequence[CachedCase] | None = None) -> None:
        if not cases:
            raise InputError("no cases to load (empty selection)")
        self.cases = list(cases)
        self.whole = list(whole) if whole is not None else [c.cached for c in self.cases]

    @classmethod
    def load(cls, manifest: Manifest, cases: Sequence[Case], preprocess: PreprocessConfig, workers: int = 2,
             ts: TSPreprocessConfig | None = None, lungs: bool = False) -> TSCache:
        """Read and prepare ``cases`` (threads: SimpleITK and numpy release the GIL); order is kept.
        ``ts``: the paper's pipeline (None: the legacy working grid); ``lungs``: student lung crops."""
        if not cases:
            raise InputError("no cases selected", manifest.source)

        def one(c: Case) -> tuple[list[TSCase], CachedCase]:
            return load_ts_case(manifest, c, preprocess, ts, lungs)

        if workers <= 1:
            loaded = [one(c) for c in cases]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                loaded = list(pool.map(one, cases))
        return cls([u for units, _ in loaded for u in units], [whole for _, whole in loaded])

    def unit_cache(self) -> VolumeCache:
        """The training units as a :class:`VolumeCache` (patch sampling)."""
        return VolumeCache([c.cached for c in self.cases])

    def volume_cache(self) -> VolumeCache:
        """The whole cases as a :class:`VolumeCache` (whole-volume validation)."""
        return VolumeCache(self.whole)

    def __len__(self) -> int:
        return len(self.cases)


__all__ = ["TSCache", "TSCase", "derived_box_mask", "grid_case", "lesion_regions", "load_ts_case"]
