"""Preprocessing of CT, CBCT and MRI volumes for 2D slice networks, and its exact inverse.

All arrays are numpy ``[z, y, x]`` (as in :class:`cmedl.io.Volume`); spacings passed as
``spacing_xyz`` are millimetres in ITK order ``(x, y, z)``.

Building blocks (plain functions, numpy in / numpy out):

- intensity: :func:`ct_window` (HU window -> [-1, 1]), :func:`mr_normalise` (robust percentiles
  inside the body -> [-1, 1]), :func:`standardise` (global mean/SD, the CBCT paper's choice,
  squashed to [-1, 1] by clipping at +-``clip_sd`` SD);
- :func:`body_mask`: threshold, per-slice hole filling, largest 3D connected component (the papers'
  "thresholding, hole filling and connected components" crop around the body);
- :func:`bounding_box`, :func:`crop_or_pad`, :func:`window_around`, :func:`extract_window`,
  :func:`paste_window`: fixed-size crops that may run past the array edges (padded);
- :func:`resample_volume` / :func:`resample_in_plane` (SimpleITK; linear for images, nearest
  neighbour for labels; origin and direction kept).

The pipeline used for training and inference is :func:`prepare_volume` driven by a
:class:`PreprocessConfig` (stored in checkpoints via ``to_dict``). Its result, a
:class:`PreparedVolume`, holds the normalised image on the *working grid* (optionally resampled
in-plane, then cropped/padded in-plane around the body; slices are never dropped or resampled, so
slice ``k`` of the working grid is slice ``k`` of the input) plus everything
:func:`restore_to_input` needs to put a working-grid mask or probability map back onto exactly
the input grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from cmedl.errors import ConfigError, GeometryError, InputError, did_you_mean
from cmedl.io.volume import Volume

MODALITIES = ("ct", "cbct", "mr")
INTENSITY_METHODS = ("window", "percentile", "standardise")
#: Intensity method used when :attr:`PreprocessConfig.intensity` is not given.
DEFAULT_INTENSITY = {"ct": "window", "cbct": "standardise", "mr": "percentile"}
#: Default CT window in HU: from air/lung (-1000) to dense soft tissue and bone (500), so the lung
#: parenchyma, the tumour and the chest wall all keep contrast after scaling to [-1, 1].
DEFAULT_CT_WINDOW = (-1000.0, 500.0)
#: Body threshold in HU for CT/CBCT: halfway between air (-1000) and soft tissue (0); lung is
#: below it but lies inside the body and is filled by the hole filling.
BODY_THRESHOLD_HU = -500.0
#: Per-slice completion of the body mask: hole filling, or hole filling + convex hull.
BODY_FILLS = ("holes", "hull")
#: Body fill used when :attr:`PreprocessConfig.body_fill` is not given (CBCT: truncated FOV).
DEFAULT_BODY_FILL = {"ct": "holes", "cbct": "hull", "mr": "holes"}


# ====================================================================== intensity
def ct_window(array: np.ndarray, window: tuple[float, float] = DEFAULT_CT_WINDOW) -> np.ndarray:
    """Clip HU to ``window = (low, high)`` and scale linearly to float32 ``[-1, 1]``.

    ``low`` maps to -1, ``high`` to +1. The default (-1000, 500) HU spans air/lung to soft tissue
    and cancellous bone (good for lung tumours next to the mediastinum and chest wall); pass e.g.
    (-160, 240) for a mediastinal window.
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise InputError(f"CT window must have low < high, got {window}")
    out = (np.asarray(array, dtype=np.float32) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0
    return np.clip(out, -1.0, 1.0, out=out).astype(np.float32, copy=False)


def _stats_values(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Voxels used for statistics: those inside ``mask`` (all voxels if mask is None or empty)."""
    if mask is None:
        return array.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != array.shape:
        raise GeometryError(f"mask shape {mask.shape} differs from array shape {array.shape}")
    return array[mask] if mask.any() else array.ravel()


def mr_normalise(
    array: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> np.ndarray:
    """Robust MRI normalisation: percentiles ``(p_low, p_high)`` inside ``mask`` map to -1 / +1.

    MR intensities have no physical unit, so the scale comes from the image itself: the
    ``p_low`` and ``p_high`` percentiles of the voxels inside the body ``mask`` (whole image if
    None) become -1 and +1 and everything is clipped to [-1, 1] (bright outliers such as fat or
    vessels saturate instead of compressing the tissue contrast). A constant image gives all -1.
    """
    p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    arr = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(_stats_values(arr, mask), [p_lo, p_hi])
    if not hi > lo:
        return np.full(arr.shape, -1.0, dtype=np.float32)
    out = (arr - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0
    return np.clip(out, -1.0, 1.0, out=out).astype(np.float32, copy=False)


def standardise(
    array: np.ndarray, mask: np.ndarray | None = None, clip_sd: float | None = 3.0
) -> np.ndarray:
    """Global mean/SD standardisation (the CBCT paper's normalisation), squashed to [-1, 1].

    ``z = (x - mean) / sd`` with mean and SD over the voxels inside ``mask`` (whole image if None).
    With ``clip_sd`` (default 3) the result is clipped to +-``clip_sd`` and divided by it, so
    +-3 SD maps to +-1 for the tanh generators; ``clip_sd=None`` returns the plain z-scores.
    A constant image gives all zeros.
    """
    arr = np.asarray(array, dtype=np.float32)
    vals = _stats_values(arr, mask).astype(np.float64)
    mean, sd = float(vals.mean()), float(vals.std())
    if not sd > 0:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (arr - np.float32(mean)) / np.float32(sd)
    if clip_sd is not None:
        if not clip_sd > 0:
            raise InputError(f"clip_sd must be positive, got {clip_sd}")
        np.clip(out, -clip_sd, clip_sd, out=out)
        out /= np.float32(clip_sd)
    return out.astype(np.float32, copy=False)


# ====================================================================== body mask
def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def body_mask(
    array: np.ndarray, modality: str, threshold: float | None = None, fill: str = "holes"
) -> np.ndarray:
    """Boolean body mask ``[z, y, x]``: threshold, per-slice 2D hole filling, largest 3D component.

    Threshold: ``threshold`` if given, else -500 HU for ``ct``/``cbct`` and Otsu's threshold
    (scikit-image) for ``mr``. Holes are filled slice by slice (the lungs are open at the top and
    bottom of a volume, so 3D filling would leave them out); the largest 3D connected component
    then drops the couch, noise and other blobs outside the body. ``fill="hull"`` additionally
    replaces each slice by its convex hull (scikit-image; ~4 ms per 128x128 slice, ~35 ms per
    512x512): for CBCT, whose truncated field of view cuts through the body so that a lung open
    to the edge is no hole. Returns all-False if nothing is above the threshold.
    """
    if modality not in MODALITIES:
        raise InputError(did_you_mean(modality, MODALITIES, "modality"))
    if fill not in BODY_FILLS:
        raise InputError(did_you_mean(fill, BODY_FILLS, "body fill"))
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InputError(f"body_mask needs a 3D [z, y, x] array, got shape {arr.shape}")
    if threshold is None:
        if modality == "mr":
            from skimage.filters import threshold_otsu

            finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
            ok = finite.size and finite.min() < finite.max()
            threshold = float(threshold_otsu(finite)) if ok else math.inf
        else:
            threshold = BODY_THRESHOLD_HU
    mask = arr > threshold
    if not mask.any():
        return mask
    for k in range(mask.shape[0]):  # 2D filling per slice: the 3D one would not close the lungs
        if mask[k].any():
            mask[k] = ndimage.binary_fill_holes(mask[k])
    mask = _largest_component(mask)
    if fill == "hull":
        from skimage.morphology import convex_hull_image

        for k in range(mask.shape[0]):
            if mask[k].any():
                mask[k] = convex_hull_image(mask[k])
    return mask


# ====================================================================== crops and pads
def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Tight box around the True voxels of ``mask`` grown by ``margin`` voxels (per axis or one
    for all), clipped to the array. Raises InputError for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    margins = [int(margin)] * mask.ndim if np.isscalar(margin) else [int(m) for m in margin]  # type: ignore[arg-type]
    if len(margins) != mask.ndim:
        raise InputError(f"margin needs {mask.ndim} values, got {margin}")
    if not mask.any():
        raise InputError("cannot take the bounding box of an empty mask")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(
            slice(
                max(int(idx[0]) - margins[axis], 0),
                min(int(idx[-1]) + 1 + margins[axis], mask.shape[axis]),
            )
        )
    return tuple(box)


def window_around(
    shape: Sequence[int], size: Sequence[int | None], center: Sequence[float] | None = None
) -> tuple[int, ...]:
    """Start indices of a window of ``size`` centred on ``center`` in an array of ``shape``.

    ``size`` and ``center`` cover the LAST ``len(size)`` axes (``None`` in ``size`` keeps an axis
    whole); ``center`` defaults to the array centre and is a continuous index (the window's
    centre ``start + (size - 1) / 2`` lands on it, rounded down). Starts may be negative or run
    past the end: :func:`extract_window` pads there.
    """
    shape = tuple(int(s) for s in shape)
    lead = len(shape) - len(size)
    if lead < 0:
        raise InputError(f"size {tuple(size)} has more axes than shape {shape}")
    sizes = [shape[lead + i] if s is None else int(s) for i, s in enumerate(size)]
    if center is None:
        center = [(shape[lead + i] - 1) / 2.0 for i in range(len(size))]
    if len(center) != len(size):
        raise InputError(f"center {tuple(center)} needs {len(size)} values")
    starts = [0] * lead
    for i, (n, c) in enumerate(zip(sizes, center)):
        # floor(c - (n-1)/2): an even window on an integer centre has one more voxel before it
        starts.append(0 if size[i] is None else math.floor(float(c) - (n - 1) / 2.0 + 1e-6))
    return tuple(starts)


def _full_sizes(shape: Sequence[int], size: Sequence[int | None]) -> tuple[int, ...]:
    lead = len(shape) - len(size)
    return tuple(shape[:lead]) + tuple(
        shape[lead + i] if s is None else int(s) for i, s in enumerate(size)
    )


def extract_window(
    array: np.ndarray, starts: Sequence[int], size: Sequence[int], pad_value: float = 0.0
) -> np.ndarray:
    """Copy of ``array[starts : starts + size]`` on every axis, padded with ``pad_value`` where
    the window lies outside the array (``starts`` may be negative). ``len(starts) == array.ndim``."""
    if len(starts) != array.ndim or len(size) != array.ndim:
        raise InputError(
            f"window needs {array.ndim} starts and sizes, got {tuple(starts)}, {tuple(size)}"
        )
    out = np.full(tuple(int(s) for s in size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s0, n, dim in zip(starts, size, array.shape):
        lo, hi = max(int(s0), 0), min(int(s0) + int(n), dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s0), hi - int(s0)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def paste_window(
    window: np.ndarray, starts: Sequence[int], shape: Sequence[int], fill_value: float = 0.0
) -> np.ndarray:
    """Inverse of :func:`extract_window`: an array of ``shape`` filled with ``fill_value`` holding
    ``window`` at ``starts`` (the parts of the window outside ``shape`` are dropped)."""
    out = np.full(tuple(int(s) for s in shape), fill_value, dtype=window.dtype)
    src, dst = [], []
    for s0, n, dim in zip(starts, window.shape, shape):
        lo, hi = max(int(s0), 0), min(int(s0) + int(n), int(dim))
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo - int(s0), hi - int(s0)))
    out[tuple(dst)] = window[tuple(src)]
    return out


def crop_or_pad(
    array: np.ndarray,
    size_or_box: Sequence[int | None] | tuple[slice, ...],
    center: Sequence[float] | None = None,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Crop and/or pad the last axes of ``array`` to a fixed size.

    ``size_or_box`` is either sizes for the last ``len(size)`` axes (``None`` keeps an axis), the
    window centred on ``center`` (continuous indices of those axes; default the array centre), or
    a box of slices from :func:`bounding_box` (crop exactly to it; ``center`` must be None).
    Parts of the window outside the array are filled with ``pad_value``. For the papers' 256x256
    patches around the body: ``crop_or_pad(slice_, (256, 256), center=box_centre(box))``.
    """
    arr = np.asarray(array)
    if len(size_or_box) and all(isinstance(s, slice) for s in size_or_box):
        box = tuple(size_or_box)  # type: ignore[arg-type]
        if center is not None:
            raise InputError("pass either a box or a center, not both")
        lead = arr.ndim - len(box)
        starts = (0,) * lead + tuple(int(s.start or 0) for s in box)
        sizes = tuple(arr.shape[:lead]) + tuple(
            int((arr.shape[lead + i] if s.stop is None else s.stop) - (s.start or 0))
            for i, s in enumerate(box)
        )
        return extract_window(arr, starts, sizes, pad_value)
    size = list(size_or_box)  # type: ignore[arg-type]
    starts = window_around(arr.shape, size, center)
    return extract_window(arr, starts, _full_sizes(arr.shape, size), pad_value)


def box_centre(box: Sequence[slice]) -> tuple[float, ...]:
    """Continuous centre index of each slice of a box (``(start + stop - 1) / 2``)."""
    return tuple((s.start + s.stop - 1) / 2.0 for s in box)


# ====================================================================== resampling
def _resample(
    image: sitk.Image,
    size_xyz: Sequence[int],
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float],
    is_label: bool,
    default: float,
) -> sitk.Image:
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(
        image,
        [int(s) for s in size_xyz],
        sitk.Transform(),
        interp,
        [float(o) for o in origin_xyz],
        [float(s) for s in spacing_xyz],
        [float(d) for d in direction],
        float(default),
        image.GetPixelID(),
    )


def resample_volume(
    volume: Volume, spacing_xyz: Sequence[float | None], is_label: bool = False
) -> Volume:
    """Resample ``volume`` to ``spacing_xyz`` mm (``None`` keeps that axis's spacing and size).

    The origin (centre of voxel 0) and direction are kept; the new size ``round(n * s / s')`` per
    axis covers the same physical extent ``n * s``. Images are interpolated linearly and returned
    as float32 (voxels beyond the last input voxel centre get the nearest edge value; further out
    the volume minimum); labels use nearest neighbour and keep their dtype and values.
    """
    if len(spacing_xyz) != 3:
        raise InputError(f"spacing needs 3 values (x, y, z) in mm, got {tuple(spacing_xyz)}")
    new_spacing = [float(o) if s is None else float(s) for s, o in zip(spacing_xyz, volume.spacing)]
    if min(new_spacing) <= 0:
        raise InputError(f"spacing must be positive, got {tuple(spacing_xyz)}")
    size_xyz = volume.shape[::-1]
    new_size = [
        n if s is None else max(1, round(n * o / float(s)))
        for n, o, s in zip(size_xyz, volume.spacing, spacing_xyz)
    ]
    if list(new_size) == list(size_xyz) and np.allclose(new_spacing, volume.spacing):
        arr = volume.array if is_label else volume.array.astype(np.float32, copy=False)
        return Volume(
            arr.copy(), volume.spacing, volume.origin, volume.direction, dict(volume.meta)
        )
    src = volume if is_label else volume.with_array(volume.array.astype(np.float32, copy=False))
    image = src.to_sitk()
    default = 0.0 if is_label else float(np.min(src.array)) if src.array.size else 0.0
    out = _resample(
        image, new_size, new_spacing, volume.origin, volume.direction, is_label, default
    )
    arr = sitk.GetArrayFromImage(out)
    if is_label and volume.array.dtype == np.bool_:
        arr = arr.astype(bool)
    return Volume(arr, tuple(new_spacing), volume.origin, volume.direction, dict(volume.meta))  # type: ignore[arg-type]


def resample_in_plane(volume: Volume, spacing_mm: float, is_label: bool = False) -> Volume:
    """Resample rows and columns to ``spacing_mm`` (isotropic in-plane); slices are kept as they are."""
    return resample_volume(volume, (spacing_mm, spacing_mm, None), is_label=is_label)


# ====================================================================== pipeline
@dataclass
class PreprocessConfig:
    """How a volume becomes network input; stored in checkpoints as plain data (``to_dict``).

    Attributes:
        modality: ``ct``, ``cbct`` or ``mr`` (decides the body threshold and the default method).
        intensity: ``window`` (CT HU window), ``percentile`` (MRI robust percentiles) or
            ``standardise`` (global mean/SD, clipped at +-``clip_sd`` SD); None picks the
            modality default (ct: window, cbct: standardise, mr: percentile).
        window: HU window ``(low, high)`` for ``window``.
        percentiles: ``(low, high)`` percentiles inside the body for ``percentile``.
        clip_sd: SDs mapped to +-1 by ``standardise``.
        in_plane_spacing_mm: resample rows/columns to this spacing (None: keep the input's).
        crop_to_body: crop in-plane to the body's bounding box (all slices together) plus
            ``body_margin`` pixels; otherwise keep the whole slice.
        body_margin: margin in working-grid pixels around the body box.
        in_plane_size: fixed working size ``(rows, cols)`` centred on the body box (or on the
            slice centre without ``crop_to_body``), e.g. (256, 256) as in the papers; None: the
            body box (or whole slice) padded up to a multiple of ``pad_multiple``.
        pad_multiple: working rows/cols are padded to a multiple of this (16 = four 2x poolings).
        mask_outside_body: set voxels outside the body mask to the background value (removes
            the couch and noise).
        body_fill: ``holes`` or ``hull`` (see :func:`body_mask`); None: ``hull`` for CBCT (its
            truncated field of view opens the lungs to the outside), ``holes`` otherwise.
    """

    modality: str = "ct"
    intensity: str | None = None
    window: tuple[float, float] = DEFAULT_CT_WINDOW
    percentiles: tuple[float, float] = (1.0, 99.5)
    clip_sd: float = 3.0
    in_plane_spacing_mm: float | None = None
    crop_to_body: bool = True
    body_margin: int = 8
    in_plane_size: tuple[int, int] | None = None
    pad_multiple: int = 16
    mask_outside_body: bool = False
    body_fill: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(did_you_mean(str(self.modality), MODALITIES, "modality"))
        if self.intensity is None:
            self.intensity = DEFAULT_INTENSITY[self.modality]
        if self.body_fill is None:
            self.body_fill = DEFAULT_BODY_FILL[self.modality]
        if self.body_fill not in BODY_FILLS:
            raise ConfigError(did_you_mean(str(self.body_fill), BODY_FILLS, "body fill"))
        if self.intensity not in INTENSITY_METHODS:
            raise ConfigError(
                did_you_mean(str(self.intensity), INTENSITY_METHODS, "intensity method")
            )
        self.window = (float(self.window[0]), float(self.window[1]))
        self.percentiles = (float(self.percentiles[0]), float(self.percentiles[1]))
        if not self.window[1] > self.window[0]:
            raise ConfigError(f"window must have low < high, got {self.window}")
        if not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise ConfigError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
            )
        if not self.clip_sd > 0:
            raise ConfigError(f"clip_sd must be positive, got {self.clip_sd}")
        if self.in_plane_spacing_mm is not None and not float(self.in_plane_spacing_mm) > 0:
            raise ConfigError(
                f"in_plane_spacing_mm must be positive, got {self.in_plane_spacing_mm}"
            )
        if self.in_plane_size is not None:
            if len(self.in_plane_size) != 2 or min(int(s) for s in self.in_plane_size) < 1:
                raise ConfigError(
                    f"in_plane_size must be two positive ints, got {self.in_plane_size}"
                )
            self.in_plane_size = (int(self.in_plane_size[0]), int(self.in_plane_size[1]))
        if int(self.pad_multiple) < 1 or int(self.body_margin) < 0:
            raise ConfigError("pad_multiple must be >= 1 and body_margin >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML/torch-safe data (tuples become lists)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ConfigError."""
        names = {f.name for f in fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(did_you_mean(str(key), names, "preprocessing option"))
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)


@dataclass
class PreparedVolume:
    """A volume on the working grid plus what is needed to map results back to the input grid.

    ``image`` is float32 ``[z, rows, cols]`` normalised to about [-1, 1]; ``body`` is the bool body
    mask on the same grid. Slice ``k`` of the working grid is slice ``k`` of the input. The
    working grid is the input grid resampled in-plane to ``resampled_spacing`` (shape
    ``resampled_shape``) and then windowed at in-plane ``crop_start`` (row, col; may be
    negative = padding) with size ``image.shape[1:]``.
    """

    image: np.ndarray
    body: np.ndarray
    config: PreprocessConfig
    input_shape: tuple[int, int, int]
    input_spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    resampled_shape: tuple[int, int, int]
    resampled_spacing: tuple[float, float, float]
    crop_start: tuple[int, int]
    pad_value: float = -1.0
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def resampled(self) -> bool:
        return tuple(self.resampled_shape) != tuple(self.input_shape) or not np.allclose(
            self.resampled_spacing, self.input_spacing
        )

    def working_volume(self, array: np.ndarray | None = None) -> Volume:
        """``array`` (default the image) as a Volume with the working grid's physical geometry."""
        arr = self.image if array is None else np.asarray(array)
        if arr.shape != self.image.shape:
            raise GeometryError(
                f"array shape {arr.shape} differs from working shape {self.image.shape}"
            )
        offset = np.array([self.crop_start[1], self.crop_start[0], 0.0]) * np.asarray(
            self.resampled_spacing
        )
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        origin = np.asarray(self.origin) + d @ offset
        return Volume(arr, self.resampled_spacing, tuple(origin), self.direction)  # type: ignore[arg-type]


def _normalise(array: np.ndarray, mask: np.ndarray | None, cfg: PreprocessConfig) -> np.ndarray:
    if cfg.intensity == "window":
        return ct_window(array, cfg.window)
    if cfg.intensity == "percentile":
        return mr_normalise(array, mask, cfg.percentiles)
    return standardise(array, mask, cfg.clip_sd)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def prepare_volume(volume: Volume, cfg: PreprocessConfig) -> PreparedVolume:
    """Normalise ``volume`` and put it on the working grid described by ``cfg``.

    Steps: (1) optional in-plane resampling to ``cfg.in_plane_spacing_mm`` (linear); (2) body mask
    (:func:`body_mask`, on the raw intensities); (3) intensity normalisation with statistics
    inside the body; (4) in-plane crop/pad: the body box (+ margin) padded to a multiple of
    ``pad_multiple``, or a fixed ``in_plane_size`` centred on it, padded with the background value
    (the normalised minimum). An empty body mask falls back to the whole slice.

    Raises:
        InputError: non-finite voxels (named by the volume's source path when known).
    """
    source = volume.meta.get("source", "volume")
    arr = volume.array
    if volume.meta.get("has_nonfinite") == "1" or (
        np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all()
    ):
        raise InputError("image has NaN or infinite voxels", source)
    if arr.size == 0:
        raise InputError("image is empty", source)
    if cfg.in_plane_spacing_mm is not None:
        work = resample_in_plane(volume, float(cfg.in_plane_spacing_mm))
    else:
        work = Volume(
            arr.astype(np.float32, copy=False), volume.spacing, volume.origin, volume.direction
        )
    raw = work.array
    body = body_mask(raw, cfg.modality, fill=str(cfg.body_fill))
    image = _normalise(raw, body if body.any() else None, cfg)
    pad_value = float(image.min())
    if cfg.mask_outside_body and body.any():
        image = np.where(body, image, np.float32(pad_value)).astype(np.float32)

    z, h, w = image.shape
    if cfg.crop_to_body and body.any():
        box = bounding_box(body.any(axis=0), margin=int(cfg.body_margin))
        centre = box_centre(box)
        box_size = (box[0].stop - box[0].start, box[1].stop - box[1].start)
    else:
        centre = ((h - 1) / 2.0, (w - 1) / 2.0)
        box_size = (h, w)
    if cfg.in_plane_size is not None:
        size = cfg.in_plane_size
    else:
        size = (_round_up(box_size[0], cfg.pad_multiple), _round_up(box_size[1], cfg.pad_multiple))
    starts = window_around((h, w), size, centre)
    full = (z, int(size[0]), int(size[1]))
    image_w = extract_window(image, (0, *starts), full, pad_value)
    body_w = extract_window(body, (0, *starts), full, False)
    return PreparedVolume(
        image=image_w,
        body=body_w,
        config=cfg,
        input_shape=volume.shape,
        input_spacing=volume.spacing,
        origin=volume.origin,
        direction=volume.direction,
        resampled_shape=work.shape,
        resampled_spacing=work.spacing,
        crop_start=(int(starts[0]), int(starts[1])),
        pad_value=pad_value,
        meta={"source": source},
    )


def prepare_label(label: Volume | np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """Put a label (a Volume on the input grid, or its array) on the working grid: nearest
    neighbour resampling and the same crop/pad as the image (padding = 0). Keeps values/dtype."""
    if isinstance(label, Volume):
        arr = label.array
        if label.shape != prepared.input_shape or not (
            np.allclose(label.spacing, prepared.input_spacing, atol=1e-3)
            and np.allclose(label.origin, prepared.origin, atol=1e-3)
            and np.allclose(label.direction, prepared.direction, atol=1e-3)
        ):
            src = label.meta.get("source", "label")
            raise GeometryError(
                f"label is not on the image grid ({label.shape} {label.spacing} vs {prepared.input_shape} "
                f"{prepared.input_spacing})",
                src,
            )
    else:
        arr = np.asarray(label)
        if arr.shape != prepared.input_shape:
            raise GeometryError(
                f"label shape {arr.shape} differs from image shape {prepared.input_shape}"
            )
    if prepared.resampled:
        vol = Volume(arr, prepared.input_spacing, prepared.origin, prepared.direction)
        arr = resample_volume(vol, prepared.resampled_spacing, is_label=True).array
    z = arr.shape[0]
    return extract_window(arr, (0, *prepared.crop_start), (z, *prepared.image.shape[1:]), 0)


def restore_to_input(
    array: np.ndarray, prepared: PreparedVolume, is_label: bool, fill_value: float = 0.0
) -> np.ndarray:
    """Map a working-grid array (mask or probability, ``prepared.shape``) back onto the input grid.

    Undoes the crop/pad (areas outside the working window get ``fill_value``) and the in-plane
    resampling (nearest neighbour for labels, keeping dtype; linear for probabilities, float32).
    The result has exactly ``prepared.input_shape`` and lies on the input volume's grid.
    """
    array = np.asarray(array)
    if array.shape != prepared.image.shape:
        raise GeometryError(
            f"array shape {array.shape} differs from the working shape {prepared.image.shape}"
        )
    if not is_label:
        array = array.astype(np.float32, copy=False)
    full = paste_window(array, (0, *prepared.crop_start), prepared.resampled_shape, fill_value)
    if not prepared.resampled:
        return full
    src = Volume(full, prepared.resampled_spacing, prepared.origin, prepared.direction)
    image = src.to_sitk()
    out = _resample(
        image,
        prepared.input_shape[::-1],
        prepared.input_spacing,
        prepared.origin,
        prepared.direction,
        is_label,
        fill_value,
    )
    res = sitk.GetArrayFromImage(out)
    return res.astype(array.dtype, copy=False) if is_label else res.astype(np.float32, copy=False)
