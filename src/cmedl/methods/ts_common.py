"""What the teacher-student paper's methods share (Fredriksen et al., Sec. 2.4): the paper's 3D U-Nets
(:mod:`cmedl.nets.ts_unet3d`), soft Dice, Adam (``optim.lr_segmentation``; the paper: 1e-4) and batch 1
"virtually increased to eight using accumulated gradients".

:class:`TSMethod` runs one forward/backward per training step and steps its optimiser every
``accumulate`` steps (the loss divided by ``accumulate``, so the update is the mean gradient of the
``accumulate`` micro-batches). An epoch must hold a whole number of accumulation cycles, so the
gradient in flight is never lost at a checkpoint (a resumed run repeats the uninterrupted one).

``model.arch`` must be ``ts-unet3d`` (the family); each method builds its own variant: the teachers
``ts-unet3d-teacher`` (3 levels), the students ``ts-unet3d`` (4 levels) and ``ts-unet3d-do`` (dual
output), all at ``model.seg_base_width``. (``methods.base.build_segmenter`` builds ``model.arch``
itself, so the variants are built here with the registry's ``build_segmentation_net``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cmedl.config import TrainConfig
from cmedl.config.schema import check_positive
from cmedl.errors import ConfigError
from cmedl.methods.base import Method
from cmedl.nets import build_segmentation_net

#: the ``model.arch`` of every teacher-student method
TS_ARCH = "ts-unet3d"


@dataclass
class TSConfig:
    """Settings of a teacher-student method (one section per method, named like it)."""

    #: optimiser step every this many training steps (gradient accumulation; the paper: batch 1 x 8)
    accumulate: int = 8

    def __post_init__(self) -> None:
        check_positive("accumulate", self.accumulate)


class TSMethod(Method):
    """Base of ``box-teacher``, ``point-teacher``, ``ts-baseline``, ``ts-student``, ``ts-student-do``."""

    config_section: ClassVar[type | None] = TSConfig
    #: registry name of the network this method trains
    network: ClassVar[str] = TS_ARCH
    #: checkpoint name of that network
    net_key: ClassVar[str] = "student_ct"
    #: input channels of the network
    in_channels: ClassVar[int] = 1

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        super().check_config(config)
        if config.model.arch != TS_ARCH:
            raise ConfigError(f"model.arch: method '{cls.name}' trains the teacher-student paper's 3D U-Nets; set "
                              f"model.arch={TS_ARCH} (got '{config.model.arch}')")
        acc = config.section(cls.name).accumulate
        if config.iterations_per_epoch % acc:
            raise ConfigError(f"{cls.name}.accumulate: an epoch ({config.iterations_per_epoch} steps: "
                              f"data.samples_per_epoch / training.batch_size) must hold a whole number of "
                              f"accumulation cycles of {acc} steps")

    @classmethod
    def build_networks(cls, config: TrainConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        m = config.model
        return {cls.net_key: build_segmentation_net(cls.network, in_channels=cls.in_channels,
                                                    base_width=m.seg_base_width, dropout=m.dropout)}

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        o = config.optim
        self.accumulate = int(self.section_of(config).accumulate)
        self.micro_steps = 0
        self.optimizers["s"] = self.adam(self.student.parameters(), o.lr_segmentation, o.betas_segmentation)

    @property
    def student(self) -> nn.Module:
        """The network this method trains (validated each epoch)."""
        return self.networks[self.net_key]

    # ------------------------------------------------------------------ per method
    def inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        """The network input of a batch (the CT patch; a teacher adds its guidance channel)."""
        return self.to_device(batch["image"])

    def losses(self, logits: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms of a forward pass; ``"loss"`` is what is minimised."""
        seg = self.seg_loss(logits[:, :1], self.to_device(batch["label"]))
        return {"loss": seg, "seg": seg}

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        opt = self.optimizers["s"]
        if self.micro_steps % self.accumulate == 0:
            opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.student(self.inputs(batch))
        terms = self.losses(logits.float(), batch)
        (terms["loss"] / self.accumulate).backward()
        self.micro_steps += 1
        if self.micro_steps % self.accumulate == 0:
            opt.step()
        self.global_step += 1
        return {f"loss_{k}" if k != "loss" else "loss_s": float(v.detach()) for k, v in terms.items()}

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Soft Dice loss and voxel counts of the segmentation channel on a validation batch."""
        label = self.to_device(batch["label"])
        with self.evaluating(), self.autocast():
            logits = self.student(self.inputs(batch)).float()[:, :1]
            loss = self.seg_loss(logits, label)
        pred = (logits > 0).float()
        return {"loss": float(loss), "n": float(label.shape[0]), "intersection": float((pred * label).sum()),
                "pred_sum": float(pred.sum()), "label_sum": float(label.sum())}

    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The middle axial slice of each patch: CT, expert (or pseudo) mask, prediction."""
        image = self.to_device(batch["image"])
        with self.evaluating(), self.autocast():
            pred = (self.student(self.inputs(batch)).float()[:, :1] > 0).float()
        k = image.shape[2] // 2
        return {"CT": image[:, :, k].float().cpu(), "label": batch["label"][:, :, k].float().cpu(),
                "predicted": pred[:, :, k].cpu()}

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {"micro_steps": self.micro_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.micro_steps = int(state.get("micro_steps", 0))


__all__ = ["TS_ARCH", "TSConfig", "TSMethod"]
