"""Segmentation networks by name, hint-compatibility check and parameter counting.

Names: ``unet`` (:class:`cmedl.nets.unet.UNet2D`), ``densefcn57``
(:class:`cmedl.nets.densefcn.DenseFCN57`), ``mrrn`` (:class:`cmedl.nets.mrrn.MRRN`) for 2D slices,
and ``unet3d`` (:class:`cmedl.nets.unet3d.UNet3D`, ``dims = 3``) for 3D patches; the teacher-student
paper's 3D U-Nets ``ts-unet3d`` (students), ``ts-unet3d-teacher`` and ``ts-unet3d-do`` (dual output)
(:mod:`cmedl.nets.ts_unet3d`). Every class has
``name``, ``dims`` and ``stride`` attributes and ``forward(x, return_features=False)``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

from torch import nn

from cmedl.errors import ConfigError, did_you_mean
from cmedl.nets.base import SegmentationNet, check_hint_layers

#: initial foreground probability of the output layer (see build_segmentation_net)
DEFAULT_OUTPUT_PRIOR = 0.05

#: name -> (module, class name, default base width = the papers' width)
_NETS: dict[str, tuple[str, str, int]] = {
    "unet": ("cmedl.nets.unet", "UNet2D", 64),
    "densefcn57": ("cmedl.nets.densefcn", "DenseFCN57", 12),
    "mrrn": ("cmedl.nets.mrrn", "MRRN", 64),
    "unet3d": ("cmedl.nets.unet3d", "UNet3D", 32),
    # the teacher-student paper's networks (stride-2 convolutions, PReLU): students 4 levels, teacher 3,
    # dual-output student (segmentation + axial box channels); width 16 is our choice (not stated)
    "ts-unet3d": ("cmedl.nets.ts_unet3d", "TSUNet3D", 16),
    "ts-unet3d-teacher": ("cmedl.nets.ts_unet3d", "TSUNet3DTeacher", 16),
    "ts-unet3d-do": ("cmedl.nets.ts_unet3d", "TSUNet3DDual", 16),
}
SEGMENTATION_NETS_2D: tuple[str, ...] = ("unet", "densefcn57", "mrrn")
SEGMENTATION_NETS_3D: tuple[str, ...] = ("unet3d", "ts-unet3d", "ts-unet3d-teacher", "ts-unet3d-do")
SEGMENTATION_NETS: tuple[str, ...] = SEGMENTATION_NETS_2D + SEGMENTATION_NETS_3D


def segmentation_net_class(name: str) -> type[SegmentationNet]:
    """The class registered as ``name``; unknown names raise :class:`ConfigError` (did you mean)."""
    if name not in _NETS:
        raise ConfigError(did_you_mean(str(name), SEGMENTATION_NETS, "segmentation network"))
    module, cls, _ = _NETS[name]
    return getattr(importlib.import_module(module), cls)


def default_base_width(name: str) -> int:
    """The papers' width of network ``name`` (U-Net 64, DenseFCN57 growth 12, MRRN 64, 3D U-Net 32,
    teacher-student 3D U-Nets 16)."""
    segmentation_net_class(name)
    return _NETS[name][2]


def build_segmentation_net(
    name: str,
    in_channels: int = 1,
    out_channels: int = 1,
    base_width: int | None = None,
    hint_layers: str = "high",
    dropout: float = 0.0,
    dims: int | None = None,
    output_prior: float | None = DEFAULT_OUTPUT_PRIOR,
) -> SegmentationNet:
    """Build segmentation network ``name`` (``unet``, ``densefcn57``, ``mrrn``, ``unet3d``).

    ``base_width`` scales the network (U-Net: first block's channels; DenseFCN57: growth rate,
    first conv = 4 x growth; MRRN: first stream's channels; 3D U-Net: first block's channels);
    None -> the papers' width. ``dims`` (2 or 3), when given, must match the network's.
    ``output_prior``: initial tumour probability of every pixel: the output convolution's bias
    starts at ``log(p / (1 - p))`` (Lin et al. 2017, "focal loss" prior) instead of 0 (p = 0.5).
    Tumour pixels are a few percent of a patch; starting at p = 0.5 makes the first few hundred
    Dice steps spend themselves on removing false positives everywhere (measured on the phantom:
    U-Net width 16, 400 steps, validation Dice 0.20 with p = 0.5 vs 0.30 with p = 0.05).
    None keeps PyTorch's default initialisation.
    """
    cls = segmentation_net_class(name)
    check_hint_layers(hint_layers)
    if dims is not None and dims != cls.dims:
        choices = SEGMENTATION_NETS_2D if dims == 2 else SEGMENTATION_NETS_3D
        raise ConfigError(
            f"segmentation network '{name}' is {cls.dims}D, not {dims}D (choices: {', '.join(choices)})"
        )
    width = _NETS[name][2] if base_width is None else int(base_width)
    if width < 1:
        raise ConfigError(f"base_width must be >= 1, got {base_width}")
    net = cls(
        in_channels=in_channels,
        out_channels=out_channels,
        base_width=width,
        hint_layers=hint_layers,
        dropout=dropout,
    )
    if output_prior is not None:
        if not 0.0 < output_prior < 1.0:
            raise ConfigError(f"output_prior must be in (0, 1), got {output_prior}")
        bias = net.output_conv.bias
        if bias is not None:
            nn.init.constant_(bias, math.log(output_prior / (1.0 - output_prior)))
    return net


def build_segmentation_net_3d(
    name: str = "unet3d",
    in_channels: int = 1,
    out_channels: int = 1,
    base_width: int | None = None,
    hint_layers: str = "high",
    dropout: float = 0.0,
) -> SegmentationNet:
    """:func:`build_segmentation_net` restricted to 3D networks."""
    return build_segmentation_net(
        name, in_channels, out_channels, base_width, hint_layers, dropout, dims=3
    )


def check_hint_compatible(
    teacher: nn.Module, student: nn.Module, example_shape: Sequence[int]
) -> list[tuple[int, ...]]:
    """Check that teacher and student give hint features of identical shapes.

    ``example_shape`` is an input shape ``(B, C_in, *spatial)``. Runs both networks once
    (eval mode, no grad) and returns the common feature shapes ``[(C, *spatial), ...]``; raises
    :class:`ConfigError` listing both shape lists otherwise.
    """
    shapes = []
    for net in (teacher, student):
        if not isinstance(net, SegmentationNet):
            raise ConfigError(
                f"{type(net).__name__} is not a cmedl segmentation network (no hint features)"
            )
        shapes.append(net.hint_shapes(tuple(int(s) for s in example_shape)))
    if shapes[0] != shapes[1]:
        raise ConfigError(
            f"teacher ({type(teacher).__name__}, hint_layers={teacher.hint_layers}) and student "
            f"({type(student).__name__}, hint_layers={student.hint_layers}) hint features differ: "
            f"{shapes[0]} vs {shapes[1]}; use the same architecture, width and hint layers for both"
        )
    return shapes[0]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
