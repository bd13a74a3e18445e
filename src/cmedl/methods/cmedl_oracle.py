"""``cmedl-oracle``: CMEDL whose teacher reads the CT patient's own MRI instead of pMRI (a control arm).

The phantom's paired-oracle cohorts (``cmedl data phantom --paired-oracle``) render each CT patient's
anatomy as MRI on the CT grid. This method trains exactly as ``cmedl`` (same networks, the ``cmedl``
and translator sections, same steps, the student alone at test time), except that the MRI teacher
segments the patch of the patient's own MRI that matches the CT patch, voxel for voxel
(``BatchKind.PAIRED_ORACLE_SLICES``), where CMEDL feeds it G(CT). The hint then ties the student to a
teacher that sees the real MRI contrast, which bounds what a perfect CT->MRI translator could give:
it answers "is a weak CMEDL result the translator's fault or the distillation's?" (the powered study,
``benchmarks/phantom_study.py``). No clinical cohort has such pairs; it is a phantom control only.

The translator still trains on unpaired MRI (same cost and logs as CMEDL), but its generator gets no
hint or L_seg^pM gradient, since the teacher no longer reads its output.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cmedl.data.batches import BatchKind
from cmedl.methods.cmedl import CMEDL


class CMEDLOracle(CMEDL):
    """CMEDL with the teacher on the patient's own (paired) MRI: an upper-bound control arm."""

    name: ClassVar[str] = "cmedl-oracle"
    description: ClassVar[str] = ("control arm: CMEDL whose teacher reads the CT patient's own MRI on the CT grid "
                                  "instead of pMRI (phantom cohorts made with --paired-oracle)")
    batch_kind: ClassVar[BatchKind] = BatchKind.PAIRED_ORACLE_SLICES
    #: reads the ``cmedl`` section (and its translator's): no section of its own
    config_section: ClassVar[type | None] = None
    teacher_reads_pmri: ClassVar[bool] = False

    def teacher_input(self, batch: dict[str, Any], translation: Any) -> torch.Tensor:
        if "ct_paired_mr" not in batch:
            raise KeyError("cmedl-oracle needs batches with 'ct_paired_mr' (BatchKind.PAIRED_ORACLE_SLICES)")
        return self.to_device(batch["ct_paired_mr"])


__all__ = ["CMEDLOracle"]
