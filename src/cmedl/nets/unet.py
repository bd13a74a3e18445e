"""2D U-Net of the CMEDL papers (4 max-poolings, 4 bilinear up-samplings, 13.39 M parameters).

Layout at ``base_width = w`` (paper: ``w = 64``), input ``[B, C_in, H, W]``::

    inc    DoubleConv(C_in -> w)          H      x W        ("low" hints: its two convs)
    down1  MaxPool + DoubleConv(w -> 2w)  H/2
    down2  MaxPool + DoubleConv(2w -> 4w) H/4
    down3  MaxPool + DoubleConv(4w -> 8w) H/8
    down4  MaxPool + DoubleConv(8w -> 8w) H/16     ("mid" hints: its two convs = the bottleneck)
    up1    bilinear x2, concat down3, DoubleConv(16w -> 4w)  H/8
    up2    bilinear x2, concat down2, DoubleConv(8w -> 2w)   H/4
    up3    bilinear x2, concat down1, DoubleConv(4w -> w)    H/2  ("high" hint 1)
    up4    bilinear x2, concat inc,   DoubleConv(2w -> w)    H    ("high" hint 2)
    outc   1x1 conv (w -> out_channels)  -> logits

``DoubleConv`` is (3x3 conv with bias, BN, ReLU) x 2. With bilinear up-sampling (no learned
up-convolution) this gives exactly 13,394,177 parameters at ``w = 64`` (papers: 13.39 M; a
transposed-convolution decoder would give 14.79 M), and the papers' hint shapes
128x128x64 and 256x256x64 at 256x256 input.

Hint features (``forward(x, return_features=True)``), at input ``H x W`` (multiple of 16):

* ``"high"``: ``[up3 output (w, H/2, W/2), up4 output (w, H, W)]``
* ``"mid"``: the bottleneck's two convolutions ``[(8w, H/16, W/16), (8w, H/16, W/16)]``
* ``"low"``: the first two convolutions ``[(w, H, W), (w, H, W)]``

Features are taken after BN + ReLU and before dropout. ``dropout > 0`` adds channel dropout
after ``up3`` and ``up4`` (the last two layers, used for test-time MC dropout).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cmedl.nets.base import SegmentationNet, make_dropout


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (with bias, as in the papers' 13.39 M count), batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Module):
    """Two :class:`ConvBNReLU`; returns both outputs (the first is a hint candidate)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv1(x)
        return a, self.conv2(a)


class UNet2D(SegmentationNet):
    """2D U-Net with hint features; see the module docstring for the layout and shapes.

    Args:
        in_channels: input channels ``C_in`` (1 for CT/CBCT/MRI slices).
        out_channels: logit channels (1: tumour).
        base_width: channels of the first block ``w`` (papers: 64; demo: 16).
        hint_layers: ``"high"`` (default, papers), ``"mid"`` or ``"low"``.
        dropout: channel-dropout probability after the last two decoder blocks (0: none).
    """

    name: ClassVar[str] = "unet"
    stride = 16

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 64,
        hint_layers: str = "high",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(hint_layers, dropout)
        w = int(base_width)
        self.in_channels, self.out_channels, self.base_width = in_channels, out_channels, w
        self.inc = DoubleConv(in_channels, w)
        self.down1 = DoubleConv(w, 2 * w)
        self.down2 = DoubleConv(2 * w, 4 * w)
        self.down3 = DoubleConv(4 * w, 8 * w)
        self.down4 = DoubleConv(8 * w, 8 * w)
        self.up1 = DoubleConv(16 * w, 4 * w)
        self.up2 = DoubleConv(8 * w, 2 * w)
        self.up3 = DoubleConv(4 * w, w)
        self.up4 = DoubleConv(2 * w, w)
        self.drop3 = make_dropout(self.dropout_p)
        self.drop4 = make_dropout(self.dropout_p)
        self.outc = nn.Conv2d(w, out_channels, 1)

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([skip, x], dim=1)

    @property
    def output_conv(self) -> nn.Module:
        """The final 1x1 convolution producing the logits."""
        return self.outc

    def _forward_padded(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        l1, x1 = self.inc(x)
        _, x2 = self.down1(F.max_pool2d(x1, 2))
        _, x3 = self.down2(F.max_pool2d(x2, 2))
        _, x4 = self.down3(F.max_pool2d(x3, 2))
        m1, x5 = self.down4(F.max_pool2d(x4, 2))
        _, y = self.up1(self._up_cat(x5, x4))
        _, y = self.up2(self._up_cat(y, x3))
        _, h1 = self.up3(self._up_cat(y, x2))
        _, h2 = self.up4(self._up_cat(self.drop3(h1), x1))
        logits = self.outc(self.drop4(h2))
        return logits, {"high": [h1, h2], "mid": [m1, x5], "low": [l1, x1]}
