"""Training methods (each owns its networks and optimisers) and model loading from checkpoints.

- :func:`build_method` ``(config, device) -> Method``: ``cmedl``, ``ct-only`` (2D networks) or ``ct-only-3d``
  (3D U-Net on 3D patches) by ``config.training.method``; ``model.arch`` must be a network of the
  method's ``dims`` (2 unless the class says ``dims = 3``), else a ConfigError names the choices.
- :func:`build_student_from_checkpoint` ``(ckpt) -> (student net in eval mode, PreprocessConfig)``.
- :func:`build_generator_from_checkpoint` ``(ckpt, direction) -> (generator in eval mode, PreprocessConfig)``.

The checkpoint dict is the one of :mod:`cmedl.training.checkpoint` (``load_checkpoint(path)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cmedl.errors import ConfigError, InputError, did_you_mean
from cmedl.methods.base import Method
from cmedl.methods.cmedl import CMEDL
from cmedl.methods.ct_only import CTOnly, build_student_net
from cmedl.methods.ct_only_3d import CTOnly3D, check_arch_dims
from cmedl.methods.image_pool import ImagePool
from cmedl.training.config import TrainConfig

if TYPE_CHECKING:
    from cmedl.data.preprocess import PreprocessConfig

#: registry: method name -> class
METHODS: dict[str, type[Method]] = {"cmedl": CMEDL, "ct-only": CTOnly, "ct-only-3d": CTOnly3D}

#: checkpoint network name of each translation direction
GENERATOR_NAMES = {"ct2mr": "g_ct2mr", "mr2ct": "g_mr2ct"}

__all__ = [
    "CMEDL",
    "GENERATOR_NAMES",
    "METHODS",
    "CTOnly",
    "CTOnly3D",
    "ImagePool",
    "Method",
    "build_generator_from_checkpoint",
    "build_method",
    "build_student_from_checkpoint",
    "preprocess_configs",
]


def build_method(config: TrainConfig, device: torch.device | str = "cpu") -> Method:
    """Instantiate ``config.training.method`` on ``device`` (networks initialised from the current torch seed)."""
    name = config.training.method
    if name not in METHODS:
        raise ConfigError(did_you_mean(name, METHODS, "method"))
    cls = METHODS[name]
    check_arch_dims(config, int(getattr(cls, "dims", 2)), name)
    return cls(config, device)


def preprocess_configs(config: TrainConfig) -> tuple[PreprocessConfig, PreprocessConfig]:
    """(student-modality, MRI) preprocessing of a training config (``data.preprocess*`` overrides applied)."""
    from cmedl.data.preprocess import PreprocessConfig

    student = PreprocessConfig.from_dict({**config.data.preprocess, "modality": config.data.modality})
    mr = PreprocessConfig.from_dict({**config.data.preprocess_mr, "modality": "mr"})
    return student, mr


def _config_of(ckpt: dict[str, Any], source: str | Path | None) -> TrainConfig:
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise InputError(f"checkpoint holds an invalid training config ({exc})", source) from None


def _network_state(ckpt: dict[str, Any], name: str, source: str | Path | None) -> dict[str, torch.Tensor]:
    nets = ckpt.get("networks", {})
    if name not in nets:
        have = ", ".join(sorted(nets)) or "none"
        raise InputError(
            f"checkpoint of method '{ckpt.get('method')}' has no '{name}' network (it has: {have})", source
        )
    return nets[name]


def _preprocess(ckpt: dict[str, Any], key: str, source: str | Path | None) -> PreprocessConfig:
    from cmedl.data.preprocess import PreprocessConfig

    raw = (ckpt.get("preprocess") or {}).get(key)
    if raw is None:
        raise InputError(f"checkpoint has no '{key}' preprocessing parameters", source)
    try:
        return PreprocessConfig.from_dict(dict(raw))
    except ConfigError as exc:
        raise InputError(f"checkpoint '{key}' preprocessing is invalid ({exc})", source) from None


def build_student_from_checkpoint(
    ckpt: dict[str, Any], source: str | Path | None = None
) -> tuple[nn.Module, PreprocessConfig]:
    """The student (CT/CBCT) segmentation net with its weights, in eval mode on the CPU, and the
    preprocessing its input needs. ``source`` (the checkpoint path) is only used in error messages."""
    config = _config_of(ckpt, source)
    net = build_student_net(config)
    try:
        net.load_state_dict(_network_state(ckpt, "student_ct", source))
    except RuntimeError as exc:
        raise InputError(f"student weights do not fit the configured network ({str(exc).splitlines()[0]})",
                         source) from None
    net.eval()
    return net, _preprocess(ckpt, "student", source)


def build_generator_from_checkpoint(
    ckpt: dict[str, Any], direction: str = "ct2mr", source: str | Path | None = None
) -> tuple[nn.Module, PreprocessConfig]:
    """A CycleGAN generator (``ct2mr``: CT/CBCT -> pMRI, ``mr2ct``: MRI -> pCT) in eval mode on the CPU,
    and the preprocessing of its *input* modality. Only ``cmedl`` checkpoints hold generators."""
    if direction not in GENERATOR_NAMES:
        raise InputError(did_you_mean(direction, GENERATOR_NAMES, "translation direction"))
    from cmedl.nets import ResnetGenerator

    config = _config_of(ckpt, source)
    state = _network_state(ckpt, GENERATOR_NAMES[direction], source)
    net = ResnetGenerator(1, 1, config.model.gen_base_width, config.model.gen_n_blocks)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"generator weights do not fit the configured network ({str(exc).splitlines()[0]})",
                         source) from None
    net.eval()
    return net, _preprocess(ckpt, "student" if direction == "ct2mr" else "mr", source)
