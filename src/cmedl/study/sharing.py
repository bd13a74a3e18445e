"""Runs trained once and shared: two runs with the same configuration are the same experiment.

The papers' tables repeat runs: Table III's ``strategies/cmedl`` is its ``translators/translator=cyclegan``,
Table V's ``losses/cmedl`` is its ``hint-layers/hint_layers=high``, and CT-only/CMEDL with the U-Net
appear in Tables II, III and V. A run whose whole configuration (every section, the method and the
seed; only the device aside) equals an earlier one's is not trained again: its folder holds
``SHARED_FROM`` (the folder that trained it) and a copy of that run's ``results.csv``, so the tables
read it like any other run. The earlier run may be in the same study or, with ``--reuse DIR``, a
finished run of another study folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from cmedl.config import TrainConfig
from cmedl.errors import ConfigError, InputError
from cmedl.io import atomic_path
from cmedl.io.outputs import writing
from cmedl.methods import load_config

#: file naming the run folder a shared run's results come from
SHARED_FROM = "SHARED_FROM"


def config_signature(config: TrainConfig) -> str:
    """A run's identity: its whole configuration (method and seed included) except the device."""
    raw = config.to_dict()
    raw["training"] = {k: v for k, v in raw["training"].items() if k != "device"}
    return json.dumps(raw, sort_keys=True, default=str)


def source_of(run_dir: Path) -> Path:
    """The folder that trained ``run_dir``: itself, or the one its ``SHARED_FROM`` names."""
    marker = run_dir / SHARED_FROM
    return Path(marker.read_text().strip()) if marker.exists() else run_dir


def finished_runs(folders: Iterable[Path]) -> dict[str, Path]:
    """Signature -> run folder of every finished run (``DONE``, ``results.csv``, ``config.yaml``) under
    ``<folder>/runs`` of each study folder; a shared run points to the folder that trained it."""
    found: dict[str, Path] = {}
    for folder in folders:
        runs = Path(folder) / "runs"
        if not runs.is_dir():
            raise InputError("not a study folder (no runs/ inside)", folder)
        for done in sorted(runs.rglob("DONE")):
            run_dir = done.parent
            if run_dir.name == "pred" or not (run_dir / "results.csv").exists():
                continue
            if (run_dir / SHARED_FROM).exists() or not (run_dir / "config.yaml").exists():
                continue
            try:
                sig = config_signature(load_config(run_dir / "config.yaml"))
            except ConfigError:
                continue  # a run of an older cmedl whose config no longer loads: not reusable
            found.setdefault(sig, run_dir.resolve())
    return found


def twins(keys_and_configs: Sequence[tuple[str, TrainConfig]]) -> dict[str, str]:
    """Run key -> key of the first earlier run with the same configuration."""
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for key, config in keys_and_configs:
        sig = config_signature(config)
        if sig in first:
            out[key] = first[sig]
        else:
            first[sig] = key
    return out


def share(source: Path, run_dir: Path) -> Path:
    """Make ``run_dir`` a shared copy of the finished run ``source``: ``SHARED_FROM`` and its results
    (``results.csv``, and the cached pMRI quality when present); returns ``run_dir/results.csv``."""
    source = Path(source).resolve()
    if not (source / "results.csv").exists():
        raise InputError("run to share has no results.csv (not finished)", source)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / SHARED_FROM) as tmp:
            tmp.write_text(f"{source}\n")
        for name in ("pmri_kl.json", "results.csv"):  # results.csv last: it marks the run finished
            if (source / name).exists():
                with atomic_path(run_dir / name) as tmp:
                    shutil.copyfile(source / name, tmp)
    return run_dir / "results.csv"


__all__ = ["SHARED_FROM", "config_signature", "finished_runs", "share", "source_of", "twins"]
