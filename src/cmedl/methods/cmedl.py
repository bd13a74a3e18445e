"""``cmedl``: cross-modality educed distillation (Jiang et al., CT paper Sec. II-C, CBCT paper).

Networks (checkpoint names): the translator's (``cmedl.translator``; CycleGAN: ``g_ct2mr``,
``g_mr2ct``, ``d_ct``, ``d_mr``), ``teacher_mr`` (MRI segmentation net S_MR) and ``student_ct`` (CT
or CBCT segmentation net S_CT, same architecture as the teacher). Only the student runs at test time.

One :meth:`CMEDL.training_step` on an unpaired batch (CT x_c with labels y_c, MRI x_m of other
patients, with labels y_m for the labelled part) follows the papers' Optimization section,
alternating three updates that share one forward pass:

1. **G step** (discriminators frozen): minimise the translator's terms (CycleGAN:
   ``lambda_adv L_adv + lambda_cycle L_cyc + lambda_CX L_CX``) ``+ lambda_hint L_hint + lambda_seg L_seg^pM``
   w.r.t. the generators only, where L_hint = hint loss between S_CT(x_c) and S_MR(pMRI) features and
   L_seg^pM = Dice(S_MR(pMRI), y_c). (The paper's ``lambda_seg (L_seg + L_seg^pM)``: of the
   segmentation terms only L_seg^pM depends on the generators, so only it is computed here.)
2. **S step** (teacher + student): minimise ``lambda_hint L_hint + L_seg^CT + L_seg^pM + L_seg^rM``
   w.r.t. the segmentation networks, with the pMRI detached from the generators. L_seg^rM (teacher
   on real labelled MRI, ``mr_has_label`` samples only) is off with ``cmedl.use_seg_real_mri=false``.
   With ``cmedl.hint_to_teacher=false`` the teacher features are detached in the hint term, so the
   hint only moves the student (one-way distillation); by default it is mutual.
3. **D step**: the translator's discriminators on real images and detached fakes.

Batch norm of the teacher: its running statistics (what the teacher uses at test time, in the
``pmri-cmedl`` recipe teacher(G(CT))) are updated on the pMRI forward only. On the real MRI it
normalises with the batch statistics as usual in training, but leaves the running statistics
untouched (:func:`cmedl.methods.base.batch_statistics_only`). Checkpoints written since carry
``method_state["teacher_bn_pmri_only"] = 1``; before, the statistics mixed pMRI and real MRI.

Implementation note: the G and S gradients come from the same forward graph, each with
``torch.autograd.backward(..., inputs=<that group's parameters>)``. This is exactly the
alternating scheme (the S step sees the pMRI of the pre-update generator, detached), but saves a
second forward pass of the generators, the teacher and the student. Every term is logged: the G
step's as the translator names them (``adv_g``, ``cycle``, ``contextual``) plus ``hint``,
``seg_pmri``, ``loss_g``; the S step as ``seg_ct``, ``seg_pmri``, ``seg_rmri``, ``hint``,
``loss_s``; the D step as ``d_mr``, ``d_ct``, ``loss_d``. A switched-off term is neither computed
nor logged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cmedl.config import TrainConfig
from cmedl.config.schema import check_choice, check_positive
from cmedl.data.batches import BatchKind
from cmedl.losses import hint_loss
from cmedl.methods.base import Method, any_rank, batch_statistics_only, build_segmenter, parameters_of
from cmedl.methods.translators import TRANSLATORS, get_translator
from cmedl.nets import HINT_OPTIONS, check_hint_compatible


#: ``method_state`` key marking checkpoints whose teacher BN running statistics come from pMRI only
TEACHER_BN_PMRI_ONLY = "teacher_bn_pmri_only"


@dataclass
class CMEDLConfig:
    """CMEDL's own settings (papers: lambda_hint 1, lambda_seg 5, hint on the last two layers)."""

    #: the unpaired translator trained inside CMEDL (its settings: the section of that name)
    translator: str = "cyclegan"
    #: which features the hint loss ties: ``high`` (last two layers), ``mid``, ``low``
    hint_layers: str = "high"
    lambda_hint: float = 1.0
    lambda_seg: float = 5.0
    #: Table V ablations: switch a term off entirely (it is then neither computed nor logged)
    use_hint: bool = True
    #: teacher segmentation loss on pMRI with the CT labels (L_seg^pM)
    use_seg_pmri: bool = True
    #: teacher segmentation loss on real labelled MRI (L_seg^rM); off = teacher without labelled MRI
    use_seg_real_mri: bool = True
    #: hint gradient also flows into the teacher (mutual learning, default) or only into the student
    hint_to_teacher: bool = True

    def __post_init__(self) -> None:
        check_choice("translator", self.translator, TRANSLATORS)
        check_choice("hint_layers", self.hint_layers, HINT_OPTIONS)
        check_positive("lambda_hint", self.lambda_hint, allow_zero=True)
        check_positive("lambda_seg", self.lambda_seg, allow_zero=True)


