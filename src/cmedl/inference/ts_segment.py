"""Whole-volume segmentation with a teacher-student paper student (``cmedl segment``, paper pipeline).

A student checkpoint trained with ``<method>.pipeline: paper`` stores its preprocessing as
``preprocess["ts"]`` (:func:`ts_preprocess_of_checkpoint`). :func:`student_probabilities` applies it to
one CT and goes back to the input grid, as the paper's test time does:

1. HU clipped to ``clip_hu`` and z-scored, resampled to ``spacing`` (1 x 1 x 1.5 mm in the paper), the
   classical lung mask of the input CT (:func:`cmedl.data.lung.lung_mask`) resampled alongside
   (:func:`cmedl.data.ts_preprocess.ts_prepare`);
2. one crop per lung grown by ``lung_margin_mm`` (the whole volume when no lung is found), each segmented
   by sliding window over the training patch size ``data.patch_size_3d``
   (:func:`cmedl.nets.predict.predict_volume_3d`: 25 % overlap, Gaussian blending, padding with the
   z-scored background); where the two crops overlap the larger probability wins, outside them it is 0;
3. the probability map is resampled back (linear) onto exactly the input grid: same shape, spacing,
   origin and direction (:func:`cmedl.data.ts_preprocess.restore_to_input`).

:func:`cmedl.inference.segment.segment_volume` thresholds and post-processes the result as for every
other method. Checkpoints without ``preprocess["ts"]`` (legacy pipeline) take the working-grid path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmedl.data.ts_preprocess import TSPreprocessConfig, restore_to_input, student_crops, ts_prepare
from cmedl.errors import ConfigError, InputError
from cmedl.io.volume import Volume
from cmedl.nets.predict import predict_volume_3d


def ts_preprocess_of_checkpoint(ckpt: dict[str, Any], source: str | Path | None = None) -> TSPreprocessConfig | None:
    """The paper pipeline's settings stored in a checkpoint (``preprocess["ts"]``), None when it has none;
    InputError naming ``source`` when they are invalid."""
    raw = (ckpt.get("preprocess") or {}).get("ts")
    if raw is None:
        return None
    try:
        return TSPreprocessConfig.from_dict(dict(raw))
    except (ConfigError, TypeError, ValueError) as exc:
        raise InputError(f"checkpoint 'ts' preprocessing is invalid ({exc})", source) from None


def student_probabilities_resampled(volume: Volume, net: nn.Module, config: TSPreprocessConfig,
                                    patch_size: Sequence[int], *, overlap: float = 0.25, batch_size: int | None = None,
                                    device: str | torch.device = "cpu", amp_bf16: bool = False,
                                    channels_last: bool | None = None) -> tuple[np.ndarray, Any]:
    """Steps 1-2 of the module docstring: the merged probabilities ``[z, y, x]`` on the resampled grid and
    the :class:`~cmedl.data.ts_preprocess.TSPrepared` case (its ``image`` is that grid)."""
    prepared = ts_prepare(volume, config, lungs=True)
    probs = np.zeros(prepared.image.shape, np.float32)
    for crop in student_crops(prepared, config):
        image = np.ascontiguousarray(prepared.image.array[crop.box])
        window = predict_volume_3d(net, image, patch_size, overlap=overlap, batch_size=batch_size, device=device,
                                   amp_bf16=amp_bf16, pad_value=prepared.background, channels_last=channels_last)
        np.maximum(probs[crop.box], window, out=probs[crop.box])
    return probs, prepared


def student_probabilities(volume: Volume, net: nn.Module, config: TSPreprocessConfig, patch_size: Sequence[int],
                          **kwargs: Any) -> np.ndarray:
    """float32 probabilities ``[z, y, x]`` of a student on ``volume``'s own grid (the module docstring;
    ``kwargs``: overlap, batch_size, device, amp_bf16, channels_last of :func:`predict_volume_3d`)."""
    probs_r, prepared = student_probabilities_resampled(volume, net, config, patch_size, **kwargs)
    out = restore_to_input(probs_r, prepared, volume).array.astype(np.float32, copy=False)
    return np.clip(out, 0.0, 1.0, out=out)


__all__ = ["student_probabilities", "student_probabilities_resampled", "ts_preprocess_of_checkpoint"]
