"""DenseFCN57: the FC-DenseNet ("one hundred layers tiramisu", Jegou et al. 2017) of the papers.

FC-DenseNet57 configuration: dense blocks of 4 layers everywhere (5 down, a 4-layer bottleneck,
5 up), growth rate ``k = 12``, a first 3x3 convolution with ``4k = 48`` channels, 5 transitions
down (BN, ReLU, 1x1 conv, [dropout], 2x2 max-pool) and 5 transitions up (3x3 transposed conv,
stride 2). A dense layer is BN, ReLU, 3x3 conv (``k`` channels). As in the tiramisu, up-path
blocks pass only their new ``4k`` features to the next transition up, except the last block whose
whole stack (``skip + upsampled + 4k``) feeds the final 1x1 convolution.

At ``k = 12`` and one output channel: 1,374,001 parameters (papers: 1.37 M; FC-DenseNet56's
15-layer bottleneck would give 1.5 M). Channels at 256x256 input: skips 96 (256), 144 (128),
192 (64), 240 (32), 288 (16); bottleneck 48 new features at 8x8.

Hint features at input ``H x W`` (multiple of 32), ``k = 12``:

* ``"high"`` (papers): ``[(228, H/2, W/2), (192, H, W)]`` -- the penultimate up block's dense
  stack as it enters its last layer (skip 144 + upsampled 48 + 3 x 12 = 228, which is the
  papers' 128x128x228) and the last block's full output stack (144 + 48 = 192).
  In general ``(12k + 4k + 3k = 19k, H/2)`` and ``(12k + 4k = 16k, H)``.
* ``"mid"``: the bottleneck at ``H/32``: its input (the last transition down, 24k = 288) and
  its 4k = 48 new features.
* ``"low"``: the first two convolutions: first conv (4k = 48, H) and the first dense layer
  (k = 12, H).

``dropout > 0`` puts channel dropout after the last two up blocks (test-time MC dropout of the
last two layers, as in the CBCT paper); the tiramisu's per-layer dropout of 0.2 is not used
(the papers train with batch norm and augmentation).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from cmedl.nets.base import SegmentationNet, make_dropout


class DenseLayer(nn.Sequential):
    """BN, ReLU, 3x3 conv producing ``growth`` channels."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth, 3, padding=1, bias=True),
        )


class DenseBlock(nn.Module):
    """``n_layers`` dense layers; each sees the concatenation of the input and all previous outputs.

    ``forward`` returns ``(stack, new, last_input)``: the full concatenation
    ``[input, new_1..new_n]``, the new features ``[new_1..new_n]`` and the stack entering the
    last layer (``[input, new_1..new_{n-1}]``).
    """

    def __init__(self, in_channels: int, growth: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth, growth) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new: list[torch.Tensor] = []
        last_input = x
        for layer in self.layers:
            last_input = x
            out = layer(x)
            new.append(out)
            x = torch.cat([x, out], dim=1)
        return x, torch.cat(new, dim=1), last_input


class TransitionDown(nn.Sequential):
    """BN, ReLU, 1x1 conv (same channels), 2x2 max-pool."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=True),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """3x3 transposed convolution, stride 2, cropped to the skip connection's size, then concat."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=0, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # 2n + 1 pixels; keep the first 2n (top-left aligned)
        y = y[:, :, : skip.shape[2], : skip.shape[3]]
        return torch.cat([y, skip], dim=1)


class DenseFCN57(SegmentationNet):
    """FC-DenseNet57 with hint features; see the module docstring for layout and shapes.

    Args:
        in_channels: input channels.
        out_channels: logit channels (1).
        base_width: growth rate ``k`` (papers 12); the first convolution has ``4k`` channels.
        hint_layers: ``"high"`` (default), ``"mid"``, ``"low"``.
        dropout: channel dropout after the last two up blocks (0: none).
    """

    name: ClassVar[str] = "densefcn57"
    stride = 32
    n_layers: ClassVar[int] = 4
    n_levels: ClassVar[int] = 5

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 12,
        hint_layers: str = "high",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(hint_layers, dropout)
        k, n = int(base_width), self.n_layers
        self.in_channels, self.out_channels, self.base_width = in_channels, out_channels, k
        self.first_conv = nn.Conv2d(in_channels, 4 * k, 3, padding=1, bias=True)
        cur = 4 * k
        skips: list[int] = []
        self.down_blocks = nn.ModuleList()
        self.trans_down = nn.ModuleList()
        for _ in range(self.n_levels):
            self.down_blocks.append(DenseBlock(cur, k, n))
            cur += n * k
            skips.append(cur)
            self.trans_down.append(TransitionDown(cur))
        self.bottleneck = DenseBlock(cur, k, n)
        prev = n * k
        self.trans_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for skip in reversed(skips):
            self.trans_up.append(TransitionUp(prev))
            cur = prev + skip
            self.up_blocks.append(DenseBlock(cur, k, n))
            prev = n * k
        cur += n * k  # the last block passes its whole stack on
        self.drop_penultimate = make_dropout(self.dropout_p)
        self.drop_last = make_dropout(self.dropout_p)
        self.final_conv = nn.Conv2d(cur, out_channels, 1, bias=True)

    @property
    def output_conv(self) -> nn.Module:
        """The final 1x1 convolution producing the logits."""
        return self.final_conv

    def _forward_padded(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        first = self.first_conv(x)
        y = first
        skips: list[torch.Tensor] = []
        low2: torch.Tensor | None = None
        for block, td in zip(self.down_blocks, self.trans_down):
            y, new, _ = block(y)
            if low2 is None:
                low2 = new[:, : self.base_width]  # output of the first dense layer
            skips.append(y)
            y = td(y)
        bottleneck_in = y
        _, y, _ = self.bottleneck(y)
        mid = [bottleneck_in, y]
        high1 = y
        n_up = len(self.up_blocks)
        for i, (tu, block, skip) in enumerate(zip(self.trans_up, self.up_blocks, reversed(skips))):
            y = tu(y, skip)
            stack, new, last_input = block(y)
            if i == n_up - 2:
                high1 = last_input
                y = self.drop_penultimate(new)
            elif i == n_up - 1:
                y = stack
            else:
                y = new
        logits = self.final_conv(self.drop_last(y))
        assert low2 is not None
        return logits, {"high": [high1, y], "mid": mid, "low": [first, low2]}
