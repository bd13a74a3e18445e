"""What ``cmedl report`` is given: demo folders, study folders, run folders and prediction folders.

Each positional argument is ``[NAME=]PATH``:

- a **demo folder** (``demo.json``; :mod:`cmedl.demo`): every method's run ``<out>/<method>/``, its
  masks ``<method>/pred/`` and per-case CSV ``<method>.csv``, in the order of ``comparison.csv``
  (the baseline first); its data ``phantom/manifest.json`` and simulated raters ``raters/<name>/``;
- a **study folder** (``study.json``; :mod:`cmedl.study`): one group per family, one source per run
  and seed (``runs/<family>/<run>/seed<k>``: checkpoint, ``log.csv``, ``pred/``, ``results.csv``);
- a **run folder** of ``cmedl train`` (``config.yaml``, ``best.pt``/``last.pt``, ``log.csv``; masks in
  ``pred/`` when present);
- a **predictions folder** (NIfTI masks named by case id).

Arguments with the same NAME are merged (``ct-only=runs/a ct-only=masks/a``: the run's curves and
features with the masks of that folder). Nothing is read here beyond file names and small JSON/YAML:
what a source lacks is said by the sections that need it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cmedl.errors import InputError

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class Source:
    """One method's outputs (any part may be missing)."""

    name: str
    method: str | None = None  #: the registered method name (from config.yaml), when known
    run_dir: Path | None = None
    pred_dir: Path | None = None
    results_csv: Path | None = None
    group: str = "results"

    @property
    def checkpoint(self) -> Path | None:
        if self.run_dir is None:
            return None
        for name in ("best.pt", "last.pt"):
            if (self.run_dir / name).is_file():
                return self.run_dir / name
        return None

    @property
    def log_csv(self) -> Path | None:
        p = self.run_dir / "log.csv" if self.run_dir is not None else None
        return p if p is not None and p.is_file() else None


@dataclass
class Inputs:
    """Everything found: sources in order (the first of each group is its reference), the data manifest
    a demo folder names, its rater folders, and one line per argument that could not be used."""

    sources: list[Source] = field(default_factory=list)
    data: Path | None = None
    raters: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  #: what each argument was taken for

    def groups(self) -> dict[str, list[Source]]:
        out: dict[str, list[Source]] = {}
        for s in self.sources:
            out.setdefault(s.group, []).append(s)
        return out


def _is_run(path: Path) -> bool:
    return any((path / n).is_file() for n in ("config.yaml", "best.pt", "last.pt", "log.csv"))


def _has_masks(path: Path) -> bool:
    return path.is_dir() and any(p.name.lower().endswith(MASK_SUFFIXES) for p in path.iterdir() if p.is_file())


