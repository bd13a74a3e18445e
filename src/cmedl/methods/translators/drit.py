"""``drit``: the VAE translator of the CMEDL CT paper (Sec. II-A-2b), after DRIT (Lee et al. 2018).

Networks (checkpoint names): ``g_ct2mr`` (CT content encoder + MR generator), ``g_mr2ct`` (MR content
encoder + CT generator), whose content encoders share their last residual block (one module in
both; :mod:`cmedl.nets.drit`), ``e_attr_ct``, ``e_attr_mr`` (attribute/style encoders), ``d_ct``,
``d_mr`` (70x70 PatchGAN image discriminators) and ``d_content`` (content discriminator).
``g_ct2mr`` alone is the test-time translator: CT content rendered with the zero attribute vector
(the prior mean), so ``cmedl translate`` and translate-then-segment recipes are deterministic.

Notation: content codes c_c = E_c(x_c), c_m = E_m(x_m); attributes z_c, z_m sampled from the
attribute encoders' N(mu, exp(logvar)) with the reparameterisation trick; z ~ N(0, I) a random
attribute; G_c, G_m the CT and MR generators. One forward (discriminators frozen) gives the
pseudo-MRI ``v = G_m(c_c, z_m)`` (the CT's content in the style of the batch's real MRI: the image
CMEDL's teacher, hint and L_seg^pM see; differentiable w.r.t. the CT content encoder, the MR
generator and the MR attribute encoder) and these unweighted terms:

- ``adv_g`` (eq. 10, weight ``lambda_adv``): for each domain, 0.5 GAN(D(G(c_other, z_encoded))) +
  0.5 GAN(D(G(c_other, z_random))): one image discriminator per domain sees fakes rendered with an
  encoded and with a random attribute, with the paper's 0.5/0.5 weights (DRIT's code uses a second
  discriminator for the random branch instead).
- ``content_adv`` (eq. 7, ``lambda_content_adv``): the encoders' side of the content game (below).
- ``kl`` and ``vae_recon`` (eq. 9, ``lambda_vae * vae_kl_weight`` and ``lambda_vae``): KL(N(mu,
  sigma^2) || N(0, I)) of both attribute posteriors (summed over the attribute, mean over the batch)
  and the L1 self-reconstructions |G_c(c_c, z_c) - x_c| + |G_m(c_m, z_m) - x_m|.
- ``cross_cycle`` (eq. 8, ``lambda_cc``): with u = G_c(c_m, z_c) and v = G_m(c_c, z_m), the second
  translation x_c' = G_c(E_m(v), z(u)), x_m' = G_m(E_c(u), z(v)) must give the inputs back (L1).
- ``latent_reg`` (``lambda_lr``): |mu(E_attr(G(c, z))) - z|_1 for a random z, both domains. As in
  DRIT's code the attribute encoder's weights get no gradient from it (they are read detached), only
  the generator and content encoder, which must keep z recoverable from the image.

Choices where the paper's equations and DRIT's public code differ (DRIT issues #10, #17, #56):

- Content adversarial loss (eq. 7). Read literally, with both brackets in one min-max, eq. 7 is
  degenerate (DRIT issue #17): the discriminator's optimum outputs 1/2 everywhere and the encoders
  get no signal. We use its first bracket as the discriminator's objective (D_c labels CT content 1
  and MRI content 0: BCE on detached codes, DRIT's code) and, for the encoders, the form each code
  takes in eq. 7 (log D + log(1 - D), i.e. BCE towards 1/2 for both domains: "confusion", DRIT's
  code, default) or, with ``content_adv_mode: flipped``, the second bracket read as swapped labels.
  DRIT's code trains the content discriminator at lr/2.5 with gradient-norm clipping at 5: kept
  (``content_disc_lr``).
- KL (eq. 9): the true KL divergence of the reparameterised posterior against N(0, I), inside
  lambda_vae as eq. 9 writes it. DRIT's code instead multiplies a summed KL by 0.01 and adds an L2
  penalty on the *content* codes that neither paper has (not used); ``vae_kl_weight`` rescales the KL
  inside L_VAE if the paper's weight proves too strong.
- Eq. 8 is written as a content-code distance but named L_cc with DRIT's cross-cycle weight 10; we
  use DRIT's image-level cross-cycle loss, which reaches the inputs *through* the content codes of the
  translated images (a plain L1 between codes could be lowered by shrinking the codes).
- Eq. 9's reconstruction is read as DRIT's self-reconstruction G(E_c(x), E_attr(x)) (the symbols in
  the paper repeat eq. 8's cross-domain ones).
- No image pool (neither DRIT nor its paper uses one); the batch is not split into "encoded" and
  "random" halves as in DRIT's code: every image gets both branches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cmedl.config.schema import check_choice, check_positive
from cmedl.config.sections import check_betas
from cmedl.losses import GANLoss, gan_loss
from cmedl.methods.translators.base import Translator, TranslatorForward
from cmedl.nets import PatchDiscriminator
from cmedl.nets.base import crop_to, pad_to_multiple
from cmedl.nets.drit import AttributeEncoder, ContentDiscriminator, build_drit_pair

if TYPE_CHECKING:
    from cmedl.methods.base import Method

GAN_MODES = ("lsgan", "bce")
CONTENT_ADV_MODES = ("confusion", "flipped")


@dataclass
class DRITConfig:
    """DRIT translator (CT paper: generators with 6 residual blocks; content adversarial 1,
    lambda_vae 10, lambda_cc 10, lambda_lr 1; Adam 1e-4, betas 0.5/0.999)."""

    #: content encoders / generators: base width w (codes have 4w channels), generator residual blocks
    gen_base_width: int = 64
    gen_n_blocks: int = 6
    #: residual blocks of each content encoder: private per domain, then shared by both (DRIT: 3 + 1)
    content_private_blocks: int = 3
    content_shared_blocks: int = 1
    #: attribute (style) vector length, attribute encoder width and residual down blocks (DRIT: 8, 64, 3)
    attr_dim: int = 8
    attr_base_width: int = 64
    attr_n_blocks: int = 3
    #: image PatchGAN discriminators (70x70: 64, 3); content discriminator stride-2 layers
    disc_base_width: int = 64
    disc_n_layers: int = 3
    content_disc_layers: int = 3
    lambda_adv: float = 1.0
    lambda_content_adv: float = 1.0
    lambda_vae: float = 10.0
    #: weight of the KL term inside L_VAE (eq. 9: 1)
    vae_kl_weight: float = 1.0
    lambda_cc: float = 10.0
    lambda_lr: float = 1.0
    #: switches (a switched-off term, or one whose weight is 0, is neither computed nor logged)
    use_adversarial: bool = True
    use_content_adversarial: bool = True
    use_vae: bool = True
    use_cross_cycle: bool = True
    use_latent_regression: bool = True
    #: image adversarial loss form (eq. 10 and DRIT: ``bce``; ``lsgan``)
    gan_mode: str = "bce"
    #: encoders' content adversarial objective: ``confusion`` (D_c -> 1/2) or ``flipped`` (swapped labels)
    content_adv_mode: str = "confusion"
    #: Adam of generators + encoders and of the image discriminators; the content discriminator's rate
    lr: float = 1e-4
    content_disc_lr: float = 4e-5
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])

    def __post_init__(self) -> None:
        for key in ("gen_base_width", "attr_dim", "attr_base_width", "disc_base_width", "disc_n_layers", "lr",
                    "content_disc_lr"):
            check_positive(key, getattr(self, key))
        for key in ("gen_n_blocks", "content_private_blocks", "content_shared_blocks", "attr_n_blocks",
                    "content_disc_layers", "lambda_adv", "lambda_content_adv", "lambda_vae", "vae_kl_weight",
                    "lambda_cc", "lambda_lr"):
            check_positive(key, getattr(self, key), allow_zero=True)
        check_choice("gan_mode", self.gan_mode, GAN_MODES)
        check_choice("content_adv_mode", self.content_adv_mode, CONTENT_ADV_MODES)
        check_betas("betas", self.betas)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A sample of N(mu, exp(logvar)) differentiable w.r.t. both (the reparameterisation trick)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the code, mean over the batch (float32)."""
    mu, logvar = mu.float(), logvar.float()
    return (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)).mean()


