"""``cmedl``: cross-modality educed distillation (Jiang et al., CT paper Sec. II-C, CBCT paper).

Networks (checkpoint names): ``g_ct2mr``, ``g_mr2ct`` (CycleGAN ResNet generators), ``d_ct``,
``d_mr`` (PatchGAN discriminators), ``teacher_mr`` (MRI segmentation net S_MR) and ``student_ct``
(CT or CBCT segmentation net S_CT, same architecture as the teacher). A frozen VGG19 gives the
features of the contextual loss (not saved: its weights come from ``model.vgg_weights`` or from a
fixed-seed init).

One :meth:`CMEDL.training_step` on an unpaired batch (CT x_c with labels y_c, MRI x_m, with labels
y_m for the labelled part) follows the papers' Optimization section, alternating three updates
that share one forward pass:

1. **G step** (discriminators frozen): minimise
   ``lambda_adv L_adv + lambda_cycle L_cyc + lambda_CX L_CX + lambda_hint L_hint + lambda_seg L_seg^pM``
   w.r.t. the generators only, where L_adv = LSGAN/BCE generator loss of both directions,
   L_cyc = |G_MC(G_CM(x_c)) - x_c|_1 + |G_CM(G_MC(x_m)) - x_m|_1, L_CX = contextual loss between
   VGG features of pMRI G_CM(x_c) and a real MRI x_m, L_hint = hint loss between S_CT(x_c) and
   S_MR(pMRI) features, L_seg^pM = Dice(S_MR(pMRI), y_c). (The paper's ``lambda_seg (L_seg + L_seg^pM)``:
   of the segmentation terms only L_seg^pM depends on the generators, so only it is computed here.)
2. **D step**: minimise the discriminator loss on real images and *detached* fakes drawn from a
   CycleGAN image pool (size ``loss.pool_size``).
3. **S step** (teacher + student): minimise ``lambda_hint L_hint + L_seg^CT + L_seg^pM + L_seg^rM``
   w.r.t. the segmentation networks, with the pMRI detached from the generators. L_seg^rM (teacher
   on real labelled MRI, ``mr_has_label`` samples only) is off with ``loss.use_seg_real_mri=false``.
   With ``loss.hint_to_teacher=false`` the teacher features are detached in the hint term, so the
   hint only moves the student (one-way distillation); by default it is mutual.

Implementation note: the G and S gradients come from the same forward graph, each with
``torch.autograd.backward(..., inputs=<that group's parameters>)``. This is exactly the
alternating scheme (the S step sees the pMRI of the pre-update generator, detached), but saves a
second forward pass of the generators, the teacher and the student. G_CM runs once on the CT and
the fake CT together, and each discriminator once on its real and pooled fake images: with instance
norm (the CycleGAN networks here) every image's output does not depend on the rest of the batch, so
this equals separate calls and saves ~5 % of the step on CPU. Every term is logged: the G
step as ``adv_g``, ``cycle``, ``contextual``, ``hint``, ``seg_pmri``, ``loss_g``; the D step as
``d_mr``, ``d_ct``, ``loss_d``; the S step as ``seg_ct``, ``seg_pmri``, ``seg_rmri``, ``hint``,
``loss_s``. A switched-off term is neither computed nor logged.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
from torch import nn

from cmedl.methods.base import Method, parameters_of, set_requires_grad
from cmedl.methods.ct_only import build_student_net
from cmedl.methods.image_pool import ImagePool
from cmedl.training.config import TrainConfig


class CMEDL(Method):
    """Unpaired CycleGAN (+ contextual loss) with concurrently trained MRI teacher and CT student."""

    name: ClassVar[str] = "cmedl"
    batch_kind: ClassVar[str] = "unpaired"

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        from cmedl.losses import GANLoss
        from cmedl.nets import PatchDiscriminator, ResnetGenerator, check_hint_compatible

        m, lc, o = config.model, config.loss, config.optim
        self.networks["student_ct"] = build_student_net(config)
        self.networks["teacher_mr"] = build_student_net(config)
        self.networks["g_ct2mr"] = ResnetGenerator(1, 1, m.gen_base_width, m.gen_n_blocks)
        self.networks["g_mr2ct"] = ResnetGenerator(1, 1, m.gen_base_width, m.gen_n_blocks)
        self.networks["d_ct"] = PatchDiscriminator(1, m.disc_base_width, m.disc_n_layers)
        self.networks["d_mr"] = PatchDiscriminator(1, m.disc_base_width, m.disc_n_layers)
        size = min(config.data.patch_size, 64)
        check_hint_compatible(self.networks["teacher_mr"], self.networks["student_ct"], (1, 1, size, size))
        self._finish_networks()

        self.gan_loss = GANLoss(lc.gan_mode).to(self.device)
        self.contextual: nn.Module | None = None
        if lc.use_contextual:
            from cmedl.losses import ContextualLoss
            from cmedl.nets import VGG19Features

            vgg = VGG19Features(weights_path=m.vgg_weights, layers=tuple(lc.contextual_layers))
            vgg.to(self.device, memory_format=self.memory_format).eval()
            set_requires_grad([vgg], False)
            self.contextual = ContextualLoss(
                vgg, layers=tuple(lc.contextual_layers), bandwidth=lc.contextual_bandwidth,
                max_positions=lc.contextual_max_positions,
            ).to(self.device)

        def adam(nets: list[str], lr: float, betas: list[float]) -> torch.optim.Optimizer:
            return self.adam(parameters_of(self.networks[n] for n in nets), lr, betas)

        self.optimizers["g"] = adam(["g_ct2mr", "g_mr2ct"], o.lr_translation, o.betas_translation)
        self.optimizers["d"] = adam(["d_ct", "d_mr"], o.lr_translation, o.betas_translation)
        self.optimizers["s"] = adam(["student_ct", "teacher_mr"], o.lr_segmentation, o.betas_segmentation)
        seed = config.training.seed
        self.pools = {"mr": ImagePool(lc.pool_size, seed + 101), "ct": ImagePool(lc.pool_size, seed + 202)}

    # ------------------------------------------------------------------ groups
    @property
    def generators(self) -> list[nn.Module]:
        return [self.networks["g_ct2mr"], self.networks["g_mr2ct"]]

    @property
    def discriminators(self) -> list[nn.Module]:
        return [self.networks["d_ct"], self.networks["d_mr"]]

    @property
    def segmenters(self) -> list[nn.Module]:
        return [self.networks["student_ct"], self.networks["teacher_mr"]]

    # ------------------------------------------------------------------ step
    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One alternating CMEDL update (G, S and D steps sharing one forward pass); returns every term."""
        fwd = self.forward_losses(batch)
        self.generator_step(fwd)
        self.segmentation_step(fwd)
        logs = self.discriminator_step(fwd)
        self.global_step += 1
        for k, v in itertools.chain(fwd["g_terms"].items(), fwd["s_terms"].items()):
            logs[k] = float(v.detach())
        logs["loss_g"] = float(fwd["loss_g"].detach())
        logs["loss_s"] = float(fwd["loss_s"].detach())
        return logs

    def forward_losses(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Shared forward pass with the discriminators frozen; returns the G and S loss terms.

        Keys: ``ct``, ``mr``, ``fake_mr`` (pMRI), ``fake_ct`` (or None), ``g_terms``/``s_terms``
        (unweighted terms), ``loss_g``, ``loss_s`` (weighted totals of the G and S steps).
        """
        from cmedl.losses import cycle_loss, hint_loss

        lc = self.config.loss
        ct, ct_label = self.to_device(batch["ct"]), self.to_device(batch["ct_label"])
        mr = self.to_device(batch["mr"])
        mr_label = self.to_device(batch["mr_label"]) if "mr_label" in batch else None
        has = batch.get("mr_has_label")
        has_cpu = torch.as_tensor(has, dtype=torch.bool).reshape(-1) if has is not None else None
        any_labelled_mr = has_cpu is not None and bool(has_cpu.any()) and mr_label is not None
        g_ct2mr, g_mr2ct = self.networks["g_ct2mr"], self.networks["g_mr2ct"]
        d_ct, d_mr = self.networks["d_ct"], self.networks["d_mr"]
        student, teacher = self.networks["student_ct"], self.networks["teacher_mr"]
        need_fake_ct = lc.use_adversarial or lc.use_cycle

        set_requires_grad(self.discriminators, False)  # D frozen: the G step gives it no gradient
        g_terms: dict[str, torch.Tensor] = {}
        s_terms: dict[str, torch.Tensor] = {}
        with self.autocast():
            fake_ct = g_mr2ct(mr) if need_fake_ct else None
            if lc.use_cycle:
                # G_CM runs once on CT and on the fake CT together: instance norm makes every image's
                # output independent of the batch, so this equals two calls (fewer, larger convolutions)
                both = g_ct2mr(torch.cat([ct, fake_ct.to(ct.dtype)]))
                fake_mr, rec_mr = both[: ct.shape[0]], both[ct.shape[0]:]  # pMRI, reconstructed MRI
            else:
                fake_mr = g_ct2mr(ct)  # pMRI
            if lc.use_adversarial:
                g_terms["adv_g"] = (
                    self.gan_loss(d_mr(fake_mr).float(), True) + self.gan_loss(d_ct(fake_ct).float(), True)
                )
            if lc.use_cycle:
                rec_ct = g_mr2ct(fake_mr)
                g_terms["cycle"] = cycle_loss(rec_ct.float(), ct) + cycle_loss(rec_mr.float(), mr)
            if lc.use_contextual and self.contextual is not None:
                k = lc.contextual_max_images or fake_mr.shape[0]
                g_terms["contextual"] = self.contextual(fake_mr[:k].float(), mr[:k])
            s_logits, s_feats = student(ct, return_features=True)
            t_logits_p, t_feats_p = teacher(fake_mr, return_features=True)
            s_terms["seg_ct"] = self.seg_loss(s_logits, ct_label)
            if lc.use_seg_pmri:
                seg_pm = self.seg_loss(t_logits_p, ct_label)
                g_terms["seg_pmri"] = seg_pm
                s_terms["seg_pmri"] = seg_pm
            if lc.use_hint:
                s_f = [f.float() for f in s_feats]
                t_f = [f.float() for f in t_feats_p]
                hint = hint_loss(s_f, t_f)
                g_terms["hint"] = hint
                s_terms["hint"] = hint if lc.hint_to_teacher else hint_loss(s_f, t_f, detach_teacher=True)
            if lc.use_seg_real_mri and any_labelled_mr:
                t_logits_r = teacher(mr)
                s_terms["seg_rmri"] = self.seg_loss(t_logits_r, mr_label, sample_mask=has_cpu.to(self.device))
        g_w = {"adv_g": lc.lambda_adv, "cycle": lc.lambda_cycle, "contextual": lc.lambda_contextual,
               "hint": lc.lambda_hint, "seg_pmri": lc.lambda_seg}
        s_w = {"seg_ct": 1.0, "seg_pmri": 1.0, "seg_rmri": 1.0, "hint": lc.lambda_hint}
        zero = torch.zeros((), device=self.device)
        return {
            "ct": ct, "mr": mr, "fake_mr": fake_mr, "fake_ct": fake_ct, "g_terms": g_terms, "s_terms": s_terms,
            "loss_g": sum((g_w[k] * v for k, v in g_terms.items()), zero),
            "loss_s": sum((s_w[k] * v for k, v in s_terms.items()), zero),
        }

    def generator_step(self, fwd: dict[str, Any]) -> None:
        """G step: gradients of ``loss_g`` into the two generators only (graph kept for the S step)."""
        opt = self.optimizers["g"]
        opt.zero_grad(set_to_none=True)
        if fwd["loss_g"].requires_grad:
            torch.autograd.backward(fwd["loss_g"], inputs=parameters_of(self.generators), retain_graph=True)
            opt.step()

    def segmentation_step(self, fwd: dict[str, Any]) -> None:
        """S step: gradients of ``loss_s`` into teacher + student only (the pMRI acts as a constant)."""
        opt = self.optimizers["s"]
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(fwd["loss_s"], inputs=parameters_of(self.segmenters))
        opt.step()

    def discriminator_step(self, fwd: dict[str, Any]) -> dict[str, float]:
        """D step on real images and detached fakes from the image pools; returns ``d_mr``, ``d_ct``, ``loss_d``."""
        set_requires_grad(self.discriminators, True)
        if not self.config.loss.use_adversarial:
            return {}
        d_ct, d_mr = self.networks["d_ct"], self.networks["d_mr"]
        pooled_mr = self.pools["mr"].query(fwd["fake_mr"].detach())
        pooled_ct = self.pools["ct"].query(fwd["fake_ct"].detach())
        opt = self.optimizers["d"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            # real and pooled fake images in one call per discriminator (instance norm: batch-independent)
            def real_fake(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
                out = d(torch.cat([real, fake.to(real.dtype)])).float()
                n = real.shape[0]
                return 0.5 * (self.gan_loss(out[:n], True) + self.gan_loss(out[n:], False))

            d_loss_mr = real_fake(d_mr, fwd["mr"], pooled_mr)
            d_loss_ct = real_fake(d_ct, fwd["ct"], pooled_ct)
        loss_d = d_loss_mr + d_loss_ct
        loss_d.backward()
        opt.step()
        return {"d_mr": float(d_loss_mr.detach()), "d_ct": float(d_loss_ct.detach()), "loss_d": float(loss_d.detach())}

    # ------------------------------------------------------------------ visuals / state
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """CT, pMRI, reconstructed CT, expert and predicted masks (eval mode)."""
        image = self.to_device(batch["image"])
        with self.evaluating(), self.autocast():
            pred = (self.student(image).float() > 0).float()
            fake_mr = self.networks["g_ct2mr"](image).float()
            rec_ct = self.networks["g_mr2ct"](fake_mr).float()
        return {
            "CT": image.cpu(), "pMRI": fake_mr.cpu(), "rec. CT": rec_ct.cpu(),
            "expert": batch["label"].float().cpu(), "predicted": pred.cpu(),
        }

    def extra_state(self) -> dict[str, Any]:
        return {"pools": {k: p.state_dict() for k, p in self.pools.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for k, p in self.pools.items():
            if "pools" in state and k in state["pools"]:
                p.load_state_dict(state["pools"][k], self.device)
