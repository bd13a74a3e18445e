"""Preprocessing pipeline of CT, CBCT and MRI volumes for 2D slice networks, and its exact inverse.

All arrays are numpy ``[z, y, x]`` (as in :class:`cmedl.io.Volume`); spacings passed as
``spacing_xyz`` are millimetres in ITK order ``(x, y, z)``.

The pipeline used for training and inference is :func:`prepare_volume` driven by a
:class:`PreprocessConfig` (stored in checkpoints via ``to_dict``; :class:`PreprocessOptions` is
its typed, modality-free form for training configs). Its result, a :class:`PreparedVolume`, holds
the normalised image on the *working grid* (optionally resampled in-plane, then cropped/padded
in-plane around the body; slices are never dropped or resampled, so slice ``k`` of the working
grid is slice ``k`` of the input) plus everything :func:`restore_to_input` needs to put a
working-grid mask or probability map back onto exactly the input grid.

Its building blocks live in their own modules and are re-exported here:
:mod:`cmedl.data.intensity` (:func:`ct_window`, :func:`mr_normalise`, :func:`standardise`),
:mod:`cmedl.data.body` (:func:`body_mask`), :mod:`cmedl.data.cropping` (:func:`bounding_box`,
:func:`box_centre`, :func:`window_around`, :func:`extract_window`, :func:`paste_window`,
:func:`crop_or_pad`) and :mod:`cmedl.data.resampling` (:func:`resample_volume`,
:func:`resample_in_plane`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk

from cmedl.data.body import BODY_FILLS, BODY_THRESHOLD_HU, body_mask
from cmedl.data.cropping import (
    bounding_box,
    box_centre,
    crop_or_pad,
    extract_window,
    paste_window,
    window_around,
)
from cmedl.data.intensity import DEFAULT_CT_WINDOW, ct_window, mr_normalise, standardise
from cmedl.data.modalities import MODALITIES
from cmedl.data.resampling import resample_image, resample_in_plane, resample_volume
from cmedl.errors import ConfigError, GeometryError, InputError, did_you_mean
from cmedl.io.volume import Volume

__all__ = [
    "BODY_FILLS",
    "BODY_THRESHOLD_HU",
    "DEFAULT_BODY_FILL",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_INTENSITY",
    "INTENSITY_METHODS",
    "MODALITIES",
    "PreparedVolume",
    "normalise_intensity",
    "PreprocessConfig",
    "PreprocessOptions",
    "body_mask",
    "bounding_box",
    "box_centre",
    "crop_or_pad",
    "ct_window",
    "extract_window",
    "mr_normalise",
    "paste_window",
    "prepare_label",
    "prepare_volume",
    "resample_in_plane",
    "resample_volume",
    "restore_to_input",
    "standardise",
    "window_around",
]

INTENSITY_METHODS = ("window", "percentile", "standardise")
#: Intensity method used when :attr:`PreprocessConfig.intensity` is not given.
DEFAULT_INTENSITY = {"ct": "window", "cbct": "standardise", "mr": "percentile"}
#: Body fill used when :attr:`PreprocessConfig.body_fill` is not given (CBCT: truncated FOV).
DEFAULT_BODY_FILL = {"ct": "holes", "cbct": "hull", "mr": "holes"}

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
class PreprocessOptions:
    """Typed, modality-free overrides of :class:`PreprocessConfig` (for training configs).

    The fields are those of :class:`PreprocessConfig` except ``modality``; ``None`` means "the
    modality's default". :meth:`resolve` builds the full config for one modality and
    :meth:`to_overrides` gives the non-None fields as plain YAML-safe data. Values are checked
    when the options are built (and again by :meth:`resolve`); invalid ones raise ConfigError.
    """

    intensity: str | None = None
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = None
    clip_sd: float | None = None
    in_plane_spacing_mm: float | None = None
    crop_to_body: bool | None = None
    body_margin: int | None = None
    in_plane_size: tuple[int, int] | None = None
    pad_multiple: int | None = None
    mask_outside_body: bool | None = None
    body_fill: str | None = None

    def __post_init__(self) -> None:
        # the checks do not depend on the modality; take the normalised values (tuples of floats)
        cfg = self.resolve(MODALITIES[0])
        for name in self.to_overrides():
            setattr(self, name, getattr(cfg, name))

    def resolve(self, modality: str) -> PreprocessConfig:
        """The :class:`PreprocessConfig` for ``modality`` with the non-None fields overridden."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw = {k: v for k, v in kw.items() if v is not None}
        try:
            return PreprocessConfig(modality=modality, **kw)
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"invalid preprocessing option: {exc}") from None

    def to_overrides(self) -> dict[str, Any]:
        """The non-None fields as plain data (tuples become lists), e.g. for a YAML config."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, (tuple, list)) else value
        return out

    @classmethod
    def from_overrides(cls, data: dict[str, Any]) -> PreprocessOptions:
        """Inverse of :meth:`to_overrides`; unknown keys (``modality`` too) raise ConfigError."""
        names = {f.name for f in fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(did_you_mean(str(key), names, "preprocessing option"))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


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


def normalise_intensity(array: np.ndarray, mask: np.ndarray | None, cfg: PreprocessConfig) -> np.ndarray:
    """``array`` normalised by ``cfg.intensity`` (statistics inside ``mask`` where the method uses any)."""
    if cfg.intensity == "window":
        return ct_window(array, cfg.window)
    if cfg.intensity == "percentile":
        return mr_normalise(array, mask, cfg.percentiles)
    return standardise(array, mask, cfg.clip_sd)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _in_plane_window(
    body: np.ndarray, cfg: PreprocessConfig
) -> tuple[tuple[int, ...], tuple[int, int]]:
    """In-plane ``(starts, size)`` of the working window on a ``[z, rows, cols]`` grid with body
    mask ``body``: the body box (+ margin) or the whole slice, padded up to a multiple of
    ``cfg.pad_multiple`` or set to ``cfg.in_plane_size``, centred on the box / slice."""
    h, w = body.shape[1:]
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
    return window_around((h, w), size, centre), size


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
    image = normalise_intensity(raw, body if body.any() else None, cfg)
    pad_value = float(image.min())
    if cfg.mask_outside_body and body.any():
        image = np.where(body, image, np.float32(pad_value)).astype(np.float32)

    z = image.shape[0]
    starts, size = _in_plane_window(body, cfg)
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
    out = resample_image(
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
