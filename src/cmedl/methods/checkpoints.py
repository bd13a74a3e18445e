"""Networks from a checkpoint dict (:func:`cmedl.training.checkpoint.load_checkpoint`), by the
method registry: the test-time model of a method's recipe, and a translator's generators.

Checkpoints of every cmedl version load: their ``config`` is parsed with
:func:`cmedl.methods.registry.parse_config`, which reads the pre-registry layout too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmedl.config import TrainConfig
from cmedl.data.preprocess import PreprocessConfig
from cmedl.errors import ConfigError, InputError, did_you_mean
from cmedl.methods.base import Method
from cmedl.methods.recipe import TestTimeModel
from cmedl.methods.registry import get_method, method_names, parse_config

#: translation directions and the preprocessing of their input (``cmedl translate``)
DIRECTIONS = {"ct2mr": "student", "mr2ct": "mr"}


def config_of(ckpt: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
    """The training config stored in a checkpoint (InputError naming ``source`` if it is invalid)."""
    try:
        return parse_config(ckpt["config"], warn=False)
    except (KeyError, TypeError, ConfigError) as exc:
        raise InputError(f"checkpoint holds an invalid training config ({exc})", source) from None


def method_of(ckpt: dict[str, Any], source: str | Path | None = None) -> type[Method]:
    """The registered method class that wrote the checkpoint."""
    try:
        return get_method(str(ckpt.get("method")), key="")
    except ConfigError as exc:
        raise InputError(f"checkpoint of an unknown method ({exc})", source) from None


def preprocess_of(ckpt: dict[str, Any], key: str, source: str | Path | None = None) -> PreprocessConfig:
    """The stored preprocessing of ``key`` (``student`` or ``mr``)."""
    raw = (ckpt.get("preprocess") or {}).get(key)
    if raw is None:
        raise InputError(f"checkpoint has no '{key}' preprocessing parameters", source)
    try:
        return PreprocessConfig.from_dict(dict(raw))
    except ConfigError as exc:
        raise InputError(f"checkpoint '{key}' preprocessing is invalid ({exc})", source) from None


def _check_finite(state: Any, name: str, source: str | Path | None) -> None:
    """Refuse a network whose stored weights or buffers hold NaN/Inf: it would segment every scan as
    empty (or full) without any error."""
    if not isinstance(state, dict):
        return  # load_state_dict reports it
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise InputError(f"'{name}' weights hold NaN or infinite values (in '{key}'); the checkpoint "
                             "is unusable (was it saved after training diverged?)", source)


def load_networks(ckpt: dict[str, Any], names: tuple[str, ...], source: str | Path | None = None) -> dict[str, nn.Module]:
    """The networks ``names`` of the checkpoint's method, with their weights, in eval mode on the CPU."""
    cls, config = method_of(ckpt, source), config_of(ckpt, source)
    stored = ckpt.get("networks", {})
    missing = [n for n in names if n not in stored]
    if missing:
        have = ", ".join(sorted(stored)) or "none"
        raise InputError(f"checkpoint of method '{cls.name}' has no '{missing[0]}' network (it has: {have})", source)
    for name in names:
        _check_finite(stored[name], name, source)
    nets = cls.build_networks(config, names)
    for name in names:
        try:
            nets[name].load_state_dict(stored[name])
        except RuntimeError as exc:
            raise InputError(f"'{name}' weights do not fit the configured network ({str(exc).splitlines()[0]})",
                             source) from None
        nets[name].eval()
    return nets


def build_test_time_model(ckpt: dict[str, Any], source: str | Path | None = None
                          ) -> tuple[TestTimeModel, PreprocessConfig, TrainConfig]:
    """The method's test-time model (its recipe's networks composed), the preprocessing of its CT/CBCT
    input, and the training config (e.g. ``data.patch_size_3d``: the sliding window of 3D methods)."""
    recipe = method_of(ckpt, source).recipe
    nets = load_networks(ckpt, recipe.networks, source)
    translator = nets[recipe.translator] if recipe.translator is not None else None
    model = TestTimeModel(recipe, nets[recipe.segmenter], translator).eval()
    return model, preprocess_of(ckpt, "student", source), config_of(ckpt, source)


def build_generator_from_checkpoint(ckpt: dict[str, Any], direction: str = "ct2mr",
                                    source: str | Path | None = None) -> tuple[nn.Module, PreprocessConfig]:
    """A translator's generator (``ct2mr``: CT/CBCT -> pMRI, ``mr2ct``: MRI -> pCT) in eval mode on the
    CPU, and the preprocessing of its *input* modality."""
    if direction not in DIRECTIONS:
        raise InputError(did_you_mean(str(direction), DIRECTIONS, "translation direction"))
    cls = method_of(ckpt, source)
    if direction not in cls.translators:
        having = [name for name in method_names() if direction in get_method(name).translators]
        raise InputError(f"method '{cls.name}' trains no {direction} translator (methods that do: "
                         f"{', '.join(having) or 'none'})", source)
    name = cls.translators[direction]
    return load_networks(ckpt, (name,), source)[name], preprocess_of(ckpt, DIRECTIONS[direction], source)


def build_student_from_checkpoint(ckpt: dict[str, Any], source: str | Path | None = None
                                  ) -> tuple[nn.Module, PreprocessConfig]:
    """The ``student_ct`` network with its weights (eval mode, CPU) and its input preprocessing."""
    return load_networks(ckpt, ("student_ct",), source)["student_ct"], preprocess_of(ckpt, "student", source)


__all__ = [
    "DIRECTIONS", "build_generator_from_checkpoint", "build_student_from_checkpoint", "build_test_time_model",
    "config_of", "load_networks", "method_of", "preprocess_of",
]
