"""Online 2D augmentation of an image and its mask, applied identically to both (MONAI).

The papers train with horizontal flips, scaling, rotation and elastic deformation. Here they are
MONAI dictionary transforms on ``[1, H, W]`` arrays: ``RandFlipd`` (left-right, i.e. the column
axis), ``RandAffined`` (rotation + scaling in one resampling) and ``Rand2DElasticd``
(a random displacement on a coarse control grid, smoothly upsampled). The image is interpolated
bilinearly and the mask with nearest neighbour, so it stays binary; outside the rotated field
of view the image repeats its border and the mask is 0.

Every call is seeded (:meth:`Augmenter.__call__` takes a seed), so a sample is the same whatever
process or worker computes it. Cost per sample on one CPU thread (MONAI 1.6, best of 3 on a
shared, loaded 2-core machine, so upper bounds): flip ~1 ms; affine ~3 ms (64x64) / ~5 ms
(256x256); elastic ~5 ms (64x64) / ~12-25 ms (256x256, the bicubic upsampling of the displacement
field dominates); the default probabilities ~6 ms (64x64) / ~9-17 ms (256x256). That is small
next to a CMEDL training step (two generators, two discriminators, two segmentation nets), but
with few DataLoader workers at 256x256 lower ``elastic_prob`` first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from cmedl.errors import ConfigError, did_you_mean


@dataclass
class AugmentConfig:
    """Probabilities and magnitudes of the online augmentation.

    Attributes:
        flip_prob: probability of a left-right flip.
        affine_prob: probability of a rotation+scaling (both drawn together, one resampling).
        rotate_deg: rotation drawn uniformly in +-``rotate_deg`` degrees (in-plane).
        scale: zoom factor per axis drawn uniformly in ``[1 - scale, 1 + scale]`` (rows and
            columns independently, as MONAI draws them).
        elastic_prob: probability of an elastic deformation.
        elastic_spacing: control-point spacing as a fraction of the patch side.
        elastic_magnitude: range of the displacement SD as a fraction of the patch side
            (e.g. (0.005, 0.015) = 1.3 to 3.8 pixels at 256x256).
    """

    flip_prob: float = 0.5
    affine_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.15
    elastic_prob: float = 0.2
    elastic_spacing: float = 0.125
    elastic_magnitude: tuple[float, float] = (0.005, 0.015)

    def __post_init__(self) -> None:
        for name in ("flip_prob", "affine_prob", "elastic_prob"):
            p = float(getattr(self, name))
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 <= self.scale < 1.0 or self.rotate_deg < 0:
            raise ConfigError(
                f"scale must be in [0, 1) and rotate_deg >= 0, got {self.scale}, {self.rotate_deg}"
            )
        if not 0.0 < self.elastic_spacing <= 1.0:
            raise ConfigError(f"elastic_spacing must be in (0, 1], got {self.elastic_spacing}")
        self.elastic_magnitude = (
            float(self.elastic_magnitude[0]),
            float(self.elastic_magnitude[1]),
        )
        if not 0.0 <= self.elastic_magnitude[0] <= self.elastic_magnitude[1]:
            raise ConfigError(
                f"elastic_magnitude must be (low, high) with 0 <= low <= high, got {self.elastic_magnitude}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        names = {f.name for f in fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(did_you_mean(str(key), names, "augmentation option"))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class Augmenter:
    """Seeded image+mask augmentation: ``image, label = augmenter(image, label, seed)``.

    Inputs are ``[1, H, W]`` float arrays or tensors; outputs plain float32 torch tensors of the
    same shape, the label in {0, 1}. MONAI pipelines are built lazily per patch size (the elastic
    control grid is relative to it) and are re-seeded on every call, so the result depends only on
    the inputs and ``seed``.
    """

    KEYS = ("image", "label")

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        self._pipelines: dict[tuple[int, int], Any] = {}

    @property
    def is_identity(self) -> bool:
        c = self.config
        return c.flip_prob == 0 and c.affine_prob == 0 and c.elastic_prob == 0

    def _pipeline(self, size: tuple[int, int]) -> Any:
        if size in self._pipelines:
            return self._pipelines[size]
        # lazy: MONAI takes seconds to import and is only needed once augmentation runs
        from monai.transforms import Compose, Rand2DElasticd, RandAffined, RandFlipd

        c = self.config
        keys = list(self.KEYS)
        modes = ("bilinear", "nearest")
        pads = ("border", "zeros")
        transforms: list[Any] = []
        if c.flip_prob > 0:
            # [C, H, W]: spatial axis 1 is the column (x) axis -> left-right flip
            transforms.append(RandFlipd(keys, prob=c.flip_prob, spatial_axis=1))
        if c.affine_prob > 0:
            transforms.append(
                RandAffined(
                    keys,
                    prob=c.affine_prob,
                    rotate_range=math.radians(c.rotate_deg),
                    scale_range=(c.scale, c.scale),
                    mode=modes,
                    padding_mode=pads,
                )
            )
        if c.elastic_prob > 0:
            side = min(size)
            spacing = max(2.0, c.elastic_spacing * side)
            transforms.append(
                Rand2DElasticd(
                    keys,
                    spacing=(spacing, spacing),
                    magnitude_range=(c.elastic_magnitude[0] * side, c.elastic_magnitude[1] * side),
                    prob=c.elastic_prob,
                    mode=modes,
                    padding_mode=pads,
                )
            )
        pipeline = Compose(transforms)
        self._pipelines[size] = pipeline
        return pipeline

    def __call__(
        self, image: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.as_tensor(np.asarray(image, dtype=np.float32))
        lab = torch.as_tensor(np.asarray(label, dtype=np.float32))
        if img.ndim != 3 or lab.shape != (1, *img.shape[1:]):
            raise ValueError(
                f"augmentation needs image [C, H, W] and label [1, H, W], got {tuple(img.shape)}, {tuple(lab.shape)}"
            )
        if self.is_identity:
            return img.clone(), (lab > 0.5).float()
        from monai.data import get_track_meta, set_track_meta  # lazy: MONAI is slow to import

        pipeline = self._pipeline((int(img.shape[1]), int(img.shape[2])))
        pipeline.set_random_state(seed=int(seed) % (2**32))
        # MONAI's metadata tracking (MetaTensor) costs up to ~40% of a 64x64 call and is not used
        # here; switch it off for this call only (a process-wide flag, restored afterwards).
        track = get_track_meta()
        set_track_meta(False)
        try:
            out = pipeline({"image": img, "label": lab})
        finally:
            set_track_meta(track)
        # MetaTensor -> plain tensor (cheaper to collate; no MONAI metadata needed downstream)
        img_out = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).float().contiguous()
        lab_out = (
            (torch.as_tensor(out["label"]).as_subclass(torch.Tensor) > 0.5).float().contiguous()
        )
        return img_out, lab_out

    def __getstate__(self) -> dict[str, Any]:
        # pipelines are rebuilt in each DataLoader worker (cheap) instead of pickled
        return {"config": self.config, "_pipelines": {}}
