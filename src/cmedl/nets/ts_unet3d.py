"""The 3D U-Nets of the teacher-student paper (Fredriksen et al., Sec. 2.4 and Fig. 2).

:class:`TSUNet3D` works on patches ``[B, C_in, D, H, W]`` (``D`` = slices, z first, like
:class:`cmedl.io.Volume` arrays). Unlike :class:`cmedl.nets.unet3d.UNet3D` it downsamples with
stride-2 3x3x3 convolutions (no max pooling) and uses PReLU activations:

- encoder level 0: two (conv 3x3x3, norm, PReLU) blocks at width ``w``; level ``l = 1..levels``:
  a stride-2 (conv, norm, PReLU) block then a stride-1 one, width ``w * 2**l`` (capped at
  ``16 w``); the last level is the bottleneck;
- decoder (per level, deepest first): a stride-2 transposed convolution to the skip's width,
  concatenation with the skip, two (conv, norm, PReLU) blocks; a 1x1x1 head gives the logits.

The teacher has 3 levels (128^3 -> 16^3 in the paper), the students 4. Normalisation is instance
norm: the paper trains with batch size 1 (accumulated gradients), where batch statistics of one
sample would differ between training and inference.

``dual_output=True`` is the paper's dual-output (DO) student: a second decoder branch, fed by the
same encoder, predicts the axial bounding-box mask of the tumour; the two branches' logits are
concatenated, so the output is ``[B, 2, D, H, W]`` (channel 0: segmentation, channel 1: box).
Whole-volume prediction (:func:`cmedl.nets.predict.predict_volume_3d`) reads channel 0.

Hint features (the common :class:`~cmedl.nets.base.SegmentationNet` interface): ``"high"`` the
last two decoder outputs, ``"mid"`` the bottleneck's two blocks, ``"low"`` the first two blocks.
Any patch size works (padded to ``2**levels`` and cropped back).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from cmedl.errors import ConfigError
from cmedl.nets.base import SegmentationNet, make_dropout
from cmedl.nets.conv3d import Conv3d

#: initial tumour (and box) probability of the output layer, as ``build_segmentation_net`` does
OUTPUT_PRIOR = 0.05


def conv_block(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 convolution (stride 1 or 2), instance norm, PReLU (one slope per channel)."""
    return nn.Sequential(
        Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm3d(out_ch, affine=True),
        nn.PReLU(out_ch),
    )


