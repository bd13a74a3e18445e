"""``box-teacher`` and ``point-teacher``: the teacher-student paper's teachers (Sec. 2.3, Table 2).

Both are the paper's 3-level 3D U-Net (``ts-unet3d-teacher``) trained with soft Dice on crops of
``data.patch_size_3d`` voxels around the lesions of the expertly contoured cases
(``BatchKind.GUIDED_CROPS_3D``; the paper: 128^3 at 1 x 1 x 1.5 mm). With ``<method>.pipeline: paper``
(:mod:`cmedl.methods.ts_common`) the cases are clipped, z-scored and resampled to
``<method>.preprocess.spacing`` first and the boxes re-derived on that grid; the settings go into the
checkpoint and ``cmedl pseudo-label`` applies them:

- ``box-teacher`` sees two channels, the CT crop and the union of the lesion's axial bounding boxes
  (the box mask): "guided by the bounding boxes";
- ``point-teacher`` is the paper's point-guided baseline "without bounding boxes as input": the CT
  crop alone, centred on the box centre, so the only guidance is where the crop is.

They need boxes at test time, so ``cmedl segment`` refuses them; ``cmedl pseudo-label`` runs them on
the box-only cases of a manifest (:mod:`cmedl.inference.pseudo_label`). They validate on fixed crops
(``training.validation: patches``): whole volumes have no guidance.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cmedl.config import TrainConfig
from cmedl.data.batches import BatchKind
from cmedl.errors import ConfigError
from cmedl.methods.recipe import TestTimeRecipe
from cmedl.methods.ts_common import TSMethod


class TeacherMethod(TSMethod):
    """A guided teacher: ``guidance`` says what it needs at test time besides the CT."""

    batch_kind: ClassVar[BatchKind] = BatchKind.GUIDED_CROPS_3D
    network: ClassVar[str] = "ts-unet3d-teacher"
    net_key: ClassVar[str] = "teacher_ct"
    recipe: ClassVar[TestTimeRecipe] = TestTimeRecipe(segmenter="teacher_ct")
    #: ``box`` (box mask channel) or ``point`` (crop centred on the box centre)
    guidance: ClassVar[str] = "box"

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        super().check_config(config)
        if config.training.validation != "patches":
            raise ConfigError(f"training.validation: method '{cls.name}' validates on lesion crops (whole volumes "
                              "carry no box guidance); set training.validation=patches (e.g. --config cpu-ts-teacher)")


class BoxTeacher(TeacherMethod):
    """CT crop + box mask channel -> tumour mask of the crop."""

    name: ClassVar[str] = "box-teacher"
    description: ClassVar[str] = ("teacher-student paper: 3D teacher on lesion crops guided by the axial box mask "
                                  "(2 channels); makes pseudo labels (cmedl pseudo-label)")
    in_channels: ClassVar[int] = 2
    guidance: ClassVar[str] = "box"

    def inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.to_device(torch.cat([batch["image"], batch["box"]], dim=1))


class PointTeacher(TeacherMethod):
    """CT crop centred on the box centre (no box channel) -> tumour mask of the crop."""

    name: ClassVar[str] = "point-teacher"
    description: ClassVar[str] = ("teacher-student paper's point-guided baseline: 3D teacher on CT crops centred on "
                                  "the box centre, no box channel")
    guidance: ClassVar[str] = "point"


__all__ = ["BoxTeacher", "PointTeacher", "TeacherMethod"]
