"""3D U-Net baseline of the CBCT paper (Cicek et al. 2016 style) and sliding-window inference.

:class:`UNet3D` works on patches ``[B, C_in, D, H, W]`` (``D`` = slices, z first, like
:class:`cmedl.io.Volume` arrays) with ``levels`` max-poolings (3 or 4; 2x2x2 each). Widths mirror
the 2D U-Net: encoder ``w, 2w, ..., 2**(levels-1) w``, a bottleneck of the same width as the
deepest encoder level, trilinear up-sampling + skip concatenation + DoubleConv (conv3d 3x3x3,
BN, ReLU, twice), decoder outputs ``2**(levels-2) w, ..., w, w``, and a 1x1x1 head producing
logits ``[B, 1, D, H, W]``. Any patch size works (padded to ``2**levels`` and cropped back).

Hint features (same interface as the 2D nets, for a 3D CMEDL if wanted):
``"high"``: the last two decoder outputs ``[(w, D/2, H/2, W/2), (w, D, H, W)]``;
``"mid"``: the bottleneck's two convolutions; ``"low"``: the first two convolutions.

:func:`sliding_window_predict_3d` runs the network over a whole volume with MONAI's
``sliding_window_inference`` (Gaussian-weighted blending of overlapping patches).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from cmedl.errors import ConfigError
from cmedl.nets.base import SegmentationNet, make_dropout
from cmedl.nets.conv3d import Conv3d


class DoubleConv3d(nn.Module):
    """(3x3x3 conv, BN, ReLU) x 2; returns both outputs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            Conv3d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            Conv3d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv1(x)
        return a, self.conv2(a)


class UNet3D(SegmentationNet):
    """3D U-Net for patches ``[B, C_in, D, H, W]`` -> logits ``[B, out_channels, D, H, W]``.

    Args:
        in_channels: input channels.
        out_channels: logit channels (1).
        base_width: first block's channels ``w`` (16 or 32).
        levels: number of 2x2x2 max-poolings (3 or 4); ``stride = 2**levels``.
        hint_layers: ``"high"`` (default), ``"mid"``, ``"low"``.
        dropout: channel dropout after the last two decoder blocks (0: none).
    """

    name: ClassVar[str] = "unet3d"
    dims: ClassVar[int] = 3

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 32,
        levels: int = 4,
        hint_layers: str = "high",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(hint_layers, dropout)
        if levels not in (2, 3, 4, 5):
            raise ConfigError(f"UNet3D: levels must be 2..5, got {levels}")
        w = int(base_width)
        self.in_channels, self.out_channels, self.base_width, self.levels = (
            in_channels,
            out_channels,
            w,
            levels,
        )
        self.stride = 2**levels
        enc = [w * 2**l for l in range(levels)] + [w * 2 ** (levels - 1)]
        self.encoders = nn.ModuleList(
            [DoubleConv3d(in_channels, enc[0])]
            + [DoubleConv3d(enc[l - 1], enc[l]) for l in range(1, levels + 1)]
        )
        self.decoders = nn.ModuleList()
        ch = enc[levels]
        for l in range(levels - 1, -1, -1):
            out = enc[l - 1] if l >= 1 else w
            self.decoders.append(DoubleConv3d(ch + enc[l], out))
            ch = out
        self.drop_penultimate = make_dropout(self.dropout_p, dims=3)
        self.drop_last = make_dropout(self.dropout_p, dims=3)
        self.head = Conv3d(w, out_channels, 1)

    @property
    def output_conv(self) -> nn.Module:
        """The final 1x1 convolution producing the logits."""
        return self.head

    def _forward_padded(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        skips: list[torch.Tensor] = []
        low1, y = self.encoders[0](x)
        low = [low1, y]
        for enc in self.encoders[1:]:
            skips.append(y)
            m1, y = enc(F.max_pool3d(y, 2))
        mid = [m1, y]
        high: list[torch.Tensor] = []
        n = len(self.decoders)
        for i, (dec, skip) in enumerate(zip(self.decoders, reversed(skips))):
            y = F.interpolate(y, size=skip.shape[2:], mode="trilinear", align_corners=False)
            _, y = dec(torch.cat([skip, y], dim=1))
            if i == n - 2:
                high.append(y)
                y = self.drop_penultimate(y)
            elif i == n - 1:
                high.append(y)
        logits = self.head(self.drop_last(y))
        return logits, {"high": high, "mid": mid, "low": low}


def sliding_window_predict_3d(
    net: nn.Module,
    volume: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    mode: str = "gaussian",
    progress: bool = False,
) -> torch.Tensor:
    """Whole-volume logits from a patch network with MONAI's ``sliding_window_inference``.

    Args:
        net: network mapping ``[B, C, d, h, w]`` patches to logits of the same spatial size.
        volume: ``[D, H, W]``, ``[C, D, H, W]`` or ``[B, C, D, H, W]`` (z, y, x order).
        patch_size: ``(d, h, w)`` patch size in voxels (volumes smaller than it are padded).
        overlap: fraction of overlap between neighbouring patches, in ``[0, 1)``.
        sw_batch_size: patches per forward pass.
        mode: blending, ``"gaussian"`` (default) or ``"constant"``.
    Returns:
        logits ``[B, out_channels, D, H, W]`` (``B = 1`` for 3D/4D input), on the input's device.
        Runs in eval mode without gradients; the network's train/eval mode is restored.
    """
    if volume.dim() == 3:
        volume = volume[None, None]
    elif volume.dim() == 4:
        volume = volume[None]
    elif volume.dim() != 5:
        raise ValueError(
            f"volume must be [D,H,W], [C,D,H,W] or [B,C,D,H,W], got {tuple(volume.shape)}"
        )
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise ConfigError(f"patch_size must be 3 positive ints (d, h, w), got {tuple(patch_size)}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = sliding_window_inference(
                volume,
                roi_size=tuple(int(p) for p in patch_size),
                sw_batch_size=sw_batch_size,
                predictor=lambda patch: net(patch),
                overlap=overlap,
                mode=mode,
                progress=progress,
            )
    finally:
        net.train(was_training)
    return torch.as_tensor(out)