def unique_parameters(nets: Sequence[nn.Module]) -> list[nn.Parameter]:
    """Parameters of ``nets`` in order, each once (the two directions share modules)."""
    return list({id(p): p for n in nets for p in n.parameters()}.values())


class DRITTranslator(Translator):
    """DRIT (content/attribute disentanglement, VAE attribute encoders) for a method that owns the networks."""

    name: ClassVar[str] = "drit"
    description: ClassVar[str] = "DRIT: shared-content / per-domain attribute VAE translator (CT paper Sec. II-A-2b)"
    config_section: ClassVar[type] = DRITConfig
    generators: ClassVar[dict[str, str]] = {"ct2mr": "g_ct2mr", "mr2ct": "g_mr2ct"}

    @classmethod
    def build_networks(cls, section: DRITConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        s = section
        nets: dict[str, nn.Module] = {}
        wanted = [d for d, n in cls.generators.items() if names is None or n in names]
        if wanted:
            pair = build_drit_pair(s.gen_base_width, s.gen_n_blocks, s.attr_dim, s.content_private_blocks,
                                   s.content_shared_blocks, names=tuple(wanted))
            nets.update({cls.generators[d]: net for d, net in pair.items()})
        makers = {
            "e_attr_ct": lambda: AttributeEncoder(s.attr_base_width, s.attr_dim, s.attr_n_blocks),
            "e_attr_mr": lambda: AttributeEncoder(s.attr_base_width, s.attr_dim, s.attr_n_blocks),
            "d_ct": lambda: PatchDiscriminator(1, s.disc_base_width, s.disc_n_layers),
            "d_mr": lambda: PatchDiscriminator(1, s.disc_base_width, s.disc_n_layers),
            "d_content": lambda: ContentDiscriminator(4 * s.gen_base_width, s.content_disc_layers),
        }
        nets.update({k: make() for k, make in makers.items() if names is None or k in names})
        return nets

    def __init__(self, method: Method, section: DRITConfig) -> None:
        self.method = method
        self.cfg = c = section
        nets = method.networks
        self.g_ct2mr, self.g_mr2ct = nets["g_ct2mr"], nets["g_mr2ct"]
        self.e_attr_ct, self.e_attr_mr = nets["e_attr_ct"], nets["e_attr_mr"]
        self.d_ct, self.d_mr, self.d_content = nets["d_ct"], nets["d_mr"], nets["d_content"]
        self.gan_loss = GANLoss(c.gan_mode).to(method.device)
        self.on = {
            "adv_g": c.use_adversarial and c.lambda_adv > 0,
            "content_adv": c.use_content_adversarial and c.lambda_content_adv > 0,
            "vae_recon": c.use_vae and c.lambda_vae > 0,
            "kl": c.use_vae and c.lambda_vae > 0 and c.vae_kl_weight > 0,
            "cross_cycle": c.use_cross_cycle and c.lambda_cc > 0,
            "latent_reg": c.use_latent_regression and c.lambda_lr > 0,
        }
        method.optimizers["g"] = method.adam(self.generator_parameters(), c.lr, c.betas)
        method.optimizers["d"] = method.adam(
            [{"params": unique_parameters([self.d_ct, self.d_mr]), "lr": c.lr},
             {"params": list(self.d_content.parameters()), "lr": c.content_disc_lr}], c.lr, c.betas)

    @property
    def discriminators(self) -> list[nn.Module]:
        return [self.d_ct, self.d_mr, self.d_content]

    def generator_parameters(self) -> list[nn.Parameter]:
        """Generators, content encoders (shared block once) and attribute encoders: the G step's."""
        return unique_parameters([self.g_ct2mr, self.g_mr2ct, self.e_attr_ct, self.e_attr_mr])

    def _freeze_discriminators(self, frozen: bool) -> None:
        for d in self.discriminators:
            for p in d.parameters():
                p.requires_grad_(not frozen)

    def _attr(self, enc: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = enc(x)
        return mu, logvar, reparameterise(mu, logvar)

    # ------------------------------------------------------------------ steps
    def forward(self, ct: torch.Tensor, mr: torch.Tensor) -> TranslatorForward:
        on, c = self.on, self.cfg
        self._freeze_discriminators(True)  # D frozen: the G step gives them no gradient
        ctp, size = pad_to_multiple(ct, 4)
        mrp, _ = pad_to_multiple(mr, 4)
        b = ct.shape[0]
        g_m, g_c = self.g_ct2mr.decode, self.g_mr2ct.decode  # MR and CT generators
        c_ct, c_mr = self.g_ct2mr.encode(ctp), self.g_mr2ct.encode(mrp)
        mu_m, lv_m, z_m = self._attr(self.e_attr_mr, mrp)
        need_fake_ct = on["adv_g"] or on["cross_cycle"]
        need_ct_branch = need_fake_ct or on["vae_recon"] or on["latent_reg"]
        rand = on["adv_g"] or on["latent_reg"]
        z_r = torch.randn(b, c.attr_dim, device=ct.device) if rand else None
        terms: dict[str, torch.Tensor] = {}
        # first translation, every branch of each generator in one call (instance norm: per-image outputs)
        mr_in = [(c_ct, z_m)] + ([(c_mr, z_m)] if on["vae_recon"] else []) + ([(c_ct, z_r)] if rand else [])
        out_m = list(g_m(torch.cat([x for x, _ in mr_in]), torch.cat([z for _, z in mr_in])).split(b))
        fake_mr = out_m.pop(0)
        rec_mr = out_m.pop(0) if on["vae_recon"] else None
        fake_mr_rand = out_m.pop(0) if rand else None
        fake_ct = rec_ct = fake_ct_rand = None
        if need_ct_branch:
            mu_c, lv_c, z_c = self._attr(self.e_attr_ct, ctp)
            ct_in = (([(c_mr, z_c)] if need_fake_ct else []) + ([(c_ct, z_c)] if on["vae_recon"] else [])
                     + ([(c_mr, z_r)] if rand else []))
            out_c = list(g_c(torch.cat([x for x, _ in ct_in]), torch.cat([z for _, z in ct_in])).split(b))
            fake_ct = out_c.pop(0) if need_fake_ct else None
            rec_ct = out_c.pop(0) if on["vae_recon"] else None
            fake_ct_rand = out_c.pop(0) if rand else None
        if on["adv_g"]:
            terms["adv_g"] = (self._weighted_adv(self.d_mr, fake_mr, fake_mr_rand)
                              + self._weighted_adv(self.d_ct, fake_ct, fake_ct_rand))
        if on["content_adv"]:
            logits = self.d_content(torch.cat([c_ct, c_mr])).float()
            if c.content_adv_mode == "confusion":
                terms["content_adv"] = gan_loss(logits, True, "bce", real_label=0.5) * 2
            else:
                terms["content_adv"] = gan_loss(logits[:b], False, "bce") + gan_loss(logits[b:], True, "bce")
        if on["vae_recon"]:
            terms["vae_recon"] = F.l1_loss(rec_ct.float(), ctp) + F.l1_loss(rec_mr.float(), mrp)
        if on["kl"]:
            terms["kl"] = kl_to_standard_normal(mu_c, lv_c) + kl_to_standard_normal(mu_m, lv_m)
        if on["cross_cycle"]:
            _, _, z_u = self._attr(self.e_attr_ct, fake_ct)
            _, _, z_v = self._attr(self.e_attr_mr, fake_mr)
            back_ct = g_c(self.g_mr2ct.encode(fake_mr), z_u)
            back_mr = g_m(self.g_ct2mr.encode(fake_ct), z_v)
            terms["cross_cycle"] = F.l1_loss(back_ct.float(), ctp) + F.l1_loss(back_mr.float(), mrp)
        if on["latent_reg"]:
            terms["latent_reg"] = (F.l1_loss(self._frozen_mu(self.e_attr_mr, fake_mr_rand), z_r)
                                   + F.l1_loss(self._frozen_mu(self.e_attr_ct, fake_ct_rand), z_r))
        weights = {"adv_g": c.lambda_adv, "content_adv": c.lambda_content_adv, "kl": c.lambda_vae * c.vae_kl_weight,
                   "vae_recon": c.lambda_vae, "cross_cycle": c.lambda_cc, "latent_reg": c.lambda_lr}
        extras = {"ct": ctp, "mr": mrp, "fake_mr": fake_mr, "fake_mr_rand": fake_mr_rand, "fake_ct": fake_ct,
                  "fake_ct_rand": fake_ct_rand, "c_ct": c_ct, "c_mr": c_mr}
        pseudo_mr = crop_to(fake_mr, tuple(ctp.shape[2:]), size)
        return TranslatorForward(pseudo_mr, terms, {k: weights[k] for k in terms}, extras)

    def _weighted_adv(self, d: nn.Module, fake: torch.Tensor, fake_rand: torch.Tensor) -> torch.Tensor:
        """Eq. 10, generator side: 0.5 GAN(D(encoded-attribute fake)) + 0.5 GAN(D(random-attribute fake))."""
        out = d(torch.cat([fake, fake_rand])).float()
        n = fake.shape[0]
        return 0.5 * (self.gan_loss(out[:n], True) + self.gan_loss(out[n:], True))

    @staticmethod
    def _frozen_mu(enc: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The attribute mean of ``x`` with the encoder's weights read as constants (gradient to ``x`` only)."""
        params = {k: v.detach() for k, v in enc.named_parameters()}
        return functional_call(enc, params, (x,))[0].float()

    def generator_step(self, loss_g: torch.Tensor) -> None:
        opt = self.method.optimizers["g"]
        opt.zero_grad(set_to_none=True)
        if loss_g.requires_grad:
            torch.autograd.backward(loss_g, inputs=self.generator_parameters(), retain_graph=True)
            opt.step()

    def discriminator_step(self, fwd: TranslatorForward, ct: torch.Tensor, mr: torch.Tensor) -> dict[str, float]:
        self._freeze_discriminators(False)
        if not (self.on["adv_g"] or self.on["content_adv"]):
            return {}
        x = fwd.extras
        logs: dict[str, torch.Tensor] = {}
        opt = self.method.optimizers["d"]
        opt.zero_grad(set_to_none=True)
        with self.method.autocast():
            if self.on["adv_g"]:
                logs["d_mr"] = self._real_fake_loss(self.d_mr, x["mr"], x["fake_mr"], x["fake_mr_rand"])
                logs["d_ct"] = self._real_fake_loss(self.d_ct, x["ct"], x["fake_ct"], x["fake_ct_rand"])
            if self.on["content_adv"]:
                # D_c labels CT content 1, MRI content 0 (eq. 7's first bracket), on detached codes
                out = self.d_content(torch.cat([x["c_ct"], x["c_mr"]]).detach()).float()
                n = x["c_ct"].shape[0]
                logs["d_content"] = 0.5 * (gan_loss(out[:n], True, "bce") + gan_loss(out[n:], False, "bce"))
        loss_d = sum(logs.values())
        loss_d.backward()
        if self.on["content_adv"]:
            nn.utils.clip_grad_norm_(self.d_content.parameters(), 5.0)  # as DRIT's code
        opt.step()
        return {**{k: float(v.detach()) for k, v in logs.items()}, "loss_d": float(loss_d.detach())}

    def _real_fake_loss(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, fake_rand: torch.Tensor
                        ) -> torch.Tensor:
        """Eq. 10, discriminator side (halved as CycleGAN's): 0.5 [GAN(D(x), real) + 0.5 GAN(D(fake), fake)
        + 0.5 GAN(D(random-attribute fake), fake)], fakes detached, all in one call."""
        out = d(torch.cat([real, fake.detach().to(real.dtype), fake_rand.detach().to(real.dtype)])).float()
        n = real.shape[0]
        return 0.5 * (self.gan_loss(out[:n], True) + 0.5 * self.gan_loss(out[n:2 * n], False)
                      + 0.5 * self.gan_loss(out[2 * n:], False))

    def visuals(self, ct: torch.Tensor) -> dict[str, torch.Tensor]:
        """pMRI and its translation back, both with the zero attribute (the test-time translation)."""
        fake_mr = self.g_ct2mr(ct).float()
        return {"pMRI": fake_mr.cpu(), "rec. CT": self.g_mr2ct(fake_mr).float().cpu()}
