"""Per-epoch validation of the student (``training.validation``).

- ``volumes`` (default): the student segments every validation volume whole, through the same
  prediction path as ``cmedl segment`` (:mod:`cmedl.nets.predict`: slice-wise, or by sliding window
  for 3D methods); ``val_loss`` is the mean over volumes of the soft Dice loss of the probability map
  and ``val_dice`` the mean per-volume Dice of the thresholded mask
  (:func:`cmedl.losses.dice_of_volume`). A false positive anywhere in the scan costs, as it does in
  the evaluation; patch validation cannot see those, so it tends to keep checkpoints that
  over-segment whole scans.
- ``patches``: a FIXED set of ``data.val_samples`` patches (same every epoch): mean soft-Dice loss
  and the data-set-level hard Dice. Cheaper on big validation sets.

In a data-parallel run each rank scores its share (volumes: cases r, r+W, ...; patches: the loader's
batches of the rank) and the sums are all-reduced, so every rank gets the same numbers (and takes part
in every collective).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cmedl.data.datasets import VolumeCache
from cmedl.losses import dice_of_volume
from cmedl.methods.base import Method
from cmedl.nets.predict import inference_copy, predict_slices, predict_volume_3d
from cmedl.training.distributed import all_reduce_sums, plain_batchnorm, rank, world_size


def validate_patches(method: Method, loader: DataLoader) -> tuple[dict[str, float], dict[str, Any] | None]:
    """``{"val_loss", "val_dice"}`` over the fixed validation patches, and the first batch (for the image grid)."""
    tot = {"loss": 0.0, "n": 0.0, "intersection": 0.0, "pred_sum": 0.0, "label_sum": 0.0}
    first = None
    for batch in loader:
        if first is None:
            first = batch
        out = method.validation_step(batch)
        tot["loss"] += out["loss"] * out["n"]
        for k in ("n", "intersection", "pred_sum", "label_sum"):
            tot[k] += out[k]
    tot = all_reduce_sums(tot)  # the rank's batches -> all of them (a no-op in one process)
    n = max(tot["n"], 1.0)
    denom = tot["pred_sum"] + tot["label_sum"]
    dice = 2.0 * tot["intersection"] / denom if denom > 0 else 1.0
    return {"val_loss": tot["loss"] / n, "val_dice": dice}, first


def validate_volumes(method: Method, cache: VolumeCache, device: torch.device) -> dict[str, float]:
    """Segment every validation volume whole with the student (on the working grid, as ``cmedl segment``
    does) and return the mean per-volume soft Dice loss and hard Dice."""
    bf16 = method.precision == "bf16"
    # BN folded, eval mode (synchronised BN layers as plain ones); the training net is untouched
    net = inference_copy(plain_batchnorm(method.student, method.dims()), device)
    losses, dices = [], []
    w = world_size()
    for case in cache.cases[rank()::w]:
        pad = float(case.prepared.pad_value)
        if method.dims() == 3:
            prob = predict_volume_3d(net, case.image, method.config.data.patch_size_3d, device=device,
                                     amp_bf16=bf16, pad_value=pad)
        else:
            prob, _ = predict_slices(net, case.image, device=device, amp_bf16=bf16, pad_value=pad)
        loss, dice = dice_of_volume(torch.from_numpy(prob), torch.from_numpy(np.ascontiguousarray(case.label)))
        losses.append(loss)
        dices.append(dice)
    if w == 1:
        return {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(dices))}
    tot = all_reduce_sums({"loss": float(np.sum(losses)), "dice": float(np.sum(dices)), "n": float(len(losses))})
    n = max(tot["n"], 1.0)
    return {"val_loss": tot["loss"] / n, "val_dice": tot["dice"] / n}


__all__ = ["validate_patches", "validate_volumes"]
