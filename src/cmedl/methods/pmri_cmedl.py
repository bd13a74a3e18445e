"""``pmri-cmedl``: CMEDL's generator and teacher at test time, CT -> pMRI -> teacher (CT paper Table III,
CBCT paper Tables 1-2: "the MR network is used for segmentation instead of the default CT").

It trains exactly as ``cmedl`` (same networks, same ``cmedl`` and translator sections, same steps), so
every ``cmedl`` checkpoint holds what it runs: :func:`cmedl.methods.checkpoint_as.checkpoint_as_method`
turns a ``cmedl`` checkpoint into a ``pmri-cmedl`` one (``cmedl segment --recipe pmri-cmedl``). Trained
under its own name, its validation (and so ``best.pt``) measures the teacher on pMRI instead of the
student on CT. The teacher's batch-norm running statistics come from pMRI only (see
:mod:`cmedl.methods.cmedl`), so at test time it normalises pMRI as in training.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from torch import nn

from cmedl.config import TrainConfig
from cmedl.errors import ConfigError
from cmedl.methods.cmedl import CMEDL, TEACHER_BN_PMRI_ONLY
from cmedl.methods.recipe import TestTimeModel, TestTimeRecipe
from cmedl.methods.translators import get_translator

log = logging.getLogger(__name__)


class PMRICMEDL(CMEDL):
    """CMEDL trained as usual; at test time (and in validation) ``teacher_mr(g_ct2mr(CT))``."""

    name: ClassVar[str] = "pmri-cmedl"
    description: ClassVar[str] = ("CMEDL trained as usual; its generator and MRI teacher run at test time "
                                  "(CT -> pMRI -> teacher); also runs the networks of any cmedl checkpoint")
    #: reads the ``cmedl`` section (and its translator's): no section of its own
    config_section: ClassVar[type | None] = None
    recipe: ClassVar[TestTimeRecipe] = TestTimeRecipe("translate-then-segment", "teacher_mr", "g_ct2mr")
    runs_checkpoints_of: ClassVar[tuple[str, ...]] = ("cmedl",)

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        super().check_config(config)
        translator = cls.section_of(config).translator
        gen = get_translator(translator).generators.get("ct2mr")
        if gen != cls.recipe.translator:
            raise ConfigError(f"cmedl.translator: '{translator}' stores its CT->MR generator as '{gen}', but "
                              f"method '{cls.name}' runs '{cls.recipe.translator}' at test time")

    @classmethod
    def check_reused_checkpoint(cls, ckpt: dict[str, Any], source: Any = None) -> None:
        if not (ckpt.get("method_state") or {}).get(TEACHER_BN_PMRI_ONLY):
            log.warning("%s: this cmedl checkpoint was trained before the teacher's batch-norm statistics came from "
                        "pMRI only (they mix pMRI and real MRI); %s results may be off: retrain for this baseline",
                        source or "checkpoint", cls.name)

    @property
    def student(self) -> nn.Module:
        """The test-time composition teacher(G(CT)), validated every epoch."""
        return TestTimeModel(self.recipe, self.networks["teacher_mr"], self.networks["g_ct2mr"])


__all__ = ["PMRICMEDL"]
