"""A study: families of training runs (one table each) over methods, architectures, translators, loss
switches, hint layers and seeds, read from YAML.

Format (``src/cmedl/studies/*.yaml`` are the shipped presets; ``extends:`` is not supported here, a
study names its training preset in ``config``)::

    name: table2
    description: "Segmentation networks with and without CMEDL (CT paper, Table II)"
    config: paper-ct               # training preset or YAML file every run starts from
    seeds: [0]                     # every run is repeated per seed
    set: {training.max_epochs: 100}  # overrides for every run (optional)
    families:                      # one table per family; the reference is its first run unless named
      unet:
        reference: ct-only
        runs:
          ct-only: {method: ct-only, set: {model.arch: unet}}
          cmedl:   {method: cmedl,   set: {model.arch: unet}}
      hint-layers:
        grid:                      # the cartesian product of the lists; runs named by the varying keys
          method: [cmedl]
          cmedl.hint_layers: [high, mid, low]

Run folders: ``<out>/runs/<family>/<run>/seed<k>``. Every run's configuration is validated (method,
sections, values) when the study is loaded, before any training starts.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cmedl.config import TrainConfig
from cmedl.errors import ConfigError, InputError, did_you_mean
from cmedl.methods import load_config

_STUDY_KEYS = ("name", "description", "config", "seeds", "set", "families")
_FAMILY_KEYS = ("description", "reference", "runs", "grid")
_RUN_KEYS = ("method", "set")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")
#: the folder of the shipped study presets
PRESET_DIR = Path(__file__).resolve().parent.parent / "studies"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: a family's run at one seed."""

    family: str
    name: str
    method: str
    overrides: tuple[str, ...]  #: ``section.key=value``, the study's common ones first
    seed: int

    @property
    def key(self) -> str:
        """``family/run/seed<k>``: the run's folder below ``<out>/runs``."""
        return f"{self.family}/{self.name}/seed{self.seed}"

    def all_overrides(self) -> list[str]:
        return [*self.overrides, f"training.method={self.method}", f"training.seed={self.seed}"]


@dataclass(frozen=True)
class FamilySpec:
    """Runs compared in one table, against ``reference`` (a run name of the family)."""

    name: str
    description: str
    reference: str
    runs: tuple[tuple[str, str, tuple[str, ...]], ...]  #: (run name, method, overrides)

    @property
    def run_names(self) -> list[str]:
        """Run names, the reference first."""
        names = [r[0] for r in self.runs]
        return [self.reference, *(n for n in names if n != self.reference)]


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    config: str
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    families: tuple[FamilySpec, ...]
    source: Path | None = None

    def runs(self) -> list[RunSpec]:
        """Every run of the study, family by family, run by run, seed by seed."""
        return [
            RunSpec(fam.name, name, method, (*self.overrides, *sets), seed)
            for fam in self.families for name, method, sets in fam.runs for seed in self.seeds
        ]

    def family(self, name: str) -> FamilySpec:
        for fam in self.families:
            if fam.name == name:
                return fam
        raise ConfigError(did_you_mean(name, [f.name for f in self.families], "family"))

    def configs(self, extra: Sequence[str] = ()) -> dict[str, TrainConfig]:
        """Every run's validated training configuration by run key (``extra``: overrides applied last)."""
        out = {}
        for run in self.runs():
            try:
                out[run.key] = load_config(self.config, [*run.all_overrides(), *extra])
            except ConfigError as exc:
                raise ConfigError(f"study run {run.key}: {exc}", self.source) from None
        return out


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    """``{section.key: value}`` (or a list of ``section.key=value`` strings) -> override strings."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return tuple(f"{k}={_yaml_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and "=" in v for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: 'set' must map section.key to a value, got {value!r}")


def _yaml_value(value: Any) -> str:
    """An override value as the config loader parses it (YAML flow style for lists/bools/null)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _check_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: {did_you_mean(str(key), allowed, 'key')}")


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"{where}: names must be letters, digits and ._=,+- (a folder name), got {name!r}")
    return name


