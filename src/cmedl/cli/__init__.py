"""The ``cmedl`` command. Each sub-module registers its commands on :data:`app`.

Commands only parse arguments and call one typed library function; see README.md for the list.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="cmedl",
    help="Lung tumour segmentation on CT/CBCT with cross-modality educed distillation from unpaired MRI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

data_app = typer.Typer(help="Import, inspect, split and synthesise data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Command modules, each registering on `app` or `data_app`. A module that is not there yet
# (work in progress) is skipped so the rest of the CLI keeps working.
_COMMAND_MODULES = (
    "cmedl.cli.data",
    "cmedl.cli.export",
    "cmedl.cli.propagate",
    "cmedl.cli.phantom",
    "cmedl.cli.evaluation",
    "cmedl.cli.train",
    "cmedl.cli.inference",
    "cmedl.cli.demo",
    "cmedl.cli.study",
    "cmedl.cli.boxes",
    "cmedl.cli.pseudo_label",
    "cmedl.cli.report",
)
for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as _exc:  # pragma: no cover - only while a module is missing
        if _exc.name != _name:
            raise


def main() -> None:
    """Console-script entry point."""
    app()
