"""DRIT networks (Lee et al. 2018, "Diverse Image-to-Image Translation via Disentangled
Representations"), as the CMEDL CT paper uses them (Sec. II-A-2b and II-B-a).

An image is split into a domain-invariant *content* code (a feature map) and a domain-specific
*attribute* (style) vector; a generator renders a content code in its domain's style.

* Content encoders: one per domain with a *shared* last part (:func:`build_drit_pair`), as in the
  public DRIT code (``E_content``: per-domain c7s1 + two stride-2 convolutions + residual blocks,
  then one shared residual block). The CT paper writes one content encoder "shared by both
  domains", but its equations (7, 8) name two (E_c, E_m), and CT and MRI intensities differ so much
  that a fully shared first layer would have to learn both contrasts at once; the shared last
  block is what puts both domains' codes in one space. ``content_private_blocks=0`` leaves only the
  first convolutions private.
* :class:`AttributeEncoder`: residual blocks, global average pooling, two fully connected outputs
  ``(mu, logvar)`` of the attribute posterior (the reparameterisation trick is the translator's);
  DRIT's ``E_attr_concat`` without norm layers.
* :class:`DRITGenerator`: ``n_blocks`` residual blocks (the paper: 6) whose instance norms are
  followed by a per-sample, per-channel shift computed by an MLP from the attribute vector (the shift
  half of DRIT's ``MisINSResBlock``, i.e. AdaIN without the scale), then two fractionally strided
  convolutions, c7s1-1 and tanh as the CycleGAN generator.
* :class:`ContentDiscriminator`: classifies content codes by domain (one logit per code position).
* :class:`DRITTranslation`: one direction as one module ``[B,1,H,W] -> [B,1,H,W]`` (checkpoint
  networks ``g_ct2mr`` / ``g_mr2ct``): the source content encoder and the target generator. Its
  :meth:`~DRITTranslation.forward` renders with the *zero* attribute vector, the mean of the
  attribute prior N(0, I) that the KL term pulls every encoded attribute towards: the
  deterministic test-time pseudo-MRI (``cmedl translate``, translate-then-segment recipes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmedl.errors import ConfigError
from cmedl.nets.base import crop_to, pad_to_multiple
from cmedl.nets.cyclegan import init_gan_weights, norm_layer
from cmedl.nets.unit import decoder_head, encoder_trunk, residual_stack


class StyleResBlock(nn.Module):
    """``x + [pad, conv3, IN, +s1, ReLU, pad, conv3, IN, +s2](x)`` with per-sample channel shifts
    ``s1, s2`` given by the caller (from the attribute MLP)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        def conv() -> nn.Sequential:
            return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
                                 norm_layer("instance", channels))

        self.conv1, self.conv2 = conv(), conv()

    def forward(self, x: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x) + s1[:, :, None, None].to(x.dtype))
        return x + self.conv2(h) + s2[:, :, None, None].to(x.dtype)


