"""CT + pseudo-MRI baselines (CT paper Sec. II-D, eq. 11, Table III; CBCT paper "CT+pMRI").

Both train like the pMRI baselines (:mod:`cmedl.methods.pmri`: the translator alone for
``translator_epochs`` epochs, then the segmentation network on the frozen generator's output) and
run the ``fuse`` recipe at test time: the segmenter sees the CT and its pMRI as two channels.

- ``ct-pmri`` (the papers' simple CT+pMRI): ``seg_fused([CT, g_ct2mr(CT)])``, a segmentation network
  of ``model.arch`` with two input channels.
- ``ct-pmri-weighted`` (weighted CT+pMRI, eq. 11): ``seg_fused`` is a
  :class:`~cmedl.nets.resnet.WeightedFusionNet`: a ResNet18 with two fully connected layers
  predicts ``alpha`` in (0, 1) per image from ``[CT, pMRI]`` and the segmentation network sees
  ``[(1 - alpha) CT, alpha pMRI]``, in training and at test time. The alpha net and the segmenter
  are trained together in phase 2 by the segmentation loss (the only loss of eq. 11); ``alpha`` is
  logged (its batch mean). At test time alpha is computed per axial slice of the working grid,
  while training shows it patches (``data.patch_size``); its global average pooling makes it
  size-agnostic, but the context it sees differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from cmedl.config import TrainConfig
from cmedl.config.schema import check_positive
from cmedl.methods.base import build_segmenter
from cmedl.methods.pmri import PMRIConfig, TwoPhaseMethod, translator_generators
from cmedl.methods.recipe import TestTimeRecipe
from cmedl.nets.resnet import ResNet18Alpha, WeightedFusionNet


@dataclass
class CTPMRIWeightedConfig(PMRIConfig):
    """``ct-pmri-weighted``: the two-phase settings plus the alpha net's size (ResNet18: width 64)."""

    #: channels of the ResNet18's stem and first stage (stages: w, 2w, 4w, 8w)
    alpha_base_width: int = 64
    #: width of the first of the two fully connected layers
    alpha_hidden: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("alpha_base_width", self.alpha_base_width)
        check_positive("alpha_hidden", self.alpha_hidden)


class CTPMRI(TwoPhaseMethod):
    """``ct-pmri``: CT and its pMRI (CycleGAN by default) as two input channels of one segmenter."""

    name: ClassVar[str] = "ct-pmri"
    description: ClassVar[str] = ("CT+pMRI baseline: a translator (default CycleGAN) trained alone, then a "
                                  "segmentation network on [CT, pMRI] as two channels; both run at test time")
    config_section: ClassVar[type] = PMRIConfig
    translators: ClassVar[dict[str, str]] = translator_generators("cyclegan")
    recipe: ClassVar[TestTimeRecipe] = TestTimeRecipe("fuse", "seg_fused", translators["ct2mr"])

    @classmethod
    def build_segmentation_network(cls, config: TrainConfig) -> nn.Module:
        return build_segmenter(config, in_channels=2)


class CTPMRIWeighted(CTPMRI):
    """``ct-pmri-weighted``: the segmenter sees ``[(1 - alpha) CT, alpha pMRI]``, alpha from a ResNet18."""

    name: ClassVar[str] = "ct-pmri-weighted"
    description: ClassVar[str] = ("weighted CT+pMRI baseline (CT paper eq. 11): a ResNet18 predicts alpha from CT and "
                                  "pMRI; the segmenter sees (1 - alpha) CT and alpha pMRI, in training and at test time")
    config_section: ClassVar[type] = CTPMRIWeightedConfig

    @classmethod
    def build_segmentation_network(cls, config: TrainConfig) -> nn.Module:
        own = cls.section_of(config)
        alpha = ResNet18Alpha(in_channels=2, base_width=own.alpha_base_width, hidden=own.alpha_hidden)
        return WeightedFusionNet(alpha, build_segmenter(config, in_channels=2))

    def segmenter_step(self, batch: dict[str, Any]) -> dict[str, float]:
        logs = super().segmenter_step(batch)
        alpha = self.segmenter.last_alpha
        if alpha is not None:
            logs["alpha"] = float(alpha.float().mean())
        return logs


__all__ = ["CTPMRI", "CTPMRIWeighted", "CTPMRIWeightedConfig"]