class CMEDL(Method):
    """Unpaired translator with a concurrently trained MRI teacher and CT student tied by a hint loss."""

    name: ClassVar[str] = "cmedl"
    description: ClassVar[str] = ("unpaired CT->MRI translator + MRI teacher and CT student trained together, "
                                  "tied by a hint loss; the student alone runs at test time")
    batch_kind: ClassVar[BatchKind] = BatchKind.UNPAIRED_SLICES
    config_section: ClassVar[type] = CMEDLConfig
    translators: ClassVar[dict[str, str]] = {"ct2mr": "g_ct2mr", "mr2ct": "g_mr2ct"}

    @classmethod
    def section_of(cls, config: TrainConfig) -> Any:
        """The ``cmedl`` section: also that of the variants trained like CMEDL (``pmri-cmedl``, ``cmedl-oracle``)."""
        return config.section(CMEDL.name)

    @classmethod
    def config_sections(cls, config: TrainConfig) -> tuple[str, ...]:
        return (CMEDL.name, cls.section_of(config).translator)

    @classmethod
    def build_networks(cls, config: TrainConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        own = cls.section_of(config)
        nets: dict[str, nn.Module] = {}
        for name in ("student_ct", "teacher_mr"):
            if names is None or name in names:
                nets[name] = build_segmenter(config, own.hint_layers)
        translator = get_translator(own.translator)
        nets.update(translator.build_networks(config.section(own.translator), names))
        return nets

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.own: CMEDLConfig = self.section_of(config)
        size = min(config.data.patch_size, 64)
        check_hint_compatible(self.networks["teacher_mr"], self.networks["student_ct"], (1, 1, size, size))
        self.translator = get_translator(self.own.translator)(self, config.section(self.own.translator))
        o = config.optim
        self.optimizers["s"] = self.adam(parameters_of(self.segmenters), o.lr_segmentation, o.betas_segmentation)

    @property
    def segmenters(self) -> list[nn.Module]:
        return [self.networks["student_ct"], self.networks["teacher_mr"]]

    # ------------------------------------------------------------------ step
    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One alternating CMEDL update (G, S and D steps sharing one forward pass); returns every term."""
        fwd = self.forward_losses(batch)
        self.translator.generator_step(fwd["loss_g"])
        self.segmentation_step(fwd)
        logs = self.translator.discriminator_step(fwd["translation"], fwd["ct"], fwd["mr"])
        self.global_step += 1
        for k, v in itertools.chain(fwd["g_terms"].items(), fwd["s_terms"].items()):
            logs[k] = float(v.detach())
        logs["loss_g"] = float(fwd["loss_g"].detach())
        logs["loss_s"] = float(fwd["loss_s"].detach())
        return logs

    def forward_losses(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Shared forward pass with the discriminators frozen; returns the G and S loss terms.

        Keys: ``ct``, ``mr``, ``translation`` (the translator's forward: pMRI, its terms),
        ``g_terms``/``s_terms`` (unweighted terms), ``loss_g``, ``loss_s`` (weighted totals).
        """
        own = self.own
        ct, ct_label = self.to_device(batch["ct"]), self.to_device(batch["ct_label"])
        mr = self.to_device(batch["mr"])
        mr_label = self.to_device(batch["mr_label"]) if "mr_label" in batch else None
        has = batch.get("mr_has_label")
        has_cpu = torch.as_tensor(has, dtype=torch.bool).reshape(-1) if has is not None else None
        # decided over every rank of a data-parallel run: all ranks then run the same losses (collectives)
        any_labelled_mr = mr_label is not None and has_cpu is not None and any_rank(bool(has_cpu.any()), self.device)
        student, teacher = self.networks["student_ct"], self.networks["teacher_mr"]
        s_terms: dict[str, torch.Tensor] = {}
        with self.autocast():
            translation = self.translator.forward(ct, mr)
            g_terms = dict(translation.terms)
            s_logits, s_feats = student(ct, return_features=True)
            t_logits_p, t_feats_p = teacher(self.teacher_input(batch, translation), return_features=True)
            # the G step gets the hint and L_seg^pM gradients only when the teacher reads the generator's pMRI
            via_g = self.teacher_reads_pmri
            s_terms["seg_ct"] = self.seg_loss(s_logits, ct_label)
            if own.use_seg_pmri:
                s_terms["seg_pmri"] = self.seg_loss(t_logits_p, ct_label)
                if via_g:
                    g_terms["seg_pmri"] = s_terms["seg_pmri"]
            if own.use_hint:
                s_f, t_f = [f.float() for f in s_feats], [f.float() for f in t_feats_p]
                hint = hint_loss(s_f, t_f)
                if via_g:
                    g_terms["hint"] = hint
                s_terms["hint"] = hint if own.hint_to_teacher else hint_loss(s_f, t_f, detach_teacher=True)
            if own.use_seg_real_mri and any_labelled_mr:
                with batch_statistics_only(teacher):  # running statistics: pMRI only (see the module docstring)
                    t_logits_r = teacher(mr)
                s_terms["seg_rmri"] = self.seg_loss(t_logits_r, mr_label, sample_mask=has_cpu.to(self.device))
        g_w = {**translation.weights, "hint": own.lambda_hint, "seg_pmri": own.lambda_seg}
        s_w = {"seg_ct": 1.0, "seg_pmri": 1.0, "seg_rmri": 1.0, "hint": own.lambda_hint}
        zero = torch.zeros((), device=self.device)
        return {
            "ct": ct, "mr": mr, "translation": translation, "g_terms": g_terms, "s_terms": s_terms,
            "loss_g": sum((g_w[k] * v for k, v in g_terms.items()), zero),
            "loss_s": sum((s_w[k] * v for k, v in s_terms.items()), zero),
        }

    #: whether the teacher's input is the generator's pMRI (so the G step gets the hint and L_seg^pM terms)
    teacher_reads_pmri: ClassVar[bool] = True

    def teacher_input(self, batch: dict[str, Any], translation: Any) -> torch.Tensor:
        """What the teacher segments beside the student's CT: the pMRI G(CT) (``cmedl-oracle``: the
        patient's own MRI)."""
        return translation.pseudo_mr

    def segmentation_step(self, fwd: dict[str, Any]) -> None:
        """S step: gradients of ``loss_s`` into teacher + student only (the pMRI acts as a constant)."""
        opt = self.optimizers["s"]
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(fwd["loss_s"], inputs=parameters_of(self.segmenters))
        opt.step()

    # ------------------------------------------------------------------ visuals / state
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """CT, pMRI, reconstructed CT, expert and predicted masks (eval mode)."""
        image = self.to_device(batch["image"])
        with self.evaluating(), self.autocast():
            pred = (self.student(image).float() > 0).float()
            translated = self.translator.visuals(image)
        return {"CT": image.cpu(), **translated, "expert": batch["label"].float().cpu(), "predicted": pred.cpu()}

    def extra_state(self) -> dict[str, Any]:
        # marks checkpoints whose teacher BN running statistics come from pMRI only (see checkpoint_as)
        return {**self.translator.extra_state(), TEACHER_BN_PMRI_ONLY: 1}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.translator.load_extra_state({k: v for k, v in state.items() if k != TEACHER_BN_PMRI_ONLY})
