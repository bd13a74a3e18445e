"""Shared machinery of the 2D segmentation networks (U-Net, DenseFCN57, MRRN).

Every segmentation network subclasses :class:`SegmentationNet` and implements
:meth:`SegmentationNet._forward_padded`, which sees an input whose height and width are multiples
of :attr:`SegmentationNet.stride` and returns the logits and the hint features of every hint
option (``"high"``, ``"mid"``, ``"low"``). :meth:`SegmentationNet.forward` does the rest:

* it pads ``x`` ``[B, C, H, W]`` on the bottom/right only (reflection; replication when the image
  is too small to reflect) up to the next multiple of ``stride``, so that the grid of every
  feature map stays aligned with the input's top-left corner, and crops the logits back to
  ``[B, 1, H, W]`` and each hint feature at scale ``s`` (``s = padded H / feature H``) to
  ``ceil(H / s) x ceil(W / s)``;
* it returns ``logits`` or ``(logits, [f1, f2])`` where the features are selected by
  ``hint_layers``.

Logits are raw scores (no sigmoid): the loss / inference code applies the sigmoid.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cmedl.errors import ConfigError, did_you_mean

HintLayers = Literal["high", "mid", "low"]
HINT_OPTIONS: tuple[str, ...] = ("high", "mid", "low")


def check_hint_layers(hint_layers: str) -> str:
    """Return ``hint_layers`` or raise :class:`ConfigError` with a did-you-mean message."""
    if hint_layers not in HINT_OPTIONS:
        raise ConfigError(did_you_mean(str(hint_layers), HINT_OPTIONS, "hint_layers"))
    return hint_layers


def check_dropout(dropout: float) -> float:
    """Return ``dropout`` as float or raise :class:`ConfigError` if it is not in ``[0, 1)``."""
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    return float(dropout)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the trailing spatial dims of ``x`` (2 or 3 of them) at their high end to a multiple.

    Reflection padding is used where the image is large enough (a pad smaller than the
    dimension), replication otherwise, so the padded border resembles the image instead of a
    constant. Returns the padded tensor and the original spatial size.
    """
    spatial = tuple(int(s) for s in x.shape[2:])
    pads = [(-s) % multiple for s in spatial]
    if not any(pads):
        return x, spatial
    # F.pad takes pairs for the last dim first.
    pad_arg: list[int] = []
    for p in reversed(pads):
        pad_arg += [0, p]
    mode = "reflect" if all(p < s for p, s in zip(pads, spatial)) else "replicate"
    return F.pad(x, pad_arg, mode=mode), spatial


def crop_to(
    feature: torch.Tensor, padded: tuple[int, ...], original: tuple[int, ...]
) -> torch.Tensor:
    """Crop a feature map computed on a padded input back to the unpadded extent.

    A feature of spatial size ``f`` computed on an input of padded size ``P`` has scale
    ``s = P / f``; the part that covers the original size ``n`` is ``ceil(n / s)`` pixels (the
    top-left aligned part, since padding is only added at the high end).
    """
    if padded == original:
        return feature
    index: list[slice] = [slice(None), slice(None)]
    for f, p, n in zip(feature.shape[2:], padded, original):
        scale = p / f
        index.append(slice(0, math.ceil(n / scale - 1e-9)))
    return feature[tuple(index)]


class SegmentationNet(nn.Module):
    """Base class: padding/cropping, hint-feature selection and MC dropout.

    Subclasses set :attr:`name` and :attr:`stride` and implement :meth:`_forward_padded`.
    """

    #: registry name (``build_segmentation_net(name)``)
    name: ClassVar[str] = ""
    #: spatial dims (2 for slice networks, 3 for volumetric ones)
    dims: ClassVar[int] = 2
    #: the input size multiple the layers need (2 ** number of poolings); other sizes are padded
    stride: int = 16

    def __init__(self, hint_layers: str = "high", dropout: float = 0.0) -> None:
        super().__init__()
        self.hint_layers = check_hint_layers(hint_layers)
        self.dropout_p = check_dropout(dropout)

    def _forward_padded(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Logits and ``{"high": [...], "mid": [...], "low": [...]}`` for a stride-aligned input.

        Subclasses may compute only the features of ``self.hint_layers`` and leave the others out.
        """
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Segment ``x`` ``[B, C_in, *spatial]``.

        Returns logits ``[B, out_channels, *spatial]``, or ``(logits, [f1, f2])`` with the hint
        features of ``hint_layers`` (see the class docstring of each network for their shapes)
        when ``return_features`` is true.
        """
        if x.dim() != 2 + self.dims:
            raise ValueError(
                f"{type(self).__name__} expects a {2 + self.dims}D tensor [B, C, *spatial], "
                f"got shape {tuple(x.shape)}"
            )
        xp, original = pad_to_multiple(x, self.stride)
        padded = tuple(int(s) for s in xp.shape[2:])
        logits, features = self._forward_padded(xp)
        logits = crop_to(logits, padded, original)
        if not return_features:
            return logits
        feats = [crop_to(f, padded, original) for f in features[self.hint_layers]]
        return logits, feats

    def enable_mc_dropout(self) -> int:
        """Put the dropout layers (only them) in training mode for test-time MC dropout.

        Call it after ``model.eval()`` (``eval()``/``train()`` reset it). Returns the number of
        dropout layers switched on (0 when the network was built with ``dropout=0``).
        """
        n = 0
        for m in self.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
                m.train()
                n += 1
        return n

    def hint_shapes(self, example_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Shapes ``[(C, *spatial), ...]`` of the hint features for an input of ``example_shape``
        ``(B, C_in, *spatial)`` (computed with a forward pass on zeros in eval mode, no grad)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                param = next(self.parameters())
                x = torch.zeros(example_shape, dtype=param.dtype, device=param.device)
                _, feats = self(x, return_features=True)
        finally:
            self.train(was_training)
        return [tuple(int(s) for s in f.shape[1:]) for f in feats]


def make_dropout(p: float, dims: int = 2) -> nn.Module:
    """Channel dropout (``Dropout2d``/``Dropout3d``) or ``Identity`` when ``p == 0``."""
    if p <= 0.0:
        return nn.Identity()
    return nn.Dropout2d(p) if dims == 2 else nn.Dropout3d(p)