def _grid_runs(grid: Any, where: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """The cartesian product of a family's ``grid``; each run is named by its varying keys' values."""
    if not isinstance(grid, Mapping) or "method" not in grid:
        raise ConfigError(f"{where}: 'grid' must map keys to lists and include 'method'")
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    if any(not v for v in values):
        raise ConfigError(f"{where}: every grid key needs at least one value")
    varying = [k for k, v in zip(keys, values) if len(v) > 1]
    runs = []
    for combo in itertools.product(*values):
        chosen = dict(zip(keys, combo))
        method = str(chosen.pop("method"))
        label = [f"{k.split('.')[-1]}={_yaml_value(chosen[k])}" for k in varying if k != "method"]
        name = ",".join(([method] if "method" in varying else []) + label) or method
        runs.append((_check_name(name.replace(" ", ""), where), method, _overrides(chosen, where)))
    return runs


def parse_study(raw: Mapping[str, Any], source: Path | None = None) -> StudySpec:
    """A :class:`StudySpec` from its YAML mapping; every problem is a one-line ``ConfigError``."""
    if not isinstance(raw, Mapping):
        raise ConfigError("a study file must be a YAML mapping", source)
    try:
        _check_keys(raw, _STUDY_KEYS, "study")
        if not raw.get("families"):
            raise ConfigError("study: no families (each family is one table of runs)")
        seeds = raw.get("seeds", [0])
        seeds = seeds if isinstance(seeds, list) else [seeds]
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ConfigError(f"study: seeds must be non-negative integers, got {raw.get('seeds')!r}")
        families = []
        for fname, fam in dict(raw["families"]).items():
            where = f"family {fname}"
            _check_name(fname, where)
            if not isinstance(fam, Mapping):
                raise ConfigError(f"{where}: expected a mapping with 'runs' or 'grid'")
            _check_keys(fam, _FAMILY_KEYS, where)
            if ("runs" in fam) == ("grid" in fam):
                raise ConfigError(f"{where}: give either 'runs' or 'grid'")
            if "grid" in fam:
                runs = _grid_runs(fam["grid"], where)
            else:
                runs = []
                for rname, run in dict(fam["runs"]).items():
                    if not isinstance(run, Mapping) or "method" not in run:
                        raise ConfigError(f"{where}, run {rname}: expected a mapping with 'method'")
                    _check_keys(run, _RUN_KEYS, f"{where}, run {rname}")
                    runs.append((_check_name(str(rname), where), str(run["method"]),
                                 _overrides(run.get("set"), f"{where}, run {rname}")))
            names = [r[0] for r in runs]
            if len(set(names)) != len(names):
                raise ConfigError(f"{where}: run names repeat: {names}")
            reference = str(fam.get("reference", names[0]))
            if reference not in names:
                raise ConfigError(f"{where}: reference {did_you_mean(reference, names, 'run')}")
            families.append(FamilySpec(fname, str(fam.get("description", "")), reference, tuple(runs)))
        return StudySpec(
            name=_check_name(str(raw.get("name", source.stem if source else "study")), "study"),
            description=str(raw.get("description", "")),
            config=str(raw.get("config", "paper-ct")),
            seeds=tuple(int(s) for s in seeds),
            overrides=_overrides(raw.get("set"), "study"),
            families=tuple(families),
            source=source,
        )
    except ConfigError as exc:
        if exc.path is None and source is not None:
            raise ConfigError(str(exc), source) from None
        raise


def study_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_study(path_or_preset: str | Path) -> StudySpec:
    """A study from a YAML file or a shipped preset name (``table2``, ``table3``, ``table5``, ...)."""
    path = Path(path_or_preset)
    if not path.is_file():
        if path.suffix or "/" in str(path_or_preset):
            raise InputError("study file not found", path)
        presets = study_presets()
        if str(path_or_preset) not in presets:
            raise ConfigError(did_you_mean(str(path_or_preset), presets, "study preset"))
        path = PRESET_DIR / f"{path_or_preset}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the study file: {exc}", path) from None
    return parse_study(raw or {}, path)