def _method_of(run_dir: Path) -> str | None:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        return str(cfg["training"]["method"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _run_source(name: str, run_dir: Path, group: str) -> Source:
    pred = run_dir / "pred"
    results = run_dir / "results.csv"
    return Source(name, _method_of(run_dir), run_dir, pred if _has_masks(pred) else None,
                  results if results.is_file() else None, group)


def _demo_methods(demo: Path) -> list[str]:
    """Methods of a demo folder, the baseline first: the order of its comparison table when written,
    else its ``demo.json`` methods, else every run folder (ct-only first)."""
    comparison = demo / "comparison.csv"
    if comparison.is_file():
        try:
            with open(comparison, newline="") as f:
                names = [row["method"] for row in csv.DictReader(f)]
            if names:
                return names
        except (OSError, KeyError, csv.Error):
            pass
    try:
        listed = json.loads((demo / "demo.json").read_text()).get("methods")
    except (OSError, json.JSONDecodeError, AttributeError):
        listed = None
    if listed:
        return [str(m) for m in listed]
    runs = sorted(p.name for p in demo.iterdir() if p.is_dir() and _is_run(p))
    return sorted(runs, key=lambda n: (n != "ct-only", n))


def _demo(path: Path, inputs: Inputs) -> None:
    for method in _demo_methods(path):
        run_dir = path / method
        src = _run_source(method, run_dir, "demo") if run_dir.is_dir() else Source(method, method, group="demo")
        src.method = src.method or method
        csv_path = path / f"{method}.csv"
        src.results_csv = csv_path if csv_path.is_file() else None
        inputs.sources.append(src)
    manifest = path / "phantom" / "manifest.json"
    if inputs.data is None and manifest.is_file():
        inputs.data = manifest
    raters = path / "raters"
    if raters.is_dir():
        for d in sorted(p for p in raters.iterdir() if p.is_dir()):
            inputs.raters.setdefault(d.name, d)


def _study(path: Path, inputs: Inputs) -> None:
    try:
        record = json.loads((path / "study.json").read_text())
        keys = list(record["runs"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        inputs.problems.append(f"{path / 'study.json'}: unreadable study record; study skipped")
        return
    for key in keys:
        parts = key.split("/")
        run_dir = path / "runs" / key
        if len(parts) != 3 or not run_dir.is_dir():
            inputs.problems.append(f"{run_dir}: run of the study not found")
            continue
        family, run, seed = parts
        seeds = {k.split("/")[2] for k in keys if k.split("/")[:2] == [family, run]}
        name = run if len(seeds) == 1 else f"{run}/{seed}"
        inputs.sources.append(_run_source(name, run_dir, f"{path.name}: {family}"))


def _merge(inputs: Inputs, new: Source) -> None:
    for s in inputs.sources:
        if s.name == new.name:
            s.run_dir = s.run_dir or new.run_dir
            s.pred_dir = new.pred_dir or s.pred_dir
            s.results_csv = s.results_csv or new.results_csv
            s.method = s.method or new.method
            return
    inputs.sources.append(new)


def _unique_name(inputs: Inputs, path: Path) -> str:
    name = path.name or str(path)
    if name in ("pred", "predictions") and path.parent.name:
        name = path.parent.name
    taken = {s.name for s in inputs.sources}
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def find_inputs(arguments: list[str], refs: list[str] | None = None) -> Inputs:
    """Classify every ``[NAME=]PATH`` argument (see the module docstring); ``refs`` are ``NAME=DIR``
    rater folders (``--ref``). Arguments that are none of the known folders are listed in
    :attr:`Inputs.problems`; only a malformed ``--ref`` raises."""
    inputs = Inputs()
    for arg in arguments:
        name, _, raw = arg.partition("=") if "=" in arg and not Path(arg).exists() else ("", "", arg)
        path = Path(raw)
        if not path.exists():
            inputs.problems.append(f"{path}: no such file or folder")
            continue
        if path.is_dir() and (path / "demo.json").is_file():
            _demo(path, inputs)
            inputs.kinds.append(f"{path}: demo folder")
        elif path.is_dir() and (path / "study.json").is_file():
            _study(path, inputs)
            inputs.kinds.append(f"{path}: study folder")
        elif path.is_dir() and _is_run(path):
            _merge(inputs, _run_source(name or _unique_name(inputs, path), path, "runs"))
            inputs.kinds.append(f"{path}: run folder")
        elif _has_masks(path):
            _merge(inputs, Source(name or _unique_name(inputs, path), pred_dir=path, group="runs"))
            inputs.kinds.append(f"{path}: predictions folder")
        elif path.is_file() and path.suffix.lower() == ".csv":
            _merge(inputs, Source(name or path.stem, results_csv=path, group="runs"))
            inputs.kinds.append(f"{path}: per-case results CSV")
        else:
            inputs.problems.append(f"{path}: not a demo, study, run or predictions folder (nothing to report)")
    if refs:
        inputs.raters = {}  # raters given explicitly replace a demo folder's simulated ones
    for ref in refs or []:
        name, sep, raw = ref.partition("=")
        if not sep or not name or not raw:
            raise InputError(f"--ref must be NAME=FOLDER, got '{ref}'")
        inputs.raters[name] = Path(raw)
    return inputs
