"""``cyclegan``: CycleGAN with a contextual loss (CT paper Sec. II-A; CBCT paper), CMEDL's translator.

Networks: ``g_ct2mr``, ``g_mr2ct`` (ResNet generators), ``d_ct``, ``d_mr`` (70x70 PatchGAN). A frozen
VGG19 gives the contextual-loss features (not saved: ``vgg_weights`` or a fixed-seed init).

Generator terms (:meth:`CycleGANTranslator.forward`): ``adv_g`` (LSGAN/BCE generator loss of both
directions), ``cycle`` = |G_MC(G_CM(x_c)) - x_c|_1 + |G_CM(G_MC(x_m)) - x_m|_1, ``contextual`` between
VGG features of the pMRI G_CM(x_c) and a real MRI x_m. G_CM runs once on the CT and the fake CT
together, and each discriminator once on its real and pooled fake images: with instance norm every
image's output does not depend on the rest of the batch, so this equals separate calls (~5 % of a
CPU step saved). The D step uses *detached* fakes from CycleGAN image pools (``pool_size``). Every
term can be switched off (``use_*``: Table V ablations); a switched-off term is neither computed
nor logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cmedl.config.schema import check_choice, check_positive
from cmedl.config.sections import check_betas
from cmedl.losses import ContextualLoss, GANLoss, cycle_loss
from cmedl.methods.image_pool import ImagePool
from cmedl.methods.translators.base import Translator, TranslatorForward
from cmedl.nets import PatchDiscriminator, ResnetGenerator, VGG19Features

if TYPE_CHECKING:
    from cmedl.methods.base import Method

GAN_MODES = ("lsgan", "bce")


@dataclass
class CycleGANConfig:
    """CycleGAN translator: networks, loss weights and switches, its own Adam (papers: 64/9, 64/3,
    lambda_adv 1, lambda_cycle 10, lambda_contextual 1, Adam 1e-4, betas 0.5/0.999)."""

    #: ResNet generator width and number of residual blocks
    gen_base_width: int = 64
    gen_n_blocks: int = 9
    #: PatchGAN discriminator width and number of strided layers (70x70 PatchGAN: 64, 3)
    disc_base_width: int = 64
    disc_n_layers: int = 3
    lambda_adv: float = 1.0
    lambda_cycle: float = 10.0
    lambda_contextual: float = 1.0
    use_adversarial: bool = True
    use_cycle: bool = True
    use_contextual: bool = True
    #: adversarial loss form: ``lsgan`` or ``bce``
    gan_mode: str = "lsgan"
    #: contextual loss on these VGG19 layers (torchvision layout names), bandwidth h
    contextual_layers: list[str] = field(default_factory=lambda: ["conv3_3", "conv3_4", "conv4_1"])
    contextual_bandwidth: float = 0.5
    #: at most this many feature positions per image enter the contextual loss (memory bound)
    contextual_max_positions: int = 4096
    #: compute the contextual loss on at most this many images of the batch (None: all). The frozen
    #: full-width VGG19 dominates the step cost at small network widths, so the CPU preset caps it.
    contextual_max_images: int | None = None
    #: torchvision ``vgg19`` ImageNet state-dict file; None = deterministic fixed-seed random init
    vgg_weights: str | None = None
    #: image pool size of the discriminator step (0 disables the pool)
    pool_size: int = 50
    #: Adam of the generators and of the discriminators
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])

    def __post_init__(self) -> None:
        for key in ("gen_base_width", "gen_n_blocks", "disc_base_width", "disc_n_layers", "lr",
                    "contextual_bandwidth", "contextual_max_positions"):
            check_positive(key, getattr(self, key))
        for key in ("lambda_adv", "lambda_cycle", "lambda_contextual", "pool_size"):
            check_positive(key, getattr(self, key), allow_zero=True)
        if self.contextual_max_images is not None:
            check_positive("contextual_max_images", self.contextual_max_images)
        check_choice("gan_mode", self.gan_mode, GAN_MODES)
        check_betas("betas", self.betas)


class CycleGANTranslator(Translator):
    """CycleGAN + contextual loss for a method that owns the networks and optimisers."""

    name: ClassVar[str] = "cyclegan"
    description: ClassVar[str] = "CycleGAN (ResNet generators, PatchGAN) with a VGG19 contextual loss"
    config_section: ClassVar[type] = CycleGANConfig
    generators: ClassVar[dict[str, str]] = {"ct2mr": "g_ct2mr", "mr2ct": "g_mr2ct"}

    @classmethod
    def build_networks(cls, section: CycleGANConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        s = section
        makers = {
            "g_ct2mr": lambda: ResnetGenerator(1, 1, s.gen_base_width, s.gen_n_blocks),
            "g_mr2ct": lambda: ResnetGenerator(1, 1, s.gen_base_width, s.gen_n_blocks),
            "d_ct": lambda: PatchDiscriminator(1, s.disc_base_width, s.disc_n_layers),
            "d_mr": lambda: PatchDiscriminator(1, s.disc_base_width, s.disc_n_layers),
        }
        return {k: make() for k, make in makers.items() if names is None or k in names}

    def __init__(self, method: Method, section: CycleGANConfig) -> None:
        self.method = method
        self.cfg = section
        nets = method.networks
        self.g_ct2mr, self.g_mr2ct = nets["g_ct2mr"], nets["g_mr2ct"]
        self.d_ct, self.d_mr = nets["d_ct"], nets["d_mr"]
        self.gan_loss = GANLoss(section.gan_mode).to(method.device)
        self.contextual: nn.Module | None = None
        if section.use_contextual:
            layers = tuple(section.contextual_layers)
            vgg = VGG19Features(weights_path=section.vgg_weights, layers=layers)
            vgg.to(method.device, memory_format=method.memory_format).eval()
            for p in vgg.parameters():
                p.requires_grad_(False)
            self.contextual = ContextualLoss(vgg, layers=layers, bandwidth=section.contextual_bandwidth,
                                             max_positions=section.contextual_max_positions).to(method.device)
        method.optimizers["g"] = method.adam(self.generator_parameters(), section.lr, section.betas)
        method.optimizers["d"] = method.adam(
            [p for d in self.discriminators for p in d.parameters()], section.lr, section.betas)
        seed = method.config.training.seed
        self.pools = {"mr": ImagePool(section.pool_size, seed + 101), "ct": ImagePool(section.pool_size, seed + 202)}

    @property
    def discriminators(self) -> list[nn.Module]:
        return [self.d_ct, self.d_mr]

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for g in (self.g_ct2mr, self.g_mr2ct) for p in g.parameters()]

    def _freeze_discriminators(self, frozen: bool) -> None:
        for d in self.discriminators:
            for p in d.parameters():
                p.requires_grad_(not frozen)

    # ------------------------------------------------------------------ steps
    def forward(self, ct: torch.Tensor, mr: torch.Tensor) -> TranslatorForward:
        c = self.cfg
        self._freeze_discriminators(True)  # D frozen: the G step gives it no gradient
        terms: dict[str, torch.Tensor] = {}
        fake_ct = self.g_mr2ct(mr) if c.use_adversarial or c.use_cycle else None
        if c.use_cycle:
            both = self.g_ct2mr(torch.cat([ct, fake_ct.to(ct.dtype)]))  # one call: see the module docstring
            fake_mr, rec_mr = both[: ct.shape[0]], both[ct.shape[0]:]
        else:
            fake_mr = self.g_ct2mr(ct)
        if c.use_adversarial:
            terms["adv_g"] = (self.gan_loss(self.d_mr(fake_mr).float(), True)
                              + self.gan_loss(self.d_ct(fake_ct).float(), True))
        if c.use_cycle:
            rec_ct = self.g_mr2ct(fake_mr)
            terms["cycle"] = cycle_loss(rec_ct.float(), ct) + cycle_loss(rec_mr.float(), mr)
        if c.use_contextual and self.contextual is not None:
            k = c.contextual_max_images or fake_mr.shape[0]
            terms["contextual"] = self.contextual(fake_mr[:k].float(), mr[:k])
        weights = {"adv_g": c.lambda_adv, "cycle": c.lambda_cycle, "contextual": c.lambda_contextual}
        return TranslatorForward(fake_mr, terms, weights, {"fake_ct": fake_ct})

    def generator_step(self, loss_g: torch.Tensor) -> None:
        opt = self.method.optimizers["g"]
        opt.zero_grad(set_to_none=True)
        if loss_g.requires_grad:
            torch.autograd.backward(loss_g, inputs=self.generator_parameters(), retain_graph=True)
            opt.step()

    def discriminator_step(self, fwd: TranslatorForward, ct: torch.Tensor, mr: torch.Tensor) -> dict[str, float]:
        self._freeze_discriminators(False)
        if not self.cfg.use_adversarial:
            return {}
        pooled_mr = self.pools["mr"].query(fwd.pseudo_mr.detach())
        pooled_ct = self.pools["ct"].query(fwd.extras["fake_ct"].detach())
        opt = self.method.optimizers["d"]
        opt.zero_grad(set_to_none=True)
        with self.method.autocast():
            d_loss_mr = self._real_fake_loss(self.d_mr, mr, pooled_mr)
            d_loss_ct = self._real_fake_loss(self.d_ct, ct, pooled_ct)
        loss_d = d_loss_mr + d_loss_ct
        loss_d.backward()
        opt.step()
        return {"d_mr": float(d_loss_mr.detach()), "d_ct": float(d_loss_ct.detach()), "loss_d": float(loss_d.detach())}

    def _real_fake_loss(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        # real and pooled fake images in one call (instance norm: batch-independent outputs)
        out = d(torch.cat([real, fake.to(real.dtype)])).float()
        n = real.shape[0]
        return 0.5 * (self.gan_loss(out[:n], True) + self.gan_loss(out[n:], False))

    def visuals(self, ct: torch.Tensor) -> dict[str, torch.Tensor]:
        fake_mr = self.g_ct2mr(ct).float()
        rec_ct = self.g_mr2ct(fake_mr).float()
        return {"pMRI": fake_mr.cpu(), "rec. CT": rec_ct.cpu()}

    def extra_state(self) -> dict[str, Any]:
        return {"pools": {k: p.state_dict() for k, p in self.pools.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for k, p in self.pools.items():
            if "pools" in state and k in state["pools"]:
                p.load_state_dict(state["pools"][k], self.method.device)
