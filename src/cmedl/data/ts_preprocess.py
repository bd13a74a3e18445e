"""The teacher-student paper's preprocessing (Fredriksen et al., Sec. 2.2) and the way back.

HU clipped to ``[-1024, 1000]``, z-scored (mean and SD of the clipped volume), resampled with SimpleITK to
``1 x 1 x 1.5`` mm (x, y, z; image linear, masks nearest neighbour; origin and direction kept, see
:func:`cmedl.data.resampling.resample_volume`); axial boxes are re-derived on the new grid (rasterised per
lesion on the input grid, resampled nearest, then per lesion and slice their bounding box). Teacher inputs
are fixed-size crops (128^3) around the tumour (its mask, else its boxes); student inputs are crops around
each lung (:mod:`cmedl.data.lung`, lung mask on the input HU, resampled nearest). :func:`restore_to_input`
maps a prediction on the resampled grid back onto the input grid exactly (same size, spacing, origin,
direction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk

from cmedl.data.boxes import BoxGeometry, BoxSet, box_label_map, boxes_from_label_map
from cmedl.data.cropping import extract_window, window_around
from cmedl.data.lung import LungCrop, lung_crop_boxes, lung_mask
from cmedl.data.resampling import resample_image, resample_volume
from cmedl.errors import ConfigError, GeometryError, InputError, did_you_mean
from cmedl.io.image import Volume

#: default margin (mm) of the per-lung student crops (chosen on the phantom: see docs / tsdata note)
DEFAULT_LUNG_MARGIN_MM = 10.0


@dataclass(frozen=True)
class TSPreprocessConfig:
    """Settings of the paper's preprocessing; every bad value is a one-line ConfigError naming the field."""

    clip_hu: tuple[float, float] = (-1024.0, 1000.0)
    zscore: bool = True
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.5)  # (x, y, z) mm
    teacher_crop: tuple[int, int, int] = (128, 128, 128)  # (z, y, x) voxels of the resampled grid
    lung_margin_mm: float = DEFAULT_LUNG_MARGIN_MM

    def __post_init__(self) -> None:
        try:
            lo, hi = (float(v) for v in self.clip_hu)
        except (TypeError, ValueError):
            raise ConfigError(f"clip_hu: expected two numbers LO, HI, got {self.clip_hu!r}") from None
        if not (np.isfinite([lo, hi]).all() and lo < hi):
            raise ConfigError(f"clip_hu: need finite LO < HI, got {self.clip_hu!r}")
        object.__setattr__(self, "clip_hu", (lo, hi))
        if not isinstance(self.zscore, bool):
            raise ConfigError(f"zscore: expected true or false, got {self.zscore!r}")
        sp = self._numbers("spacing", float)
        if not all(np.isfinite(v) and v > 0 for v in sp):
            raise ConfigError(f"spacing: expected 3 positive numbers (x, y, z) in mm, got {self.spacing!r}")
        crop = self._numbers("teacher_crop", int)
        if min(crop) < 8:
            raise ConfigError(f"teacher_crop: expected 3 integers >= 8 (z, y, x), got {self.teacher_crop!r}")
        m = self.lung_margin_mm
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not np.isfinite(m) or m < 0:
            raise ConfigError(f"lung_margin_mm: expected a non-negative number, got {m!r}")
        object.__setattr__(self, "lung_margin_mm", float(m))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists): what checkpoints store as ``preprocess["ts"]``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TSPreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys and bad values raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"teacher-student preprocessing: expected a mapping, got {data!r}")
        names = {f.name for f in fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(did_you_mean(str(key), names, "teacher-student preprocessing option"))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def _numbers(self, name: str, kind: type) -> tuple:
        value = getattr(self, name)
        try:
            ok = len(value) == 3 and all(not isinstance(v, bool) for v in value)
            out = tuple(kind(v) for v in value) if ok else ()
            if kind is int and out and any(float(v) != o for v, o in zip(value, out)):
                out = ()
        except (TypeError, ValueError):
            out = ()
        if not out:
            raise ConfigError(f"{name}: expected 3 {'integers' if kind is int else 'numbers'}, got {value!r}")
        object.__setattr__(self, name, out)
        return out


@dataclass
class TSPrepared:
    """One case on the resampled grid: image (float32, normalised), optional label and boxes, and the input
    grid (``source``) that :func:`restore_to_input` maps back to."""

    image: Volume
    source: BoxGeometry
    label: Volume | None = None
    boxes: BoxSet | None = None
    lungs: Volume | None = None
    stats: dict[str, float] = field(default_factory=dict)  # mean, sd of the clipped input

    @property
    def background(self) -> float:
        """The normalised value of the lowest clipped HU (what crops are padded with)."""
        return float(self.stats.get("background", 0.0))


def normalise(array: np.ndarray, config: TSPreprocessConfig) -> tuple[np.ndarray, dict[str, float]]:
    """Clip to ``config.clip_hu`` and z-score over the volume; float32 and the statistics used."""
    lo, hi = config.clip_hu
    x = np.clip(np.asarray(array, np.float32), lo, hi)
    mean, sd = (float(x.mean()), float(x.std())) if config.zscore else (0.0, 1.0)
    sd = sd if sd > 1e-6 else 1.0
    x -= mean
    x /= sd
    return x, {"mean": mean, "sd": sd, "background": (lo - mean) / sd}


def resample_boxes(boxes: BoxSet, source: Volume, target: Volume) -> BoxSet:
    """``boxes`` of ``source``'s grid re-derived on ``target``'s grid (per lesion: nearest-neighbour resampling
    of the rasterised boxes, then per slice the bounding box)."""
    diff = boxes.geometry.difference(source)
    if diff is not None:
        raise GeometryError(f"boxes were made for another grid than the image ({diff})")
    lab = source.with_array(box_label_map(boxes).astype(np.uint16))
    res = resample_image(lab.to_sitk(), target.shape[::-1], target.spacing, target.origin, target.direction,
                         True, 0)
    return boxes_from_label_map(sitk.GetArrayFromImage(res).astype(np.int32), target)


def check_finite(image: Volume) -> None:
    """InputError (named by the volume's source) for NaN/Inf voxels or an empty image."""
    source = image.meta.get("source", "volume")
    arr = image.array
    if image.meta.get("has_nonfinite") == "1" or (np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all()):
        raise InputError("image has NaN or infinite voxels", source)
    if arr.size == 0:
        raise InputError("image is empty", source)


def ts_prepare(image: Volume, config: TSPreprocessConfig | None = None, label: Volume | np.ndarray | None = None,
               boxes: BoxSet | None = None, lungs: bool | np.ndarray = False) -> TSPrepared:
    """The paper's preprocessing of one CT (HU) with its optional label (0/1 on the image grid), boxes and
    lung mask (``True``: computed here with :func:`cmedl.data.lung.lung_mask`; an array: given)."""
    config = config or TSPreprocessConfig()
    check_finite(image)
    arr, stats = normalise(image.array, config)
    out = resample_volume(image.with_array(arr), config.spacing)
    out.array = out.array.astype(np.float32, copy=False)
    prep = TSPrepared(out, BoxGeometry.of(image), stats=stats)
    if label is not None:
        lab = label if isinstance(label, Volume) else image.with_array(np.asarray(label))
        if not lab.same_geometry(image):
            raise GeometryError(f"label grid differs from the image ({lab.geometry_difference(image)})")
        prep.label = _to_grid(image.with_array((lab.array > 0).astype(np.uint8)), out)
    if boxes is not None:
        prep.boxes = resample_boxes(boxes, image, out)
    if lungs is not False:
        lm = lung_mask(image) if lungs is True else np.asarray(lungs, np.uint8)
        prep.lungs = _to_grid(image.with_array(lm), out)
    return prep


def mask_to_grid(mask: Volume, target: Volume) -> Volume:
    """A mask (any integer values) resampled by nearest neighbour onto ``target``'s grid (0 outside)."""
    return _to_grid(mask, target)


def _to_grid(mask: Volume, target: Volume) -> Volume:
    arr = mask.array if mask.array.dtype != np.bool_ else mask.array.astype(np.uint8)
    res = resample_image(mask.with_array(arr).to_sitk(), target.shape[::-1], target.spacing, target.origin,
                         target.direction, True, 0)
    return target.with_array(sitk.GetArrayFromImage(res).astype(np.uint8))


def restore_to_input(prediction: np.ndarray, prepared: TSPrepared | Volume, source: BoxGeometry | Volume,
                     is_label: bool = False) -> Volume:
    """A prediction ``[z, y, x]`` on the resampled grid (``prepared``'s image) mapped onto the input grid
    ``source``: same size, spacing, origin and direction. Probabilities linearly (threshold afterwards),
    labels (``is_label``) by nearest neighbour; outside the resampled grid 0."""
    grid = prepared.image if isinstance(prepared, TSPrepared) else prepared
    pred = np.asarray(prediction)
    if pred.shape != grid.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from the resampled grid {grid.shape}")
    src = source if isinstance(source, BoxGeometry) else BoxGeometry.of(source)
    if pred.dtype == np.bool_:
        pred = pred.astype(np.uint8)
    elif not is_label:
        pred = pred.astype(np.float32, copy=False)
    res = resample_image(grid.with_array(pred).to_sitk(), src.size, src.spacing, src.origin, src.direction,
                         is_label, 0)
    return src.volume(sitk.GetArrayFromImage(res))


# ---------------------------------------------------------------------- crops
@dataclass(frozen=True)
class Crop:
    """A window ``starts`` (z, y, x; may be negative or run past the end: padded) of ``size`` voxels."""

    starts: tuple[int, int, int]
    size: tuple[int, int, int]

    def extract(self, array: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
        return extract_window(np.asarray(array), self.starts, self.size, pad_value)


def crop_volume(volume: Volume, box: Sequence[slice]) -> Volume:
    """The sub-volume ``volume.array[box]`` (``(z, y, x)`` slices inside the array) with its own physical
    grid: the same spacing and direction, the origin moved to the crop's first voxel."""
    starts = np.array([int(s.start or 0) for s in box], float)
    origin = volume.index_to_physical(starts[::-1])
    return Volume(np.ascontiguousarray(volume.array[tuple(box)]), volume.spacing, tuple(float(v) for v in origin),
                  volume.direction, dict(volume.meta))


def union_box(crops: Sequence[LungCrop], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The bounding box ``(z, y, x)`` of the crops (the whole array without crops): what the students see."""
    if not crops:
        return tuple(slice(0, int(n)) for n in shape)  # type: ignore[return-value]
    return tuple(slice(min(c.box[a].start for c in crops), max(c.box[a].stop for c in crops))  # type: ignore[return-value]
                 for a in range(3))


def teacher_crop(prepared: TSPrepared, config: TSPreprocessConfig | None = None,
                 centre: Sequence[float] | None = None) -> Crop:
    """The teacher's fixed-size crop (``config.teacher_crop``) centred on ``centre`` (z, y, x), else on the
    centre of the tumour's bounding box (label, else boxes)."""
    config = config or TSPreprocessConfig()
    if centre is None:
        if prepared.label is not None and prepared.label.array.any():
            idx = np.argwhere(prepared.label.array > 0)
            lo, hi = idx.min(0), idx.max(0)
        elif prepared.boxes is not None and len(prepared.boxes):
            bb = prepared.boxes.bounding_box()
            lo, hi = np.array([s.start for s in bb]), np.array([s.stop - 1 for s in bb])
        else:
            raise GeometryError("no tumour (label or boxes) to centre the teacher crop on; give a centre")
        centre = (lo + hi) / 2.0
    starts = window_around(prepared.image.shape, config.teacher_crop, centre)
    return Crop(tuple(int(s) for s in starts), tuple(int(s) for s in config.teacher_crop))  # type: ignore[arg-type]


def student_crops(prepared: TSPrepared, config: TSPreprocessConfig | None = None) -> list[LungCrop]:
    """One crop per lung of the prepared case (lungs from ``ts_prepare(..., lungs=True)``), grown by
    ``config.lung_margin_mm``; the whole volume as one crop when no lung was found."""
    config = config or TSPreprocessConfig()
    if prepared.lungs is None:
        raise GeometryError("no lung mask: prepare the case with lungs=True")
    crops = lung_crop_boxes(prepared.lungs.array, prepared.image.spacing_zyx, config.lung_margin_mm)
    return crops or [LungCrop(1, tuple(slice(0, n) for n in prepared.image.shape))]  # type: ignore[arg-type]
