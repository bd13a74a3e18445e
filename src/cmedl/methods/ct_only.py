"""``ct-only``: the papers' baseline, the student segmentation network trained alone with soft Dice.

The student sees CT or CBCT (``data.modality``); its network is stored as ``student_ct`` either way,
with one Adam optimiser ``s`` (``optim.lr_segmentation``, ``optim.betas_segmentation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from cmedl.config import TrainConfig
from cmedl.data.batches import BatchKind
from cmedl.methods.base import Method, build_segmenter


class CTOnly(Method):
    """Student alone: ``loss = soft_dice(S_CT(x), y)``."""

    name: ClassVar[str] = "ct-only"
    description: ClassVar[str] = "the student segmentation network trained alone on labelled CT/CBCT slices"
    batch_kind: ClassVar[BatchKind] = BatchKind.LABELLED_SLICES

    @classmethod
    def build_networks(cls, config: TrainConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        return {"student_ct": build_segmenter(config)}

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        o = config.optim
        self.optimizers["s"] = self.adam(self.student.parameters(), o.lr_segmentation, o.betas_segmentation)

    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        image = self.to_device(batch["image"])
        label = self.to_device(batch["label"])
        opt = self.optimizers["s"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.student(image)
        loss = self.seg_loss(logits, label)
        loss.backward()
        opt.step()
        self.global_step += 1
        value = float(loss.detach())
        return {"seg_ct": value, "loss_s": value}
