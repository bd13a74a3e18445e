"""``ct-only-3d``: the CBCT paper's 3D U-Net baseline, a volumetric student trained alone with soft Dice.

Same optimisation as :class:`cmedl.methods.ct_only.CTOnly` (one Adam optimiser ``s``, network stored
as ``student_ct``) but on 3D patches (``BatchKind.LABELLED_PATCHES_3D``: ``{"image", "label"}`` of
float32 ``[B, 1, d, h, w]``, size ``data.patch_size_3d``); ``cmedl segment`` runs the student over
whole volumes by sliding window. ``model.arch`` must be a 3D network (``unet3d``);
``model.seg_base_width`` is its first level's width (None: 32).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cmedl.data.batches import BatchKind
from cmedl.methods.ct_only import CTOnly


class CTOnly3D(CTOnly):
    """Volumetric student alone: ``loss = soft_dice(S(x), y)`` on ``[B, 1, d, h, w]`` patches."""

    name: ClassVar[str] = "ct-only-3d"
    description: ClassVar[str] = "a 3D student (3D U-Net) trained alone on labelled 3D CT/CBCT patches"
    batch_kind: ClassVar[BatchKind] = BatchKind.LABELLED_PATCHES_3D

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
