"""ResNet18 weight predictor and the weighted CT + pMRI fusion of the CT paper (Sec. II-D, eq. 11).

:class:`ResNet18Alpha` is a ResNet18 (He et al. 2016: 7x7 stem, max pool, four stages of two basic
blocks, global average pooling) followed by two fully connected layers and a sigmoid: it maps the CT
and its pseudo-MRI ``[B, 2, H, W]`` to one weight ``alpha`` in (0, 1) per image. It is written here
because torchvision does not work in this environment (and no pretrained weights are used: the
paper's input is a 2-channel CT + pMRI image, not an RGB photograph). The layer layout and counts
are torchvision's ``resnet18`` with ``in_channels`` instead of 3 and the 1000-class layer replaced by
the two FC layers (width 64: 11,173,376 convolution/BN parameters + the FC layers).

:class:`WeightedFusionNet` wraps the alpha net and a segmentation network taking two channels: its
input is ``[CT, pMRI]`` and the segmenter sees ``[(1 - alpha) CT, alpha pMRI]`` (eq. 11), during
training and at test time (the ``fuse`` recipe runs it as the segmentation network). Convolution +
batch-norm pairs sit in ``nn.Sequential`` blocks, so inference copies fold them
(:func:`cmedl.nets.predict.fold_batchnorm`).
"""

from __future__ import annotations

import torch
from torch import nn

from cmedl.errors import ConfigError
from cmedl.nets.predict import size_multiple


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Subsample2d(nn.Module):
    """Every ``stride``-th row and column: with a following 1x1 convolution, exactly torchvision's
    strided 1x1 projection shortcut (same weights). Written out because the strided 1x1 convolution's
    backward corrupts the heap on this machine's PyTorch 2.13 CPU build with channels_last inputs of
    4 channels (reproduced in isolation: ``Conv2d(4, 8, 1, stride=2)``, 8x8 input; wider ones pass)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]


def _projection(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    layers: list[nn.Module] = [Subsample2d(stride)] if stride != 1 else []
    return nn.Sequential(*layers, nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BN, identity (or 1x1 strided projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, 3, stride, True), _conv_bn(c_out, c_out, 3, 1, False))
        self.shortcut = _projection(c_in, c_out, stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet18Alpha(nn.Module):
    """ResNet18 + two FC layers + sigmoid: ``[B, C, H, W]`` -> ``alpha`` ``[B]`` in (0, 1).

    Args:
        in_channels: input channels (2: CT and pMRI).
        base_width: channels of the stem and first stage (ResNet18: 64; stages w, 2w, 4w, 8w).
        hidden: width of the first fully connected layer.
    """

    def __init__(self, in_channels: int = 2, base_width: int = 64, hidden: int = 256) -> None:
        super().__init__()
        if min(in_channels, base_width, hidden) < 1:
            raise ConfigError(f"ResNet18Alpha: channels must be >= 1, got {in_channels}, {base_width}, {hidden}")
        w = int(base_width)
        self.stem = nn.Sequential(_conv_bn(in_channels, w, 7, 2, True), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        c = w
        for i, width in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(c, width, stride), BasicBlock(width, width, 1)]
            c = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc[-1].weight)  # alpha starts at 0.5 for every input
        nn.init.zeros_(self.fc[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.stages(self.stem(x))).flatten(1)
        return torch.sigmoid(self.fc(f.float())).reshape(-1)


class WeightedFusionNet(nn.Module):
    """``[CT, pMRI]`` -> ``segmenter([(1 - alpha) CT, alpha pMRI])`` with ``alpha = alpha_net([CT, pMRI])``.

    ``dims`` and ``stride`` are the segmenter's (the alpha net pools globally: any size works).
    ``return_features`` is passed on to the segmenter; :attr:`last_alpha` holds the latest alphas
    (detached), for logging."""

    dims = 2

    def __init__(self, alpha_net: nn.Module, segmenter: nn.Module) -> None:
        super().__init__()
        self.alpha_net = alpha_net
        self.segmenter = segmenter
        self.stride = size_multiple(segmenter)
        self.last_alpha: torch.Tensor | None = None

    def weigh(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The segmenter's input ``[(1 - alpha) CT, alpha pMRI]`` and ``alpha`` ``[B]``."""
        if x.dim() != 4 or x.shape[1] != 2:
            raise ValueError(f"WeightedFusionNet expects [B, 2, H, W] (CT, pMRI), got {tuple(x.shape)}")
        alpha = self.alpha_net(x)
        a = alpha.to(x.dtype).reshape(-1, 1, 1, 1)
        return torch.cat([(1 - a) * x[:, :1], a * x[:, 1:]], dim=1), alpha

    def forward(self, x: torch.Tensor, return_features: bool = False):  # noqa: ANN201 - as the segmenter
        weighted, alpha = self.weigh(x)
        self.last_alpha = alpha.detach()
        return self.segmenter(weighted, return_features=return_features) if return_features else self.segmenter(weighted)


__all__ = ["BasicBlock", "ResNet18Alpha", "Subsample2d", "WeightedFusionNet"]
