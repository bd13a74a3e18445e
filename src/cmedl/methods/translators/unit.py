"""``unit``: UNIT (Liu, Breuel, Kautz 2017), a shared-latent-space VAE-GAN translator.

Networks (checkpoint names): ``g_ct2mr`` (CT encoder E_c + MR generator G_m), ``g_mr2ct`` (E_m +
G_c), which share the encoders' last and the generators' first residual blocks (the same modules in
both; :mod:`cmedl.nets.unit`), and ``d_ct``, ``d_mr`` (70x70 PatchGAN). ``g_ct2mr`` alone is the
test-time translator G_m(mu(x_c)) (the latent mean, no sampling noise).

Each encoder gives the mean ``mu`` of a posterior N(mu, I) (UNIT's "reduced VAE"); a latent sample
is ``z = mu + eps``, eps ~ N(0, I). One forward (discriminators frozen) gives the pseudo-MRI
``G_m(z_c)`` (the image CMEDL's teacher, hint and L_seg^pM see, as UNIT trains its translation; at
test time ``G_m(mu_c)``) and these unweighted terms (UNIT's objective, its Sec. 3):

- ``adv_g`` (``lambda_adv``): GAN(D_m(G_m(z_c))) + GAN(D_c(G_c(z_m))).
- ``recon`` (``lambda_recon``) and ``kl`` (``lambda_kl``), the VAE terms: |G_c(z_c) - x_c|_1 +
  |G_m(z_m) - x_m|_1 and mean(mu_c^2) + mean(mu_m^2), the KL to N(0, I) of a unit-variance posterior
  up to its constant factor (UNIT's code computes it so).
- ``cycle`` (``lambda_cycle``) and ``kl_cycle`` (``lambda_kl_cycle``): the images translated and
  encoded again, G_c(E_m(G_m(z_c)) + eps) vs x_c (and the MRI's), L1, and the KL of their codes.

Weights: UNIT's paper uses lambda_0 (GAN) 10, lambda_1 = lambda_3 (KL) 0.1, lambda_2 = lambda_4
(reconstruction, cycle) 100; its PyTorch release the same ratios divided by 10 (1, 0.01, 10, 0.01,
10). The defaults are the latter, so the GAN weight matches the CycleGAN translator's and CMEDL's
lambda_hint / lambda_seg keep their meaning beside them. Adam 1e-4, betas 0.5/0.999 (UNIT's; its
weight decay 1e-4 is ``optim.weight_decay`` here, shared by every optimiser). The generators' two
passes (x -> both domains) share the shared generator block's work: it runs once on [z_c, z_m].
The discriminator step sees detached fakes (no image pool: UNIT has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cmedl.config.schema import check_choice, check_positive
from cmedl.config.sections import check_betas
from cmedl.losses import GANLoss
from cmedl.methods.translators.base import Translator, TranslatorForward
from cmedl.methods.translators.drit import unique_parameters
from cmedl.nets import PatchDiscriminator
from cmedl.nets.base import crop_to, pad_to_multiple
from cmedl.nets.unit import build_unit_pair

if TYPE_CHECKING:
    from cmedl.methods.base import Method

GAN_MODES = ("lsgan", "bce")


@dataclass
class UNITConfig:
    """UNIT translator (UNIT's PyTorch defaults: width 64, GAN 1, recon 10, KL 0.01, cycle 10,
    cycle KL 0.01, LSGAN; Adam 1e-4, betas 0.5/0.999)."""

    #: encoder/generator base width w (latent codes have 4w channels)
    gen_base_width: int = 64
    #: residual blocks: per-domain encoder blocks, then shared encoder blocks; shared generator
    #: blocks, then per-domain generator blocks (UNIT: 3 + 1 and 1 + 3)
    enc_private_blocks: int = 3
    enc_shared_blocks: int = 1
    gen_shared_blocks: int = 1
    gen_private_blocks: int = 3
    #: PatchGAN discriminators (70x70: 64, 3)
    disc_base_width: int = 64
    disc_n_layers: int = 3
    lambda_adv: float = 1.0
    lambda_recon: float = 10.0
    lambda_kl: float = 0.01
    lambda_cycle: float = 10.0
    lambda_kl_cycle: float = 0.01
    #: switches: adversarial; VAE (recon + kl); cycle (cycle + kl_cycle). A switched-off term, or one
    #: whose weight is 0, is neither computed nor logged.
    use_adversarial: bool = True
    use_vae: bool = True
    use_cycle: bool = True
    gan_mode: str = "lsgan"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])

    def __post_init__(self) -> None:
        for key in ("gen_base_width", "disc_base_width", "disc_n_layers", "lr"):
            check_positive(key, getattr(self, key))
        for key in ("enc_private_blocks", "enc_shared_blocks", "gen_shared_blocks", "gen_private_blocks",
                    "lambda_adv", "lambda_recon", "lambda_kl", "lambda_cycle", "lambda_kl_cycle"):
            check_positive(key, getattr(self, key), allow_zero=True)
        check_choice("gan_mode", self.gan_mode, GAN_MODES)
        check_betas("betas", self.betas)


class UNITTranslator(Translator):
    """UNIT (shared latent space, weight-shared VAE-GANs) for a method that owns the networks."""

    name: ClassVar[str] = "unit"
    description: ClassVar[str] = "UNIT: shared-latent-space VAE-GAN translator with weight sharing (Liu et al. 2017)"
    config_section: ClassVar[type] = UNITConfig
    generators: ClassVar[dict[str, str]] = {"ct2mr": "g_ct2mr", "mr2ct": "g_mr2ct"}

    @classmethod
    def build_networks(cls, section: UNITConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        s = section
        nets: dict[str, nn.Module] = {}
        wanted = [d for d, n in cls.generators.items() if names is None or n in names]
        if wanted:
            pair = build_unit_pair(s.gen_base_width, s.enc_private_blocks, s.enc_shared_blocks, s.gen_shared_blocks,
                                   s.gen_private_blocks, names=tuple(wanted))
            nets.update({cls.generators[d]: net for d, net in pair.items()})
        for name in ("d_ct", "d_mr"):
            if names is None or name in names:
                nets[name] = PatchDiscriminator(1, s.disc_base_width, s.disc_n_layers)
        return nets

    def __init__(self, method: Method, section: UNITConfig) -> None:
        self.method = method
        self.cfg = c = section
        nets = method.networks
        self.g_ct2mr, self.g_mr2ct = nets["g_ct2mr"], nets["g_mr2ct"]
        self.d_ct, self.d_mr = nets["d_ct"], nets["d_mr"]
        self.gan_loss = GANLoss(c.gan_mode).to(method.device)
        self.on = {
            "adv_g": c.use_adversarial and c.lambda_adv > 0,
            "recon": c.use_vae and c.lambda_recon > 0,
            "kl": c.use_vae and c.lambda_kl > 0,
            "cycle": c.use_cycle and c.lambda_cycle > 0,
            "kl_cycle": c.use_cycle and c.lambda_kl_cycle > 0,
        }
        method.optimizers["g"] = method.adam(self.generator_parameters(), c.lr, c.betas)
        method.optimizers["d"] = method.adam(unique_parameters(self.discriminators), c.lr, c.betas)

    @property
    def discriminators(self) -> list[nn.Module]:
        return [self.d_ct, self.d_mr]

    def generator_parameters(self) -> list[nn.Parameter]:
        """Encoders and generators, the shared blocks once."""
        return unique_parameters([self.g_ct2mr, self.g_mr2ct])

    def _freeze_discriminators(self, frozen: bool) -> None:
        for d in self.discriminators:
            for p in d.parameters():
                p.requires_grad_(not frozen)

    # ------------------------------------------------------------------ steps
    def forward(self, ct: torch.Tensor, mr: torch.Tensor) -> TranslatorForward:
        on, c = self.on, self.cfg
        self._freeze_discriminators(True)
        ctp, size = pad_to_multiple(ct, 4)
        mrp, _ = pad_to_multiple(mr, 4)
        b = ct.shape[0]
        to_mr, to_ct = self.g_ct2mr, self.g_mr2ct  # .generator: the MR / CT private generator parts
        mu_c, mu_m = to_mr.encode(ctp), to_ct.encode(mrp)
        z_c, z_m = mu_c + torch.randn_like(mu_c), mu_m + torch.randn_like(mu_m)
        need_ct = on["adv_g"] or on["cycle"] or on["kl_cycle"] or on["recon"]
        # the shared generator block once on [z_c, z_m], then each domain's private part on what it needs
        shared = to_mr.gen_shared(torch.cat([z_c, z_m]) if need_ct else z_c)
        out_m = to_mr.generator(shared if on["recon"] else shared[:b])
        fake_mr, rec_mr = out_m[:b], (out_m[b:] if on["recon"] else None)
        fake_ct = rec_ct = None
        if need_ct:
            out_c = to_ct.generator(shared if on["recon"] else shared[b:])
            rec_ct, fake_ct = (out_c[:b], out_c[b:]) if on["recon"] else (None, out_c)
        terms: dict[str, torch.Tensor] = {}
        if on["adv_g"]:
            terms["adv_g"] = (self.gan_loss(self.d_mr(fake_mr).float(), True)
                              + self.gan_loss(self.d_ct(fake_ct).float(), True))
        if on["recon"]:
            terms["recon"] = F.l1_loss(rec_ct.float(), ctp) + F.l1_loss(rec_mr.float(), mrp)
        if on["kl"]:
            terms["kl"] = mu_c.float().pow(2).mean() + mu_m.float().pow(2).mean()
        if on["cycle"] or on["kl_cycle"]:
            mu_cm, mu_mc = to_ct.encode(fake_mr), to_mr.encode(fake_ct)  # codes of the translated images
            if on["cycle"]:
                back_ct = to_ct.decode(mu_cm + torch.randn_like(mu_cm))
                back_mr = to_mr.decode(mu_mc + torch.randn_like(mu_mc))
                terms["cycle"] = F.l1_loss(back_ct.float(), ctp) + F.l1_loss(back_mr.float(), mrp)
            if on["kl_cycle"]:
                terms["kl_cycle"] = mu_cm.float().pow(2).mean() + mu_mc.float().pow(2).mean()
        weights = {"adv_g": c.lambda_adv, "recon": c.lambda_recon, "kl": c.lambda_kl, "cycle": c.lambda_cycle,
                   "kl_cycle": c.lambda_kl_cycle}
        pseudo_mr = crop_to(fake_mr, tuple(ctp.shape[2:]), size)
        extras = {"ct": ctp, "mr": mrp, "fake_mr": fake_mr, "fake_ct": fake_ct}
        return TranslatorForward(pseudo_mr, terms, {k: weights[k] for k in terms}, extras)

    def generator_step(self, loss_g: torch.Tensor) -> None:
        opt = self.method.optimizers["g"]
        opt.zero_grad(set_to_none=True)
        if loss_g.requires_grad:
            torch.autograd.backward(loss_g, inputs=self.generator_parameters(), retain_graph=True)
            opt.step()

    def discriminator_step(self, fwd: TranslatorForward, ct: torch.Tensor, mr: torch.Tensor) -> dict[str, float]:
        self._freeze_discriminators(False)
        if not self.on["adv_g"]:
            return {}
        x = fwd.extras
        opt = self.method.optimizers["d"]
        opt.zero_grad(set_to_none=True)
        with self.method.autocast():
            d_loss_mr = self._real_fake_loss(self.d_mr, x["mr"], x["fake_mr"])
            d_loss_ct = self._real_fake_loss(self.d_ct, x["ct"], x["fake_ct"])
        loss_d = d_loss_mr + d_loss_ct
        loss_d.backward()
        opt.step()
        return {"d_mr": float(d_loss_mr.detach()), "d_ct": float(d_loss_ct.detach()), "loss_d": float(loss_d.detach())}

    def _real_fake_loss(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        out = d(torch.cat([real, fake.detach().to(real.dtype)])).float()
        n = real.shape[0]
        return 0.5 * (self.gan_loss(out[:n], True) + self.gan_loss(out[n:], False))

    def visuals(self, ct: torch.Tensor) -> dict[str, torch.Tensor]:
        """pMRI G_m(mu_c) and its translation back (test-time translations)."""
        fake_mr = self.g_ct2mr(ct).float()
        return {"pMRI": fake_mr.cpu(), "rec. CT": self.g_mr2ct(fake_mr).float().cpu()}
