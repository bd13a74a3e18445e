"""``ct-only``: the papers' baseline, the student segmentation network trained alone with soft Dice.

The student sees CT or CBCT (``data.modality``); its network is stored as ``student_ct`` either way,
with one Adam optimiser ``s`` (``optim.lr_segmentation``, ``optim.betas_segmentation``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cmedl.methods.base import Method
from cmedl.training.config import TrainConfig


def build_student_net(config: TrainConfig) -> torch.nn.Module:
    """The configured segmentation network (also used for the CMEDL teacher)."""
    from cmedl.nets import build_segmentation_net

    m = config.model
    return build_segmentation_net(
        m.arch, in_channels=1, out_channels=1, base_width=m.seg_base_width, hint_layers=m.hint_layers,
        dropout=m.dropout,
    )


class CTOnly(Method):
    """Student alone: ``loss = soft_dice(S_CT(x), y)``."""

    name: ClassVar[str] = "ct-only"
    batch_kind: ClassVar[str] = "labelled"

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.networks["student_ct"] = build_student_net(config)
        self._finish_networks()
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