class _Decoder(nn.Module):
    """One decoder branch: per level up-convolution, skip concatenation, two blocks; 1x1x1 head."""

    def __init__(self, widths: list[int], out_channels: int, dropout: float) -> None:
        super().__init__()
        levels = len(widths) - 1
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for lvl in range(levels, 0, -1):
            self.ups.append(nn.ConvTranspose3d(widths[lvl], widths[lvl - 1], 2, stride=2))
            self.blocks.append(nn.Sequential(conv_block(2 * widths[lvl - 1], widths[lvl - 1]),
                                             conv_block(widths[lvl - 1], widths[lvl - 1])))
        self.drop_penultimate = make_dropout(dropout, dims=3)
        self.drop_last = make_dropout(dropout, dims=3)
        self.head = Conv3d(widths[0], out_channels, 1)
        nn.init.constant_(self.head.bias, math.log(OUTPUT_PRIOR / (1.0 - OUTPUT_PRIOR)))

    def forward(self, y: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        high: list[torch.Tensor] = []
        n = len(self.blocks)
        for i, (up, block, skip) in enumerate(zip(self.ups, self.blocks, reversed(skips))):
            y = block(torch.cat([skip, up(y)], dim=1))
            if i == n - 2:
                high.append(y)
                y = self.drop_penultimate(y)
            elif i == n - 1:
                high.append(y)
        if n == 1:  # one level: the only decoder output counts twice (hint layers need two maps)
            high = [y, y]
        return self.head(self.drop_last(y)), high


class TSUNet3D(SegmentationNet):
    """The paper's 3D U-Net: ``[B, C_in, D, H, W]`` -> logits ``[B, out_channels (x2 if dual), D, H, W]``.

    Args:
        in_channels: input channels (box-guided teacher: 2, CT and box mask).
        out_channels: logit channels of each decoder branch (1).
        base_width: first level's channels ``w``.
        levels: stride-2 downsamplings (teacher 3, students 4); ``stride = 2**levels``.
        hint_layers: ``"high"`` (default), ``"mid"``, ``"low"``.
        dropout: channel dropout after the last two decoder blocks (0: none).
        dual_output: add the box branch (the DO student); output channels ``2 * out_channels``.
    """

    name: ClassVar[str] = "ts-unet3d"
    dims: ClassVar[int] = 3
    #: the students' depth; the teacher is built with ``levels=3``
    default_levels: ClassVar[int] = 4

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_width: int = 16, levels: int | None = None,
                 hint_layers: str = "high", dropout: float = 0.0, dual_output: bool = False) -> None:
        super().__init__(hint_layers, dropout)
        levels = self.default_levels if levels is None else int(levels)
        if levels not in (1, 2, 3, 4, 5):
            raise ConfigError(f"TSUNet3D: levels must be 1..5, got {levels}")
        w = int(base_width)
        if w < 1:
            raise ConfigError(f"base_width must be >= 1, got {base_width}")
        self.in_channels, self.base_width, self.levels = in_channels, w, levels
        self.dual_output = bool(dual_output)
        self.out_channels = out_channels * (2 if dual_output else 1)
        self.stride = 2**levels
        widths = [w * min(2**lvl, 16) for lvl in range(levels + 1)]
        self.encoders = nn.ModuleList([nn.Sequential(conv_block(in_channels, widths[0]), conv_block(widths[0], widths[0]))])
        for lvl in range(1, levels + 1):
            self.encoders.append(nn.Sequential(conv_block(widths[lvl - 1], widths[lvl], stride=2),
                                               conv_block(widths[lvl], widths[lvl])))
        self.decoder = _Decoder(widths, out_channels, self.dropout_p)
        self.box_decoder = _Decoder(widths, out_channels, self.dropout_p) if dual_output else None

    @property
    def output_conv(self) -> nn.Module:
        """The segmentation branch's final 1x1x1 convolution."""
        return self.decoder.head

    def _forward_padded(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        skips: list[torch.Tensor] = []
        first = self.encoders[0]
        low1 = first[0](x)
        y = first[1](low1)
        low = [low1, y]
        mid: list[torch.Tensor] = []
        for enc in self.encoders[1:]:
            skips.append(y)
            m1 = enc[0](y)
            y = enc[1](m1)
            mid = [m1, y]
        logits, high = self.decoder(y, skips)
        if self.box_decoder is not None:
            box_logits, _ = self.box_decoder(y, skips)
            logits = torch.cat([logits, box_logits], dim=1)
        return logits, {"high": high, "mid": mid, "low": low}


class TSUNet3DTeacher(TSUNet3D):
    """The teacher's depth (3 levels) under its own registry name."""

    name: ClassVar[str] = "ts-unet3d-teacher"
    default_levels: ClassVar[int] = 3


class TSUNet3DDual(TSUNet3D):
    """The dual-output (DO) student under its own registry name (``dual_output=True``)."""

    name: ClassVar[str] = "ts-unet3d-do"

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_width: int = 16, levels: int | None = None,
                 hint_layers: str = "high", dropout: float = 0.0) -> None:
        super().__init__(in_channels, out_channels, base_width, levels, hint_layers, dropout, dual_output=True)


def build_ts_unet3d(in_channels: int = 1, base_width: int | None = None, levels: int = 4, dual_output: bool = False,
                    hint_layers: str = "high", dropout: float = 0.0) -> TSUNet3D:
    """A :class:`TSUNet3D` of any depth (the registry names fix it: teacher 3, students 4)."""
    return TSUNet3D(in_channels, 1, 16 if base_width is None else int(base_width), levels, hint_layers, dropout,
                    dual_output)


__all__ = ["TSUNet3D", "TSUNet3DDual", "TSUNet3DTeacher", "build_ts_unet3d", "conv_block"]
