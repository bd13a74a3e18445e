"""Typed settings from plain data: nested dataclasses built from YAML mappings, checked as they are built.

Used by every config section (:mod:`cmedl.config.sections`, the method sections of
:mod:`cmedl.methods`): :func:`build_section` turns a mapping into a dataclass, coercing each value to
its annotated type and refusing unknown keys with a did-you-mean hint; :func:`read_yaml` reads a
YAML file whose ``extends:`` names a preset or another file; :func:`apply_overrides` sets
``section.key=value`` strings. Errors are :class:`~cmedl.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

import yaml

from cmedl.errors import ConfigError, did_you_mean

Source = Union[str, Path, None]

#: Folder holding the YAML presets shipped with the package.
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------------------ checks
def check_choice(key: str, value: str, choices: Iterable[str], source: Source = None) -> None:
    """Raise ConfigError ``"<key>: unknown value 'x'; did you mean ..."`` unless ``value`` is a choice."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key}: {did_you_mean(str(value), choices, 'value')}", source)


def check_positive(key: str, value: float, source: Source = None, *, allow_zero: bool = False) -> None:
    """Raise ConfigError unless ``value > 0`` (``>= 0`` with ``allow_zero``)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}", source)


def check_range(key: str, value: float, low: float, high: float, source: Source = None, *,
                high_open: bool = False) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (``< high`` with ``high_open``)."""
    if not (low <= value < high if high_open else low <= value <= high):
        raise ConfigError(f"{key}: must be in [{low}, {high}{')' if high_open else ']'}, got {value}", source)


# ------------------------------------------------------------------------------ building
def _coerce_scalar(value: Any, tp: Any, key: str, source: Source) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}", source)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}", source)
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}", source) from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}", source)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}", source) from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}", source)
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}", source)
        return str(value)
    return value


def coerce(value: Any, tp: Any, key: str, source: Source = None) -> Any:
    """Coerce a YAML value to the annotated type ``tp`` (int -> float allowed, numbers from strings,
    lists for lists and tuples, nested dataclasses from mappings); ConfigError naming ``key`` else."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, key, source)
    if origin in (list, tuple):
        inner = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}", source)
        if origin is tuple and inner and inner[-1] is not Ellipsis:
            if len(value) != len(inner):
                raise ConfigError(f"{key}: expected {len(inner)} values, got {value!r}", source)
            return tuple(coerce(v, t, f"{key}[{i}]", source) for i, (v, t) in enumerate(zip(value, inner)))
        item = inner[0] if inner else Any
        items = [coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    return _coerce_scalar(value, tp, key, source)


def build_section(cls: type, raw: Any, key: str = "", source: Source = None) -> Any:
    """Build dataclass ``cls`` from the mapping ``raw`` (missing keys keep their defaults).

    ``key`` is the section's dotted name, used in messages (``"cyclegan"`` -> ``"cyclegan.pool_size"``).
    A ``ValueError`` raised by the dataclass itself (``__post_init__`` checks) becomes a ConfigError.
    """
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping of settings, got {raw!r}", source)
    prefix = f"{key}." if key else ""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for name, value in raw.items():
        if name not in names:
            raise ConfigError(did_you_mean(f"{prefix}{name}", [prefix + n for n in names], "config key"), source)
        kwargs[name] = coerce(value, hints[name], prefix + name, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise _in_section(exc, key, names, source) from None


def _in_section(exc: ConfigError, key: str, names: list[str], source: Source) -> ConfigError:
    """A section's own check names the field first: prefix the section's key."""
    msg = str(exc)
    first = msg.split(":")[0].split(" ")[0]
    if key:
        msg = f"{key}.{msg}" if first in names else f"{key}: {msg}"
    return ConfigError(msg, source)


def recheck_section(section: Any, key: str, source: Source = None) -> None:
    """Run a built section's own checks again (values set in code after it was built), refusing
    non-finite numbers as :func:`coerce` does."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        for i, v in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                where = f"{f.name}[{i}]" if isinstance(value, (list, tuple)) else f.name
                raise ConfigError(f"{key}.{where}: must be a finite number, got {v!r}", source)
    check = getattr(section, "__post_init__", None)
    if check is None:
        return
    try:
        check()
    except ConfigError as exc:
        raise _in_section(exc, key, [f.name for f in dataclasses.fields(section)], source) from None


def section_to_dict(section: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass (tuples become lists: YAML, JSON and ``weights_only`` safe)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(section))


# ------------------------------------------------------------------------------ YAML files
def list_presets() -> list[str]:
    """Names of the YAML presets shipped in ``cmedl/configs``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(path_or_name: str | Path, relative_to: Path | None = None) -> Path:
    """A YAML file (relative to ``relative_to`` first) or a preset name -> its path."""
    text = str(path_or_name)
    p = Path(text)
    candidates = ([relative_to / p] if relative_to is not None and not p.is_absolute() else []) + [p]
    for c in candidates:
        if c.is_file():
            return c
    if p.suffix == "" and "/" not in text:
        preset = PRESET_DIR / f"{text}.yaml"
        if preset.is_file():
            return preset
        raise ConfigError(did_you_mean(text, list_presets(), "config preset") + " (or give a YAML file)")
    raise ConfigError("config file not found", p)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, mappings merged key by key (neither input is modified)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    """A YAML mapping with its ``extends:`` chain merged in (the file's own keys win)."""
    if depth > 8:
        raise ConfigError("'extends' chain is too deep (a cycle?)", path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror})", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file (not UTF-8); a config must be a YAML file", path) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a YAML mapping", path)
    base_name = raw.pop("extends", None)
    if base_name is not None:
        raw = deep_merge(read_yaml(resolve_config_path(base_name, path.parent), depth + 1), raw)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``"a.b=value"`` into (``["a", "b"]``, value); the value is parsed as YAML (numbers, lists, ...)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, _, value = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override '{text}': the key must name a section and a setting, e.g. training.max_epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str] | None) -> dict[str, Any]:
    """A copy of the nested dict ``raw`` with every ``a.b=value`` override set (``raw`` is unchanged)."""
    out = copy.deepcopy(dict(raw))
    for text in overrides or []:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{p}' is not a section")
        node[parts[-1]] = value
    return out
