"""``cmedl study``: a grid of training runs on a user's cohort and the papers' tables (:mod:`cmedl.study`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import app
from cmedl.cli._common import console, handle_errors
from cmedl.errors import InputError


def parse_devices(text: str) -> list[str]:
    """``cpu``, ``cuda``, ``cuda:0,cuda:1`` or GPU indices ``0,1`` -> device names."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(f"--devices: expected cpu, cuda:N or GPU indices like 0,1, got {text!r}")
    out = []
    for item in items:
        if item.isdigit():
            out.append(f"cuda:{item}")
        elif item in ("cpu", "cuda") or (item.startswith("cuda:") and item[5:].isdigit()):
            out.append(item)
        else:
            raise InputError(f"--devices: expected cpu, cuda:N or GPU indices like 0,1, got {item!r}")
    if len(set(out)) != len(out):
        raise InputError(f"--devices: a device is listed twice: {text!r}")
    return out


@app.command("study")
@handle_errors
def study_cmd(
    study: Annotated[str, typer.Argument(help="Study YAML file or preset (table2, table3, table5, ...).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Manifest with train/val/test splits.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder (runs/, tables/, all_cases.csv).")],
    mr_data: Annotated[
        Path | None, typer.Option("--mr-data", help="Separate manifest of MRI cases (default: those of --data).")
    ] = None,
    devices: Annotated[
        str, typer.Option("--devices", help="cpu, or GPUs (0,1 or cuda:0,cuda:1): one run per device at a time.")
    ] = "cpu",
    runs_per_device: Annotated[
        int, typer.Option("--runs-per-device", help="Runs trained at once on each device (small runs on a big GPU).")
    ] = 1,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Training preset for every run instead of the study's.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Config override for every run (repeatable).")
    ] = None,
    reuse: Annotated[
        list[Path] | None,
        typer.Option("--reuse", help="Another study folder: its finished runs are shared by runs with the same "
                                     "configuration instead of training them again (repeatable)."),
    ] = None,
    tables_only: Annotated[
        bool, typer.Option("--tables-only", help="Only (re)write the tables from the finished runs.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and check their configs.")] = False,
) -> None:
    """Train a grid of runs (methods x architectures x translators x ablations x seeds), segment and score
    each run's test split once, and write the papers' tables. Rerunning continues an interrupted study;
    a run with the same configuration as an earlier one (here or in a --reuse folder) is trained once."""
    from cmedl.study import load_study, run_study, write_tables  # lazy: fast `cmedl --help`
    from cmedl.study.runner import check_study_folder

    spec = load_study(study)
    if config is not None:
        spec = dataclasses.replace(spec, config=config)
    extra = list(overrides or [])
    device_list = parse_devices(devices)
    if dry_run:
        spec.configs(extra)
        for run in spec.runs():
            console.print(f"{run.key}: {run.method} {' '.join(run.overrides)}")
        console.print(f"{len(spec.runs())} runs; configs valid")
        return
    if not tables_only:
        outcomes = run_study(spec, data, out, mr_data=mr_data, devices=device_list,
                             runs_per_device=runs_per_device, overrides=extra, reuse=reuse or [],
                             log=console.print)
    else:  # the tables of this very study only: never write them into another study's folder
        check_study_folder(out, spec, extra, record_study=False)
        outcomes = {}
    console.print(write_tables(spec, out, data, mr_data))
    failed = [o for o in outcomes.values() if o.error]
    if failed:
        for o in failed:
            console.print(f"error: {o.key}: {o.error}", style="red")
        raise typer.Exit(1)
