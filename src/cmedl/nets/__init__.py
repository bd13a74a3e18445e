"""Networks of cmedl: segmentation nets with hint features, CycleGAN generator/discriminator, VGG19.

Segmentation networks (``build_segmentation_net(name, ...)``: ``unet``, ``densefcn57``, ``mrrn``;
``unet3d`` for 3D patches) map ``[B, C_in, H, W]`` to logits ``[B, 1, H, W]`` (no sigmoid) and,
with ``forward(x, return_features=True)``, return ``(logits, [f1, f2])``: the hint features chosen
by ``hint_layers`` (``"high"``: last two layers, default; ``"mid"``: bottleneck; ``"low"``: first
two convolutions). Inputs of any size are padded internally to the network's ``stride`` and the
outputs cropped back.
"""

from cmedl.nets.base import HINT_OPTIONS, SegmentationNet
from cmedl.nets.cyclegan import PatchDiscriminator, ResnetGenerator
from cmedl.nets.densefcn import DenseFCN57
from cmedl.nets.mrrn import MRRN
from cmedl.nets.registry import (
    SEGMENTATION_NETS,
    SEGMENTATION_NETS_2D,
    SEGMENTATION_NETS_3D,
    build_segmentation_net,
    build_segmentation_net_3d,
    check_hint_compatible,
    count_parameters,
    default_base_width,
)
from cmedl.nets.unet import UNet2D
from cmedl.nets.unet3d import UNet3D, sliding_window_predict_3d
from cmedl.nets.vgg import VGG19Features

__all__ = [
    "HINT_OPTIONS",
    "MRRN",
    "SEGMENTATION_NETS",
    "SEGMENTATION_NETS_2D",
    "SEGMENTATION_NETS_3D",
    "DenseFCN57",
    "PatchDiscriminator",
    "ResnetGenerator",
    "SegmentationNet",
    "UNet2D",
    "UNet3D",
    "VGG19Features",
    "build_segmentation_net",
    "build_segmentation_net_3d",
    "check_hint_compatible",
    "count_parameters",
    "default_base_width",
    "sliding_window_predict_3d",
]
