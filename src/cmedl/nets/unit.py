"""UNIT networks (Liu, Breuel, Kautz 2017, "Unsupervised Image-to-Image Translation Networks").

A shared latent space: each domain has a VAE encoder ``E_d`` and a generator ``G_d``; an image of
either domain maps to one latent code ``z`` from which both generators draw. Weight sharing ties the
domains: the *last* residual blocks of the two encoders and the *first* residual blocks of the two
generators are one module each (the paper's Sec. 3 and appendix; the authors' original
``COCOResGen``: a 7x7 convolution, two stride-2 convolutions and residual blocks per encoder, of
which the last ``shared`` are common, and the mirror image for the generators).

Layers follow cmedl's CycleGAN generator (:mod:`cmedl.nets.cyclegan`): reflection padding, instance
norm, ReLU, ``c7s1-w, d2w, d4w``, residual blocks at ``4w``, ``u2w, uw``, ``c7s1-1``, tanh; so a UNIT
translation ``x -> G_t(E_s(x))`` is a CycleGAN ResNet generator cut in the middle (UNIT's own code
uses a leaky-ReLU first layer without norm and a 1x1 output layer: a detail we do not copy).

* :func:`encoder_trunk` / :func:`decoder_head`: the private image <-> feature parts (also used by
  the DRIT networks, :mod:`cmedl.nets.drit`).
* :class:`UNITTranslation`: one direction as one module ``[B,1,H,W] -> [B,1,H,W]`` (the checkpoint
  networks ``g_ct2mr`` / ``g_mr2ct``): source encoder (private + shared blocks), shared generator
  blocks, target generator (private blocks + head). The shared blocks are the *same* modules in the
  two directions (:func:`build_unit_pair`); each direction alone (e.g. loaded from a checkpoint for
  ``cmedl translate``) is complete. Its :meth:`~UNITTranslation.forward` decodes the mean latent
  code (no sampling noise): the deterministic test-time translation.
"""

from __future__ import annotations

import torch
from torch import nn

from cmedl.errors import ConfigError
from cmedl.nets.base import crop_to, pad_to_multiple
from cmedl.nets.cyclegan import ResnetBlock, _c7s1, init_gan_weights, norm_layer


def encoder_trunk(in_channels: int, base_width: int, n_blocks: int) -> nn.Sequential:
    """Image -> features ``[B, 4w, H/4, W/4]``: c7s1-w, d2w, d4w (instance norm, ReLU), then
    ``n_blocks`` residual blocks at 4w. Inputs must be a multiple of 4 (callers pad)."""
    w = int(base_width)
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), _c7s1(in_channels, w), norm_layer("instance", w), nn.ReLU(True)]
    for i in range(2):
        c = w * 2**i
        layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm_layer("instance", 2 * c), nn.ReLU(True)]
    layers += [ResnetBlock(4 * w) for _ in range(n_blocks)]
    return nn.Sequential(*layers)


def decoder_head(base_width: int, out_channels: int = 1) -> nn.Sequential:
    """Features ``[B, 4w, h, w]`` -> image ``[B, C, 4h, 4w]`` in [-1, 1]: u2w, uw (fractionally strided
    3x3 convolutions, instance norm, ReLU), c7s1-C, tanh."""
    w = int(base_width)
    layers: list[nn.Module] = []
    for i in range(2):
        c = w * 2 ** (2 - i)
        layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                   norm_layer("instance", c // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), _c7s1(w, out_channels), nn.Tanh()]
    return nn.Sequential(*layers)


def residual_stack(channels: int, n_blocks: int) -> nn.Sequential:
    """``n_blocks`` CycleGAN residual blocks (an empty stack is the identity)."""
    return nn.Sequential(*[ResnetBlock(channels) for _ in range(n_blocks)])


class UNITTranslation(nn.Module):
    """One UNIT direction: ``E_s`` (``encoder`` private part, ``enc_shared``) to the latent mean
    ``mu``, then ``G_t`` (``gen_shared``, ``generator`` private blocks + head).

    :meth:`encode` returns ``mu`` (the VAE's posterior is N(mu, I), UNIT's "reduced VAE"), and
    :meth:`decode` maps any latent code (``mu`` or a sample ``mu + eps``) to the target domain;
    both work on inputs whose size is a multiple of :attr:`stride` (the translator pads once).
    """

    #: input size multiple (two stride-2 convolutions); :meth:`forward` pads other sizes
    stride = 4

    def __init__(self, encoder: nn.Module, enc_shared: nn.Module, gen_shared: nn.Module, generator: nn.Module) -> None:
        super().__init__()
        self.encoder, self.enc_shared = encoder, enc_shared
        self.gen_shared, self.generator = gen_shared, generator

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent mean ``mu`` ``[B, 4w, H/4, W/4]`` of source images (size a multiple of 4)."""
        return self.enc_shared(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Target-domain image of latent codes ``z``."""
        return self.generator(self.gen_shared(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time translation ``G_t(mu(x))`` of any size ``[B,1,H,W] -> [B,1,H,W]`` in [-1, 1]."""
        xp, original = pad_to_multiple(x, self.stride)
        return crop_to(self.decode(self.encode(xp)), tuple(xp.shape[2:]), original)


def build_unit_pair(base_width: int = 64, enc_private_blocks: int = 3, enc_shared_blocks: int = 1,
                    gen_shared_blocks: int = 1, gen_private_blocks: int = 3,
                    names: tuple[str, ...] = ("ct2mr", "mr2ct")) -> dict[str, UNITTranslation]:
    """The two UNIT directions ``{"ct2mr", "mr2ct"}`` sharing their shared blocks (the same module
    objects), built in a fixed order (CT encoder, MR encoder, shared encoder blocks, shared generator
    blocks, CT generator, MR generator); ``names`` limits the result (e.g. one direction loaded from a
    checkpoint). Initialised N(0, 0.02) as the CycleGAN networks."""
    for key, value in (("gen_base_width", base_width), ("enc_private_blocks", enc_private_blocks),
                       ("enc_shared_blocks", enc_shared_blocks), ("gen_shared_blocks", gen_shared_blocks),
                       ("gen_private_blocks", gen_private_blocks)):
        if value < (1 if key == "gen_base_width" else 0):
            raise ConfigError(f"{key}: must be {'> 0' if key == 'gen_base_width' else '>= 0'}, got {value}")
    w = int(base_width)
    enc = {d: encoder_trunk(1, w, enc_private_blocks) for d in ("ct", "mr")}
    enc_shared, gen_shared = residual_stack(4 * w, enc_shared_blocks), residual_stack(4 * w, gen_shared_blocks)
    gen = {d: nn.Sequential(residual_stack(4 * w, gen_private_blocks), decoder_head(w, 1)) for d in ("ct", "mr")}
    pair = {"ct2mr": UNITTranslation(enc["ct"], enc_shared, gen_shared, gen["mr"]),
            "mr2ct": UNITTranslation(enc["mr"], enc_shared, gen_shared, gen["ct"])}
    for net in pair.values():
        init_gan_weights(net)
    return {k: v for k, v in pair.items() if k in names}


__all__ = ["UNITTranslation", "build_unit_pair", "decoder_head", "encoder_trunk", "residual_stack"]
