"""CycleGAN networks: ResNet generator and 70x70 PatchGAN discriminator (Zhu et al. 2017).

Both follow the reference CycleGAN implementation (junyanz/pytorch-CycleGAN-and-pix2pix) layer by
layer, written here so that they use cmedl's conventions (grayscale in/out, any input size) and
do not depend on that repository.

* :class:`ResnetGenerator` ``[B, C_in, H, W] -> [B, C_out, H, W]`` in ``[-1, 1]`` (tanh):
  c7s1-w, d2w, d4w (stride-2 3x3 convs), ``n_blocks`` residual blocks at 4w (reflection padding,
  instance norm), u2w, uw (fractionally strided 3x3 convs), c7s1-C_out, tanh. Inputs whose size
  is not a multiple of 4 are padded (reflect) and the output cropped back.
* :class:`PatchDiscriminator` ``[B, C_in, H, W] -> [B, 1, H', W']`` raw scores (no sigmoid:
  LSGAN/BCE-with-logits is applied by the loss). With ``n_layers = 3`` every output pixel sees
  a 70x70 input patch (:meth:`PatchDiscriminator.receptive_field`); ``H' = H/8 - 2`` for H a
  multiple of 8. Any input of at least 32 x 32 pixels works (no padding needed).

Weights are initialised N(0, 0.02) (conv) and N(1, 0.02) (affine norm scales), biases 0, as in
the reference implementation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cmedl.errors import ConfigError, did_you_mean
from cmedl.nets.base import crop_to, pad_to_multiple
from cmedl.nets.fastconv import SingleChannelConv2d

NormKind = Literal["instance", "batch"]


class InstanceNorm(nn.Module):
    """Instance norm without affine parameters or running statistics, as in CycleGAN.

    On CPU it is computed as a group norm with one channel per group, which normalises every
    (image, channel) over its pixels: the same numbers as ``nn.InstanceNorm2d(affine=False)``
    (tested). PyTorch's ``instance_norm`` runs as batch norm on a ``[1, N*C, H, W]`` view and was
    3-4x slower forward + backward on CPU than the group-norm kernel (e.g. 2.65 vs 0.65 ms on
    ``[16, 16, 64, 64]``, 2 cores), about 25 ms of a cpu-demo step. Elsewhere (CUDA, where
    ``group_norm`` would also run in fp32 under bf16 autocast) it is ``F.instance_norm``. No
    parameters or buffers, so the state dict is that of ``nn.InstanceNorm2d(affine=False)``.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels, self.eps = int(channels), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # unbatched [C, H, W]
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.device.type == "cpu":
            return F.group_norm(x, x.shape[1], eps=self.eps)
        return F.instance_norm(x, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Instance norm (no affine, no running stats, as in CycleGAN) or batch norm."""
    if kind == "instance":
        return InstanceNorm(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ConfigError(did_you_mean(str(kind), ("instance", "batch"), "norm"))


def init_gan_weights(module: nn.Module, std: float = 0.02) -> None:
    """CycleGAN init: conv weights ~ N(0, std), norm scales ~ N(1, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def _c7s1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """The 7x7 image <-> feature convolutions: :class:`SingleChannelConv2d` (faster CPU training,
    same weights) for grayscale images, ``nn.Conv2d`` otherwise."""
    if in_channels == 1 or out_channels == 1:
        return SingleChannelConv2d(in_channels, out_channels, 7, bias=bias)
    return nn.Conv2d(in_channels, out_channels, 7, bias=bias)


class ResnetBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, norm, ReLU, [dropout], reflect-pad, 3x3 conv, norm)(x)."""

    def __init__(self, channels: int, norm: str = "instance", dropout: float = 0.0) -> None:
        super().__init__()
        use_bias = norm == "instance"  # batch norm has its own shift
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=use_bias),
            norm_layer(norm, channels),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=use_bias),
            norm_layer(norm, channels),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator (9 blocks by default); output in [-1, 1], same size as input.

    Args:
        in_channels, out_channels: image channels (1 for CT/MRI).
        base_width: channels of the first layer ``w`` (paper 64; demo 16).
        n_blocks: residual blocks at the lowest resolution (9 for 256x256 images).
        norm: ``"instance"`` (default) or ``"batch"``.
        dropout: dropout inside the residual blocks (CycleGAN default 0).
    """

    #: the input size multiple the two stride-2 convolutions need (other sizes are padded)
    stride = 4

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ConfigError(f"n_blocks must be >= 0, got {n_blocks}")
        w = int(base_width)
        use_bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            _c7s1(in_channels, w, bias=use_bias),
            norm_layer(norm, w),
            nn.ReLU(True),
        ]
        for i in range(2):  # downsampling: d2w, d4w
            c = w * 2**i
            layers += [
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias),
                norm_layer(norm, 2 * c),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(4 * w, norm, dropout) for _ in range(n_blocks)]
        for i in range(2):  # upsampling: u2w, uw
            c = w * 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=use_bias
                ),
                norm_layer(norm, c // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), _c7s1(w, out_channels), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_gan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` (any H, W >= 4) -> ``[B, C_out, H, W]`` in [-1, 1]."""
        xp, original = pad_to_multiple(x, self.stride)
        y = self.model(xp)
        return crop_to(y, tuple(xp.shape[2:]), original)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (70x70 receptive field at ``n_layers = 3``).

    Layers: C64 (no norm) - C128 - C256 - C512 (stride 1) - 1-channel 4x4 conv (stride 1), all 4x4
    convolutions with padding 1, LeakyReLU(0.2) after every layer but the last, norm in all but
    the first and last layers. Returns raw scores ``[B, 1, H', W']``.

    Args:
        in_channels: image channels.
        base_width: channels of the first layer (64).
        n_layers: number of stride-2 layers (3 -> 70x70 patches).
        norm: ``"instance"`` (default, CycleGAN) or ``"batch"`` (the CBCT paper's wording).
    """

    def __init__(
        self, in_channels: int = 1, base_width: int = 64, n_layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
        w = int(base_width)
        use_bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(w * prev, w * mult, 4, stride=stride, padding=1, bias=use_bias),
                norm_layer(norm, w * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(w * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_gan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> patch scores ``[B, 1, H', W']`` (logits)."""
        return self.model(x)

    def receptive_field(self) -> int:
        """Receptive field (pixels) of one output score, computed from the conv layers:
        ``r = 1 + sum_l (k_l - 1) * prod_{j<l} s_j``."""
        r, jump = 1, 1
        for m in self.model:
            if isinstance(m, nn.Conv2d):
                r += (m.kernel_size[0] - 1) * jump
                jump *= m.stride[0]
        return r
