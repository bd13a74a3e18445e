"""Frozen VGG19 feature extractor for the contextual loss (torchvision ``vgg19().features`` layout).

The module indices are exactly torchvision's (convolutions at ``0, 2, 5, 7, 10, ...``, ReLU at
``conv + 1``, max-pools at ``4, 9, 18, 27, 36``), so a torchvision ``vgg19`` ImageNet state-dict
file (``torch.save(torchvision.models.vgg19(weights=...).state_dict(), PATH)``) loads: keys
``features.N.weight`` / ``features.N.bias`` or bare ``N.weight`` / ``N.bias`` are accepted;
``classifier.*`` keys are ignored. torchvision itself is not needed.

No weights can be downloaded. Without a file the network is initialised deterministically
(Kaiming-normal, fan-out, ReLU gain -- torchvision's VGG init -- from a generator seeded with 0,
zero biases), :attr:`VGG19Features.pretrained` is False and a warning is logged: the contextual
loss then compares random (but fixed) VGG features, which still measure local structure but are
not the ImageNet features of the papers.

Input: images ``[B, C, H, W]`` in ``[-1, 1]`` (``C = 1`` grayscale, repeated to RGB; or ``C = 3``),
mapped to ``[0, 1]`` and normalised with the ImageNet mean/std. Output: ``{layer name: features}``
in the order of ``layers``, each ``[B, C_l, H / 2**p, W / 2**p]`` (``p`` = pools before the layer).
Taps are taken after the ReLU (``conv3_4`` means ``relu3_4``) unless ``pre_relu=True``.
Only the layers up to the deepest requested one are built and run. Parameters are frozen
(``requires_grad=False``) but gradients flow to the input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cmedl.errors import ConfigError, InputError, did_you_mean

logger = logging.getLogger(__name__)

#: torchvision's VGG19 configuration "E" ("M" = 2x2 max-pool).
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


def _layer_table() -> tuple[dict[str, int], list[tuple[int, int, int]]]:
    """``({"conv1_1": 0, ...}, [(module index, in_ch, out_ch) of every conv])``."""
    names: dict[str, int] = {}
    convs: list[tuple[int, int, int]] = []
    idx, block, within, in_ch = 0, 1, 0, 3
    for v in VGG19_CFG:
        if v == "M":
            idx += 1
            block, within = block + 1, 0
        else:
            within += 1
            names[f"conv{block}_{within}"] = idx
            convs.append((idx, in_ch, int(v)))
            in_ch = int(v)
            idx += 2  # conv, relu
    return names, convs


#: layer name -> module index of its convolution in ``vgg19().features``.
VGG19_LAYERS, VGG19_CONVS = _layer_table()
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_state_dict_keys(prefix: str = "features.") -> list[str]:
    """The parameter keys of torchvision's ``vgg19().features`` (``features.0.weight``, ...)."""
    return [f"{prefix}{i}.{p}" for i, _, _ in VGG19_CONVS for p in ("weight", "bias")]


class VGG19Features(nn.Module):
    """Frozen VGG19 feature taps; see the module docstring.

    Args:
        weights_path: torchvision-style VGG19 state dict (``.pth``); None -> seeded random init.
        layers: names ``convB_I`` (``conv1_1`` ... ``conv5_4``) to return.
        in_channels: 1 (grayscale in [-1, 1], repeated to RGB) or 3 (RGB in [-1, 1]).
        pre_relu: return the convolution outputs before the ReLU instead of after it.
        seed: seed of the fallback init.
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        layers: Sequence[str] = ("conv3_3", "conv3_4", "conv4_1"),
        in_channels: int = 1,
        pre_relu: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"VGG19Features: in_channels must be 1 or 3, got {in_channels}")
        layers = tuple(layers)
        if not layers:
            raise ConfigError("VGG19Features: at least one layer is required")
        for name in layers:
            if name not in VGG19_LAYERS:
                raise ConfigError(did_you_mean(name, VGG19_LAYERS, "VGG19 layer"))
        self.layers = layers
        self.in_channels = in_channels
        self.pre_relu = pre_relu
        # module index whose output is tapped for each name
        self._taps = {VGG19_LAYERS[n] + (0 if pre_relu else 1): n for n in layers}
        last = max(self._taps)
        modules: list[nn.Module] = []
        idx, in_ch = 0, 3
        for v in VGG19_CFG:
            if idx > last:
                break
            if v == "M":
                modules.append(nn.MaxPool2d(2, 2))
                idx += 1
            else:
                # not in-place: a pre-ReLU tap must not be overwritten
                modules += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = int(v)
                idx += 2
        self.features = nn.Sequential(*modules[: last + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.weights_path = None if weights_path is None else Path(weights_path)
        if weights_path is None:
            self._init_random(seed)
            self.pretrained = False
            logger.warning(
                "no VGG19 weights file given: the contextual loss uses randomly initialised "
                "(seed %d, fixed) VGG19 features, not ImageNet ones; pass a torchvision vgg19 "
                "state dict (--vgg-weights PATH) to reproduce the papers",
                seed,
            )
        else:
            self._load(Path(weights_path))
            self.pretrained = True
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def _init_random(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out", nonlinearity="relu", generator=gen
                )
                nn.init.zeros_(m.bias)

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise InputError("VGG19 weights file not found", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(
                f"cannot read VGG19 weights ({type(exc).__name__}: {exc})", path
            ) from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise InputError(
                f"VGG19 weights file holds a {type(obj).__name__}, not a state dict", path
            )
        state: dict[str, torch.Tensor] = {}
        for key, value in obj.items():
            k = str(key)
            for prefix in ("module.", "features."):
                k = k.removeprefix(prefix)
            if isinstance(value, torch.Tensor):
                state[k] = value
        own = self.features.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise InputError(
                f"not a torchvision vgg19 state dict: missing {len(missing)} key(s) such as "
                f"'features.{missing[0]}'",
                path,
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise InputError(
                    f"not a torchvision vgg19 state dict: 'features.{k}' has shape "
                    f"{tuple(state[k].shape)}, expected {tuple(v.shape)}",
                    path,
                )
        self.features.load_state_dict({k: state[k].float() for k in own})

    def train(self, mode: bool = True) -> VGG19Features:
        """Always stays in eval mode (frozen extractor)."""
        return super().train(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` image ``[B, C_in, H, W]`` -> ImageNet-normalised RGB ``[B, 3, H, W]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"VGG19Features expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        x = (x + 1.0) * 0.5
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features ``{name: [B, C_l, H_l, W_l]}`` for the requested layers (in ``layers`` order)."""
        h = self.normalize(x)
        out: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.features):
            h = m(h)
            if i in self._taps:
                out[self._taps[i]] = h
        return {name: out[name] for name in self.layers}
