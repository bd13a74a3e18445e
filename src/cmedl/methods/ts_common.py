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

Preprocessing (each method's section)::

    ts-student:
      pipeline: paper          # paper: Sec. 2.2 (below); legacy: the working grid of `preprocessing.student`
      preprocess: {clip_hu: [-1024, 1000], zscore: true, spacing: [1.0, 1.0, 1.5], lung_margin_mm: 10.0}

``paper``: HU clipped and z-scored, resampled to ``spacing`` (x, y, z mm); teachers train on
``data.patch_size_3d`` crops around the tumours (the paper: 128^3) with the box channel, students on
patches of the per-lung crops (:mod:`cmedl.data.ts_cases`). :func:`ts_preprocess_of` gives the
:class:`~cmedl.data.ts_preprocess.TSPreprocessConfig` of a config (the teacher crop is
``data.patch_size_3d``), which every checkpoint stores as ``preprocess["ts"]``
(:meth:`TSMethod.checkpoint_preprocess`) and ``cmedl segment`` / ``cmedl pseudo-label`` apply. Checkpoints
without it (``legacy``, or written before) run on the legacy working grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from cmedl.config import TrainConfig
from cmedl.config.schema import check_choice, check_positive
from cmedl.data.ts_preprocess import DEFAULT_LUNG_MARGIN_MM, TSPreprocessConfig
from cmedl.errors import ConfigError
from cmedl.methods.base import Method
from cmedl.nets import build_segmentation_net

#: the ``model.arch`` of every teacher-student method
TS_ARCH = "ts-unet3d"
#: ``<method>.pipeline`` values: the paper's preprocessing, or the repository's working grid
PIPELINES = ("paper", "legacy")
#: smallest teacher crop (voxels per axis) the paper pipeline accepts
MIN_TEACHER_CROP = 8


@dataclass
class TSPreprocessSection:
    """``<method>.preprocess``: the paper pipeline's settings (:class:`TSPreprocessConfig` without the teacher
    crop, which is ``data.patch_size_3d``)."""

    #: HU range kept before the z-score
    clip_hu: tuple[float, float] = (-1024.0, 1000.0)
    #: z-score the clipped volume (mean and SD of the volume)
    zscore: bool = True
    #: resampled spacing (x, y, z) mm; the paper: 1 x 1 x 1.5
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.5)
    #: margin (mm) of the students' per-lung crops
    lung_margin_mm: float = DEFAULT_LUNG_MARGIN_MM

    def __post_init__(self) -> None:
        self.resolve()

    def resolve(self, teacher_crop: Sequence[int] | None = None) -> TSPreprocessConfig:
        """The data layer's config (checks every value: ConfigError naming the field)."""
        crop = TSPreprocessConfig.teacher_crop if teacher_crop is None else tuple(int(v) for v in teacher_crop)
        return TSPreprocessConfig(clip_hu=self.clip_hu, zscore=self.zscore, spacing=self.spacing,
                                  teacher_crop=crop, lung_margin_mm=self.lung_margin_mm)


@dataclass
class TSConfig:
    """Settings of a teacher-student method (one section per method, named like it)."""

    #: optimiser step every this many training steps (gradient accumulation; the paper: batch 1 x 8)
    accumulate: int = 8
    #: ``paper`` (Sec. 2.2: clip + z-score, resampled, tumour / lung crops) or ``legacy`` (working grid)
    pipeline: str = "paper"
    #: the paper pipeline's settings
    preprocess: TSPreprocessSection = field(default_factory=TSPreprocessSection)

    def __post_init__(self) -> None:
        check_positive("accumulate", self.accumulate)
        check_choice("pipeline", self.pipeline, PIPELINES)
        self.preprocess.resolve()  # values set in code are checked again (config.validate)


def ts_preprocess_of(config: TrainConfig, teacher: bool, method: str | None = None) -> TSPreprocessConfig | None:
    """The paper pipeline's settings of ``method`` (default ``training.method``) in ``config``, or None for
    the legacy pipeline (and for methods that are not teacher-student ones). A ``teacher`` crops
    ``data.patch_size_3d`` around the tumour."""
    name = method or config.training.method
    section = config.sections.get(name)
    if not isinstance(section, TSConfig) or section.pipeline != "paper":
        return None
    crop = config.data.patch_size_3d if teacher else None
    if teacher and min(int(v) for v in crop) < MIN_TEACHER_CROP:
        raise ConfigError(f"data.patch_size_3d: the teacher's crop ({name}.pipeline=paper) needs at least "
                          f"{MIN_TEACHER_CROP} voxels per axis, got {list(crop)}")
    return section.preprocess.resolve(crop)


class TSMethod(Method):
    """Base of ``box-teacher``, ``point-teacher``, ``ts-baseline``, ``ts-student``, ``ts-student-do``."""

    config_section: ClassVar[type | None] = TSConfig
    #: registry name of the network this method trains
    network: ClassVar[str] = TS_ARCH
    #: checkpoint name of that network
    net_key: ClassVar[str] = "student_ct"
    #: input channels of the network
    in_channels: ClassVar[int] = 1
    #: what a teacher needs at test time besides the CT (``box`` / ``point``); None: a student
    guidance: ClassVar[str | None] = None

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        super().check_config(config)
        if config.model.arch != TS_ARCH:
            raise ConfigError(f"model.arch: method '{cls.name}' trains the teacher-student paper's 3D U-Nets; set "
                              f"model.arch={TS_ARCH} (got '{config.model.arch}')")
        ts_preprocess_of(config, cls.guidance is not None, cls.name)  # checks the teacher crop
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

    def checkpoint_preprocess(self) -> dict[str, Any]:
        """What checkpoints store beside ``preprocess["student"]``: ``{"ts": TSPreprocessConfig dict}`` with the
        paper pipeline (``cmedl segment`` / ``cmedl pseudo-label`` apply it), nothing with the legacy one."""
        ts = ts_preprocess_of(self.config, self.guidance is not None, self.name)
        return {} if ts is None else {"ts": ts.to_dict()}

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


__all__ = ["PIPELINES", "TS_ARCH", "TSConfig", "TSMethod", "TSPreprocessSection", "ts_preprocess_of"]
