"""MRRN: multiple resolution residually connected network (Jiang et al., IEEE TMI 2019).

Written from the papers' description (no reference code is available offline): residual feature
streams carry feature maps at fixed resolutions alongside the encoder-decoder path; residual
connection units (RCU) read a stream and write back to it; RCUs are grouped in RCU blocks (RCUB);
4 max-poolings and 4 up-poolings. Widths ``c = [w, 2w, 4w, 8w, 8w]`` for levels 0..4 (level ``l``
at ``H / 2**l``), residual streams of ``w / 2`` channels (32 at ``w = 64``, FRRN's stream width).

**RCU** (level ``k``, stream ``s_j`` at level ``j <= k``, input ``y`` with ``c_k`` channels)::

    p   = maxpool(s_j, 2**(k-j))                 # stream brought to the current resolution
    h   = ReLU(BN(conv3x3(concat(y, p))))       # output 1 -> the next RCU / layer
    s_j = s_j + upsample_nearest(conv1x1(h), 2**(k-j))   # output 2 -> back into the stream

An RCU that is the last reader of its stream has no second output.

**Layout** (``H`` a multiple of 16)::

    stem     conv-BN-ReLU x2 (C_in -> w) at H;  stream s_0 = conv1x1(stem) (w/2 ch, H)
    enc k=1..4: maxpool, conv-BN-ReLU (c_{k-1} -> c_k), RCUB = RCU(y, s_{k-1});
             then (k < 4) a new stream s_k = conv1x1(y) at H/2**k
    dec k=3..0: bilinear x2 up-pool, conv-BN-ReLU (c_{k+1} -> c_k),
             RCUB = RCU(y, s_k) [last reader of s_k], RCU(y, s_{k-1}), ..., RCU(y, s_0)
             (streams processed from the nearest resolution to the original one)
    head     conv1x1 (w -> out_channels) on the level-0 decoder output

At ``w = 64`` this has 26,322,625 parameters (papers: 25 M; +5%) and the papers' hint shapes
128x128x128 and 256x256x64 at 256x256 input.

Hint features at input ``H x W``:

* ``"high"``: the decoder outputs at levels 1 and 0: ``[(2w, H/2, W/2), (w, H, W)]``
* ``"mid"``: the bottleneck: after its conv and after its RCU: ``[(8w, H/16, W/16)] * 2``
* ``"low"``: the two stem convolutions: ``[(w, H, W), (w, H, W)]``

``dropout > 0`` adds channel dropout after the last two decoder levels (MC dropout).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cmedl.nets.base import SegmentationNet, make_dropout
from cmedl.nets.unet import ConvBNReLU


class RCU(nn.Module):
    """Residual connection unit; see the module docstring.

    Args:
        channels: channels of the main path ``y`` (in and out).
        stream_channels: channels of the residual stream.
        scale: resolution ratio stream / main path (a power of 2, 1 for the same level).
        update_stream: whether the unit writes back to the stream (second output).
    """

    def __init__(
        self, channels: int, stream_channels: int, scale: int, update_stream: bool = True
    ) -> None:
        super().__init__()
        self.scale = scale
        self.conv = ConvBNReLU(channels + stream_channels, channels)
        self.to_stream = nn.Conv2d(channels, stream_channels, 1) if update_stream else None

    def forward(self, y: torch.Tensor, stream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = F.max_pool2d(stream, self.scale) if self.scale > 1 else stream
        h = self.conv(torch.cat([y, p], dim=1))
        if self.to_stream is None:
            return h, stream
        r = self.to_stream(h)
        if self.scale > 1:
            r = F.interpolate(r, scale_factor=self.scale, mode="nearest")
        return h, stream + r


class MRRN(SegmentationNet):
    """Multiple resolution residual network with hint features (see the module docstring).

    Args:
        in_channels: input channels.
        out_channels: logit channels (1).
        base_width: level-0 width ``w`` (papers' size: 64); streams have ``max(1, w // 2)``.
        hint_layers: ``"high"`` (default), ``"mid"``, ``"low"``.
        dropout: channel dropout after the last two decoder levels (0: none).
    """

    name: ClassVar[str] = "mrrn"
    stride = 16
    levels: ClassVar[int] = 4

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
        c = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        sc = max(1, w // 2)
        self.widths, self.stream_channels = tuple(c), sc
        self.stem1 = ConvBNReLU(in_channels, w)
        self.stem2 = ConvBNReLU(w, w)
        L = self.levels
        # stream s_k is created from the encoder output at level k (k = 0..L-1)
        self.make_stream = nn.ModuleList(nn.Conv2d(c[k], sc, 1) for k in range(L))
        self.enc_conv = nn.ModuleList(ConvBNReLU(c[k - 1], c[k]) for k in range(1, L + 1))
        self.enc_rcu = nn.ModuleList(RCU(c[k], sc, 2) for k in range(1, L + 1))
        self.dec_conv = nn.ModuleList(ConvBNReLU(c[k + 1], c[k]) for k in range(L - 1, -1, -1))
        # decoder level k: RCU with s_k (same resolution, last reader), then s_{k-1} .. s_0
        self.dec_rcub = nn.ModuleList(
            nn.ModuleList(
                RCU(c[k], sc, 2 ** (k - j), update_stream=j < k) for j in range(k, -1, -1)
            )
            for k in range(L - 1, -1, -1)
        )
        self.drop1 = make_dropout(self.dropout_p)
        self.drop0 = make_dropout(self.dropout_p)
        self.head = nn.Conv2d(w, out_channels, 1)

    @property
    def output_conv(self) -> nn.Module:
        """The final 1x1 convolution producing the logits."""
        return self.head

    def _forward_padded(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        L = self.levels
        low1 = self.stem1(x)
        low2 = self.stem2(low1)
        y = low2
        streams = [self.make_stream[0](y)]
        mid: list[torch.Tensor] = []
        for k in range(1, L + 1):
            y = self.enc_conv[k - 1](F.max_pool2d(y, 2))
            if k == L:
                mid.append(y)
            y, streams[k - 1] = self.enc_rcu[k - 1](y, streams[k - 1])
            if k < L:
                streams.append(self.make_stream[k](y))
        mid.append(y)
        high: list[torch.Tensor] = []
        for i, k in enumerate(range(L - 1, -1, -1)):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = self.dec_conv[i](y)
            for rcu, j in zip(self.dec_rcub[i], range(k, -1, -1)):
                y, streams[j] = rcu(y, streams[j])
            if k == 1:
                high.append(y)
                y = self.drop1(y)
            elif k == 0:
                high.append(y)
        logits = self.head(self.drop0(y))
        return logits, {"high": high, "mid": mid, "low": [low1, low2]}