class DRITGenerator(nn.Module):
    """Content code ``[B, 4w, h, w]`` + attribute ``[B, nz]`` -> image ``[B, 1, 4h, 4w]`` in [-1, 1]."""

    def __init__(self, base_width: int = 64, n_blocks: int = 6, attr_dim: int = 8, out_channels: int = 1) -> None:
        super().__init__()
        c = 4 * int(base_width)
        self.channels, self.n_blocks = c, int(n_blocks)
        self.blocks = nn.ModuleList([StyleResBlock(c) for _ in range(n_blocks)])
        # DRIT's attribute MLP: nz -> 256 -> 256 -> per-block vectors (256 = 4w at the paper width)
        self.mlp = nn.Sequential(nn.Linear(attr_dim, c), nn.ReLU(True), nn.Linear(c, c), nn.ReLU(True),
                                 nn.Linear(c, 2 * c * max(1, n_blocks)))
        self.head = decoder_head(base_width, out_channels)

    def forward(self, content: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        shifts = self.mlp(attr.float()).chunk(2 * max(1, self.n_blocks), dim=1)
        h = content
        for i, block in enumerate(self.blocks):
            h = block(h, shifts[2 * i], shifts[2 * i + 1])
        return self.head(h)


class _DownBlock(nn.Module):
    """DRIT's ``BasicBlock`` without norm: [LReLU, conv3 (c_in), LReLU, conv3 (c_out), avgpool2] +
    [avgpool2, conv1] shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(c_in, c_in, 3, padding=1, padding_mode="reflect"),
                                  nn.LeakyReLU(0.2), nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="reflect"),
                                  nn.AvgPool2d(2, ceil_mode=True))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class AttributeEncoder(nn.Module):
    """Image ``[B,1,H,W]`` -> ``(mu, logvar)`` ``[B, nz]`` each: 4x4 stride-2 convolution, ``n_blocks``
    residual down blocks (widths ``w * min(4, n + 1)``), LReLU, global average pooling, two linear
    layers. Works on any size >= 2 (pooling rounds up)."""

    def __init__(self, base_width: int = 64, attr_dim: int = 8, n_blocks: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        w = int(base_width)
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(in_channels, w, 4, stride=2)]
        c = w
        for n in range(1, n_blocks + 1):
            layers.append(_DownBlock(w * min(4, n), w * min(4, n + 1)))
            c = w * min(4, n + 1)
        layers += [nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc_mu, self.fc_logvar = nn.Linear(c, attr_dim), nn.Linear(c, attr_dim)
        init_gan_weights(self)  # convolutions N(0, 0.02), as DRIT initialises every network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).float()
        return self.fc_mu(h), self.fc_logvar(h)


class ContentDiscriminator(nn.Module):
    """Content code ``[B, C, h, w]`` -> domain logits ``[B, 1, h', w']``: ``n_layers`` stride-2 3x3
    convolutions with LReLU(0.2), then a 1x1 convolution. DRIT's ``Dis_content`` uses 7x7 kernels
    and instance norm at a fixed 64x64 code size; 3x3 kernels with padding work on any code size, and
    without a norm layer, because a 32-pixel patch gives an 8x8 code that three stride-2 layers take to
    1x1, where instance norm would output zeros (a discriminator that cannot learn)."""

    def __init__(self, channels: int, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_layers):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels, 1, 1))
        self.model = nn.Sequential(*layers)
        # PyTorch's default (fan-in scaled) init, not N(0, 0.02): without norm layers the latter shrinks
        # the signal ~7x per layer at width 16, and the logits start at ~1e-3

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        return self.model(content)


class DRITTranslation(nn.Module):
    """One DRIT direction: source content encoder (``encoder`` private part + ``shared``) and target
    :class:`DRITGenerator`. :meth:`encode` / :meth:`decode` work on sizes that are a multiple of
    :attr:`stride` (the translator pads once); :meth:`forward` pads any size and uses ``attr`` or, by
    default, the zero attribute vector."""

    stride = 4

    def __init__(self, encoder: nn.Module, shared: nn.Module, generator: DRITGenerator, attr_dim: int) -> None:
        super().__init__()
        self.encoder, self.shared, self.generator = encoder, shared, generator
        self.attr_dim = int(attr_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Content code ``[B, 4w, H/4, W/4]`` of source images."""
        return self.shared(self.encoder(x))

    def decode(self, content: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        """Target-domain image of content codes rendered with attribute vectors ``[B, nz]``."""
        return self.generator(content, attr)

    def forward(self, x: torch.Tensor, attr: torch.Tensor | None = None) -> torch.Tensor:
        """``[B,1,H,W] -> [B,1,H,W]`` in [-1, 1]; ``attr`` None = zeros (the prior mean: test time)."""
        if attr is None:
            attr = torch.zeros(x.shape[0], self.attr_dim, device=x.device)
        xp, original = pad_to_multiple(x, self.stride)
        return crop_to(self.decode(self.encode(xp), attr), tuple(xp.shape[2:]), original)


def build_drit_pair(base_width: int = 64, n_blocks: int = 6, attr_dim: int = 8, content_private_blocks: int = 3,
                    content_shared_blocks: int = 1, names: tuple[str, ...] = ("ct2mr", "mr2ct"),
                    ) -> dict[str, DRITTranslation]:
    """The two directions ``{"ct2mr", "mr2ct"}``, whose content encoders share their last
    ``content_shared_blocks`` residual blocks (one module object), built in a fixed order (CT and MR
    content encoders, shared blocks, CT and MR generators); ``names`` limits the result."""
    for key, value, low in (("gen_base_width", base_width, 1), ("gen_n_blocks", n_blocks, 0),
                            ("attr_dim", attr_dim, 1), ("content_private_blocks", content_private_blocks, 0),
                            ("content_shared_blocks", content_shared_blocks, 0)):
        if value < low:
            raise ConfigError(f"{key}: must be >= {low}, got {value}")
    w = int(base_width)
    enc = {d: encoder_trunk(1, w, content_private_blocks) for d in ("ct", "mr")}
    shared = residual_stack(4 * w, content_shared_blocks)
    gen = {d: DRITGenerator(w, n_blocks, attr_dim) for d in ("ct", "mr")}
    pair = {"ct2mr": DRITTranslation(enc["ct"], shared, gen["mr"], attr_dim),
            "mr2ct": DRITTranslation(enc["mr"], shared, gen["ct"], attr_dim)}
    for net in pair.values():
        init_gan_weights(net)
    return {k: v for k, v in pair.items() if k in names}


__all__ = ["AttributeEncoder", "ContentDiscriminator", "DRITGenerator", "DRITTranslation", "StyleResBlock",
           "build_drit_pair"]
