"""``ct-only-3d``: the CBCT paper's 3D U-Net baseline, a volumetric student trained alone with soft Dice.

Same optimisation as :class:`cmedl.methods.ct_only.CTOnly` (one Adam optimiser ``s``, network stored
as ``student_ct``) but on 3D patches: ``dims = 3`` tells the trainer to build
:class:`cmedl.data.datasets3d.PatchDataset3D` batches ``{"image", "label"}`` of float32
``[B, 1, d, h, w]`` (z, y, x; size ``data.patch_size_3d``), and ``cmedl segment`` to run the
student over whole volumes by sliding window (:func:`cmedl.nets.sliding_window_predict_3d`).
The network is ``model.arch`` and must be a 3D one (``unet3d``); ``model.seg_base_width`` is its
first level's width (None: 32).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cmedl.errors import ConfigError
from cmedl.methods.ct_only import CTOnly
from cmedl.training.config import TrainConfig


def check_arch_dims(config: TrainConfig, dims: int, method: str) -> None:
    """Raise :class:`ConfigError` unless ``model.arch`` names a ``dims``-D network (did-you-mean for
    unknown names; the 2D/3D mismatch message lists the networks that fit ``method``)."""
    from cmedl.nets.registry import (
        SEGMENTATION_NETS_2D,
        SEGMENTATION_NETS_3D,
        segmentation_net_class,
    )

    arch = config.model.arch
    cls = segmentation_net_class(arch)
    if cls.dims != dims:
        fits = SEGMENTATION_NETS_3D if dims == 3 else SEGMENTATION_NETS_2D
        raise ConfigError(
            f"model.arch: '{arch}' is a {cls.dims}D network but method '{method}' trains {dims}D networks "
            f"(choices: {', '.join(fits)}; e.g. --set model.arch={fits[0]})"
        )


class CTOnly3D(CTOnly):
    """Volumetric student alone: ``loss = soft_dice(S(x), y)`` on ``[B, 1, d, h, w]`` patches."""

    name: ClassVar[str] = "ct-only-3d"
    batch_kind: ClassVar[str] = "labelled"
    #: spatial dims of the batches and of the student (read by the trainer and ``cmedl segment``)
    dims: ClassVar[int] = 3

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        check_arch_dims(config, self.dims, self.name)
        super().__init__(config, device)

    @property
    def memory_format(self) -> torch.memory_format:
        # channels_last is the 4D layout; 5D tensors use its 3D counterpart
        return torch.channels_last_3d if self.config.training.channels_last is True else torch.contiguous_format

    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The middle axial slice of each patch ``[B, 1, h, w]`` (image, expert and predicted masks)."""
        image = self.to_device(batch["image"])
        with self.evaluating(), self.autocast():
            pred = (self.student(image).float() > 0).float()
        k = image.shape[2] // 2
        return {
            "CT": image[:, :, k].float().cpu(),
            "expert": batch["label"][:, :, k].float().cpu(),
            "predicted": pred[:, :, k].cpu(),
        }


__all__ = ["CTOnly3D", "check_arch_dims"]
