"""The method registry: every training method by name, and the config assembled from their sections.

Everything that names a method reads it from here: config validation (:func:`parse_config`),
``cmedl train --method``, checkpoint loading (:mod:`cmedl.methods.checkpoints`), ``cmedl segment``
and ``cmedl translate`` (the test-time recipe and translators each method declares), ``cmedl
methods``, the demo and the docs. Adding a method: write its module (a :class:`Method` subclass,
see :mod:`cmedl.methods.base`) and add its class to :data:`BUILTIN_METHODS` (or call
:func:`register_method`, e.g. from a plug-in or a test).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cmedl.config import TrainConfig, apply_overrides, read_yaml, resolve_config_path
from cmedl.config.legacy import migrate_legacy_keys, warn_legacy
from cmedl.config.schema import Source
from cmedl.config.train import resolve_arch_widths
from cmedl.errors import ConfigError, did_you_mean
from cmedl.methods.base import Method
from cmedl.methods.cmedl import CMEDL
from cmedl.methods.cmedl_oracle import CMEDLOracle
from cmedl.methods.ct_only import CTOnly
from cmedl.methods.ct_only_3d import CTOnly3D
from cmedl.methods.ct_pmri import CTPMRI, CTPMRIWeighted
from cmedl.methods.pmri import PMRICycle, PMRIUnit
from cmedl.methods.pmri_cmedl import PMRICMEDL
from cmedl.methods.translators import TRANSLATORS
from cmedl.methods.ts_student import TSBaseline, TSStudent, TSStudentDO
from cmedl.methods.ts_teacher import BoxTeacher, PointTeacher
from cmedl.nets import SEGMENTATION_NETS

log = logging.getLogger(__name__)

#: the methods that ship with cmedl, in the order ``cmedl methods`` lists them
BUILTIN_METHODS: tuple[type[Method], ...] = (
    CTOnly, CMEDL, CTOnly3D, PMRICycle, PMRIUnit, CTPMRI, CTPMRIWeighted, PMRICMEDL, CMEDLOracle,
    BoxTeacher, PointTeacher, TSBaseline, TSStudent, TSStudentDO,
)

_METHODS: dict[str, type[Method]] = {cls.name: cls for cls in BUILTIN_METHODS}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry (usable as a class decorator); its name must be new."""
    if not cls.name or cls.name in _METHODS or cls.name in TRANSLATORS:
        raise ValueError(f"cannot register method {cls.name!r}: the name is empty or already taken")
    _METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method` (built-in methods stay)."""
    if name in {cls.name for cls in BUILTIN_METHODS}:
        raise ValueError(f"method {name!r} is built in")
    _METHODS.pop(name, None)


def method_names() -> tuple[str, ...]:
    """Registered method names, built-in ones first."""
    return tuple(_METHODS)


def get_method(name: str, key: str = "training.method", source: Source = None) -> type[Method]:
    """The method class registered as ``name``; ConfigError with did-you-mean otherwise."""
    if name not in _METHODS:
        raise ConfigError(f"{key}: {did_you_mean(str(name), _METHODS, 'method')}" if key else
                          did_you_mean(str(name), _METHODS, "method"), source)
    return _METHODS[name]


def section_types() -> dict[str, type]:
    """Every method and translator config section by name."""
    sections = {name: cls.config_section for name, cls in _METHODS.items() if cls.config_section is not None}
    sections.update({name: t.config_section for name, t in TRANSLATORS.items()})
    return sections


# ------------------------------------------------------------------------------ configs
def parse_config(raw: Mapping[str, Any], source: Source = None, *, warn: bool = True) -> TrainConfig:
    """A checked :class:`TrainConfig` from a nested dict (a YAML file's, a checkpoint's ``config``).

    Keys of the pre-registry layout are read as today's (with a logged warning); ``model.arch`` is
    checked against the network registry and the method's dimensions; the config remembers which
    sections its method reads (written to ``config.yaml`` and checkpoints). ``warn=False`` (stored
    configs the user cannot edit, e.g. old checkpoints) keeps the legacy-key note out of the log.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {raw!r}", source)
    migrated, moved = migrate_legacy_keys(dict(raw))
    if warn:
        warn_legacy(moved, source)
    migrated = resolve_arch_widths(migrated, SEGMENTATION_NETS, source)
    config = TrainConfig.from_dict(migrated, section_types(), source)
    method = get_method(config.training.method, source=source)
    if config.model.arch not in SEGMENTATION_NETS:
        raise ConfigError(f"model.arch: {did_you_mean(config.model.arch, SEGMENTATION_NETS, 'value')}", source)
    try:
        method.check_config(config)
    except ConfigError as exc:
        raise ConfigError(str(exc), source) from None
    config.active_sections = method.config_sections(config)
    return config


def load_config(path_or_preset: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a preset by name (``cpu-demo``) or a YAML file, then apply ``section.key=value`` overrides.

    Raises :class:`ConfigError` for unknown presets/keys (with did-you-mean), bad types or ranges;
    an error that an override causes names the override (``override 'training.method=cmdl': ...``),
    not the file.
    """
    path = resolve_config_path(path_or_preset)
    raw = read_yaml(path)
    merged = apply_overrides(raw, overrides)  # its errors name the override already
    try:
        return parse_config(merged, source=path)
    except ConfigError:
        _blame_override(raw, overrides or [])
        raise


def _blame_override(raw: dict[str, Any], overrides: list[str]) -> None:
    """When the file alone is valid, raise the error of the first override that makes it invalid,
    naming that override (the overrides are applied one more at a time)."""
    if not overrides:
        return
    try:
        parse_config(raw, warn=False)
    except ConfigError:
        return  # the file itself is wrong: its error stands
    for n, text in enumerate(overrides, start=1):
        try:
            parse_config(apply_overrides(raw, overrides[:n]), warn=False)
        except ConfigError as exc:
            raise ConfigError(f"override '{text}': {exc}") from None


def build_method(config: TrainConfig, device: torch.device | str = "cpu") -> Method:
    """Instantiate ``config.training.method`` on ``device`` (networks initialised from the current torch seed)."""
    cls = get_method(config.training.method)
    cls.check_config(config)
    return cls(config, device)


def describe_methods() -> list[dict[str, str]]:
    """One row per registered method: name, description, batch kind, test-time networks, sections."""
    rows = []
    for name, cls in _METHODS.items():
        # a variant without a section of its own reads its parent's (pmri-cmedl, cmedl-oracle: ``cmedl``)
        parent = next((c for c in cls.__mro__[1:] if issubclass(c, Method) and c.config_section is not None), None)
        own = cls if cls.config_section is not None else parent
        sections = [own.name] if own is not None and own.name else []
        if cls.translators:
            sections.append("translator: " + " | ".join(TRANSLATORS))
        rows.append({
            "method": name, "description": cls.description, "batch": str(cls.batch_kind),
            "test time": cls.recipe.describe(), "translate": ", ".join(cls.translators) or "-",
            "sections": ", ".join(sections) or "-",
        })
    return rows


__all__ = [
    "BUILTIN_METHODS", "build_method", "describe_methods", "get_method", "load_config", "method_names",
    "parse_config", "register_method", "section_types", "unregister_method",
]
