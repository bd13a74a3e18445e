"""``ts-baseline``, ``ts-student`` and ``ts-student-do``: the teacher-student paper's fully automatic
3D students (Sec. 2.3-2.4, Tables 3 and 5).

All three are the paper's 4-level 3D U-Net trained with soft Dice on 3D patches of
``data.patch_size_3d`` (a ``data.tumour_fraction`` share centred on tumour voxels). With
``<method>.pipeline: paper`` (:mod:`cmedl.methods.ts_common`) the patches come from the per-lung crops of
the clipped, z-scored CT resampled to ``<method>.preprocess.spacing``, and ``cmedl segment`` segments
each lung crop by sliding window and merges them on the input grid (:mod:`cmedl.inference.ts_segment`);
with ``legacy`` they come from the working grid and whole volumes are segmented by sliding window:

- ``ts-baseline``: the student architecture on the expertly contoured cases alone
  (``BatchKind.STRONG_PATCHES_3D``; pseudo-labelled cases are left out);
- ``ts-student`` (SO student): expert and teacher-made (pseudo) labels (``mixed-patches-3d``, the
  manifest written by ``cmedl pseudo-label``);
- ``ts-student-do`` (DO student): the same data, the dual-output network ``ts-unet3d-do`` whose
  second decoder branch learns the axial box mask (the case's box file, or boxes derived from its
  label): ``loss = Dice(seg) + ts-student-do.box_weight * Dice(box)``. Only the segmentation channel
  is used at test time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cmedl.config.schema import check_positive
from cmedl.data.batches import BatchKind
from cmedl.methods.ts_common import TSConfig, TSMethod


class TSBaseline(TSMethod):
    """The student network on expert labels only."""

    name: ClassVar[str] = "ts-baseline"
    description: ClassVar[str] = "teacher-student paper's baseline: the 3D student network on expert masks only"
    batch_kind: ClassVar[BatchKind] = BatchKind.STRONG_PATCHES_3D


class TSStudent(TSMethod):
    """Single-output (SO) student on expert + pseudo labels."""

    name: ClassVar[str] = "ts-student"
    description: ClassVar[str] = "teacher-student paper's SO student: 3D U-Net on expert + teacher pseudo masks"
    batch_kind: ClassVar[BatchKind] = BatchKind.MIXED_PATCHES_3D


@dataclass
class DualStudentConfig(TSConfig):
    """``ts-student-do``: gradient accumulation and the weight of the box branch's Dice loss."""

    box_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("box_weight", self.box_weight, allow_zero=True)


class TSStudentDO(TSMethod):
    """Dual-output (DO) student: segmentation + axial box mask channels."""

    name: ClassVar[str] = "ts-student-do"
    description: ClassVar[str] = ("teacher-student paper's DO student: 3D U-Net with a second decoder branch "
                                  "predicting the axial box mask; expert + pseudo masks")
    batch_kind: ClassVar[BatchKind] = BatchKind.MIXED_PATCHES_3D
    config_section: ClassVar[type | None] = DualStudentConfig
    network: ClassVar[str] = "ts-unet3d-do"

    def losses(self, logits: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        seg = self.seg_loss(logits[:, :1], self.to_device(batch["label"]))
        box = self.seg_loss(logits[:, 1:2], self.to_device(batch["box"]))
        return {"loss": seg + self.section_of(self.config).box_weight * box, "seg": seg, "box": box}


__all__ = ["DualStudentConfig", "TSBaseline", "TSStudent", "TSStudentDO"]
