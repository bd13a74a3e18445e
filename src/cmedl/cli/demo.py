"""``cmedl demo``: the README's main command (see :mod:`cmedl.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

from cmedl.cli import app
from cmedl.cli._common import console, handle_errors
from cmedl.errors import InputError


@app.command("demo")
@handle_errors
def demo_command(
    out: Path = typer.Option(Path("cmedl-demo"), "--out", help="Folder for the phantom data, runs, masks and tables."),
    config: str = typer.Option(None, "--config", help="Training preset name or YAML file for both methods "
                               "(default: cpu-demo, or cpu-demo-cbct with --modality cbct)."),
    modality: str = typer.Option("ct", "--modality", help="Student modality: ct, or cbct (the CBCT paper's setting)."),
    cohort: str = typer.Option("cue", "--cohort", help="cue (a weak, consistent +20-30 HU CT tumour cue) or "
                               "control (random-sign 0-12 HU: no consistent cue)."),
    n_ct: int = typer.Option(72, "--ct", help="Phantom CT (or CBCT) patients: 42 % train, 16 % val, 42 % test."),
    n_mr: int = typer.Option(20, "--mr", help="Phantom MRI patients (different patients from the CTs)."),
    largest_component: bool = typer.Option(False, "--largest-component", help="Keep only the largest 3D "
                                           "component of each predicted mask."),
    min_component_ml: float = typer.Option(None, "--min-component-ml", help="Drop predicted components smaller "
                                           "than this (ml; default: the preset's evaluation.min_component_ml, "
                                           "1.5 in cpu-demo, chosen on a development cohort's validation split)."),
    arch: str = typer.Option(None, "--arch", help="Segmentation network: unet, densefcn57 or mrrn (default: the preset's)."),
    size: str = typer.Option("112x112x32", "--size", help="Phantom voxels XxYxZ (columns x rows x slices), as in `cmedl data phantom`."),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantom, splits and training."),
    set_: list[str] = typer.Option(None, "--set", help="Config override key=value (repeatable)."),
) -> None:
    """Phantom cohort -> train CT-only and CMEDL -> segment test CTs -> evaluate overall and per tumour kind ->
    diagnostics -> table + figure."""
    from cmedl.demo import run_demo  # lazy: `cmedl --help` stays under 1 s (the library imports torch: ~8 s)

    try:
        shape = tuple(int(v) for v in reversed(size.lower().split("x")))  # XxYxZ -> (z, y, x)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"--size must be three integers >= 8 like 112x112x32, got '{size}'")
    run_demo(out, config=config, modality=modality, cohort=cohort, n_ct=n_ct, n_mr=n_mr, seed=seed, shape=shape,
             overrides=list(set_ or []), arch=arch, largest_component=largest_component,
             min_component_ml=min_component_ml,
             log=lambda msg: console.print(msg, soft_wrap=True, markup=False, highlight=False))
