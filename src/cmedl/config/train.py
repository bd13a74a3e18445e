"""The whole configuration of one training run: :class:`TrainConfig`.

Common sections (:mod:`cmedl.config.sections`) plus one section per method and per translator
that has settings (``cmedl``, ``cyclegan``; declared by the methods themselves and handed in by
the method registry, :func:`cmedl.methods.registry.parse_config`, which is what code should call).
In YAML every section is a top-level mapping::

    data: {...}  preprocessing: {student: {...}, mr: {...}}  augmentation: {...}  model: {...}
    loss: {...}  optim: {...}  training: {method: cmedl, ...}  evaluation: {...}
    cmedl: {...}  cyclegan: {...}

A run's ``config.yaml`` (and the ``config`` of its checkpoints) holds the common sections and the
sections its method reads (:attr:`TrainConfig.active_sections`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmedl.config.schema import Source, build_section, recheck_section, section_to_dict
from cmedl.config.sections import (
    AugmentationConfig,
    DataConfig,
    EvaluationConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PreprocessingConfig,
    TrainingConfig,
)
from cmedl.data.preprocess import PreprocessConfig
from cmedl.errors import ConfigError, did_you_mean
from cmedl.io.volume import atomic_path

#: the common sections, in the order they are written
COMMON_SECTIONS: dict[str, type] = {
    "data": DataConfig, "preprocessing": PreprocessingConfig, "augmentation": AugmentationConfig,
    "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}


@dataclass(eq=False)
class TrainConfig:
    """The full configuration of one training run (build it with ``cmedl.methods.parse_config``).

    Two configs are equal when they hold the same settings for their method (:meth:`to_dict`):
    sections the method does not read do not count.
    """

    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    #: method and translator sections by name (every registered one, defaults where not given)
    sections: dict[str, Any] = field(default_factory=dict)
    #: the sections the configured method reads, written by :meth:`to_dict`
    active_sections: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __getattr__(self, name: str) -> Any:
        """``config.cmedl`` / ``config.cyclegan``: the method/translator section of that name."""
        sections = self.__dict__.get("sections")
        if name.startswith("__") or sections is None:
            raise AttributeError(name)
        if name not in sections:
            raise AttributeError(did_you_mean(name, [*COMMON_SECTIONS, *sections], "config section"))
        return sections[name]

    def section(self, name: str) -> Any:
        """The method/translator section ``name`` (e.g. ``config.section("cyclegan")``)."""
        if name not in self.sections:
            raise ConfigError(did_you_mean(name, self.sections, "config section"))
        return self.sections[name]

    @property
    def iterations_per_epoch(self) -> int:
        """Optimisation steps per epoch (incomplete last batch dropped)."""
        return self.data.samples_per_epoch // self.training.batch_size

    def preprocess_configs(self) -> tuple[PreprocessConfig, PreprocessConfig]:
        """(student-modality, MRI) preprocessing with the ``preprocessing`` options applied."""
        return (self.preprocessing.student.resolve(self.data.modality), self.preprocessing.mr.resolve("mr"))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/``torch.load(weights_only=True)`` safe) of the common and
        active sections; preprocessing holds only the options that were set."""
        out: dict[str, Any] = {}
        for name in COMMON_SECTIONS:
            section = getattr(self, name)
            if name == "preprocessing":
                out[name] = {"student": section.student.to_overrides(), "mr": section.mr.to_overrides()}
            else:
                out[name] = section_to_dict(section)
        for name in self.active_sections:
            out[name] = section_to_dict(self.sections[name])
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], section_types: Mapping[str, type], source: Source = None,
                  active_sections: Sequence[str] = ()) -> TrainConfig:
        """Build from a (possibly partial) nested dict in today's layout. ``section_types`` maps
        every method/translator section name to its dataclass; unknown keys raise ConfigError."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config: expected a mapping of sections, got {raw!r}", source)
        known = [*COMMON_SECTIONS, *section_types]
        for key in raw:
            if key not in known:
                raise ConfigError(did_you_mean(str(key), known, "config section"), source)
        common = {name: build_section(tp, raw.get(name, {}), name, source) for name, tp in COMMON_SECTIONS.items()}
        sections = {name: build_section(tp, raw.get(name, {}), name, source) for name, tp in section_types.items()}
        config = cls(**common, sections=sections, active_sections=tuple(active_sections))
        config.validate(source, recheck=False)
        return config

    def validate(self, source: Source = None, *, recheck: bool = True) -> None:
        """Check every section again (``recheck``: values may have been set in code) and the settings
        that span sections; ConfigError naming the key."""
        if recheck:
            for name in COMMON_SECTIONS:
                recheck_section(getattr(self, name), name, source)
            for name, section in self.sections.items():
                recheck_section(section, name, source)
        if self.data.samples_per_epoch < self.training.batch_size:
            raise ConfigError(
                f"data.samples_per_epoch ({self.data.samples_per_epoch}) must be >= training.batch_size "
                f"({self.training.batch_size})", source,
            )


def resolve_arch_widths(raw: dict[str, Any], archs: Sequence[str], source: Source = None) -> dict[str, Any]:
    """``model.seg_base_width`` given as a mapping ``{arch: width}`` -> the width of ``model.arch``
    (None when the mapping lacks it: the paper width). Unknown architecture keys are an error."""
    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("seg_base_width"), dict):
        return raw
    widths = model["seg_base_width"]
    for key in widths:
        if key not in archs:
            raise ConfigError(f"model.seg_base_width: {did_you_mean(str(key), archs, 'architecture')}", source)
    arch = str(model.get("arch", ModelConfig.arch))
    return {**raw, "model": {**model, "seg_base_width": widths.get(arch)}}


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for comparing two configs key by key)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_config(config: TrainConfig, path: str | Path, world_size: int = 1) -> Path:
    """Write the config as YAML (common + active sections), atomically. A data-parallel run
    (``world_size`` > 1 processes) records its world size in a leading comment."""
    path = Path(path)
    head = ""
    if world_size > 1:
        b = config.training.batch_size
        head = (f"# data-parallel run: world size {world_size} (torchrun); training.batch_size {b} is the global "
                f"batch ({b // world_size} per process)\n")
    with atomic_path(path) as tmp:
        tmp.write_text(head + yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


__all__ = ["COMMON_SECTIONS", "TrainConfig", "flatten_config", "resolve_arch_widths", "save_config"]
