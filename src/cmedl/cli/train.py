"""``cmedl train``: train a registered method from a config preset or YAML file; ``cmedl methods`` lists them.

Thin wrapper: options become config overrides, then :func:`cmedl.training.trainer.train` runs.
Under ``torchrun --nproc_per_node N -m cmedl train ...`` the run is data-parallel over the N processes
(:mod:`cmedl.training.distributed`; ``training.batch_size`` is the global batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import app
from cmedl.cli._common import console, handle_errors
from cmedl.errors import InputError


@app.command("train")
@handle_errors
def train_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Manifest (or its folder) with the CT/CBCT cases.")],
    config: Annotated[str, typer.Option(
        "--config", "-c",
        # the presets are the files of cmedl.config.PRESET_DIR, listed without importing the library (fast --help)
        help="Preset name ("
             + ", ".join(sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
             + ") or YAML file.",
    )] = "cpu-demo",
    mr_data: Annotated[Path | None, typer.Option(
        "--mr-data", help="Separate manifest of MRI cases (default: the MRI cases of --data).")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", "-m", help="A registered method (`cmedl methods` lists them; overrides training.method).")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run folder (checkpoints, logs, config.yaml).")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.pt.")] = False,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Config override section.key=value (repeatable), e.g. training.max_epochs=5.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (overrides training.seed).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda, cuda:N or auto (overrides training.device; under torchrun each process uses "
                     "cuda:LOCAL_RANK).")] = None,
    vgg_weights: Annotated[Path | None, typer.Option(
        "--vgg-weights", help="torchvision vgg19 ImageNet state-dict file for the contextual loss (cyclegan).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a segmentation model; writes config.yaml, best.pt/last.pt, log.csv, TensorBoard logs, image grids."""
    from cmedl.methods import load_config  # lazy: `cmedl --help` stays under 1 s (the library imports torch: ~8 s)
    from cmedl.training import train  # lazy: as above

    sets = list(overrides or [])
    if method is not None:
        sets.append(f"training.method={method}")
    if seed is not None:
        sets.append(f"training.seed={seed}")
    if device is not None:
        sets.append(f"training.device={device}")
    if vgg_weights is not None:
        if not vgg_weights.is_file():
            raise InputError("VGG19 weights file not found", vgg_weights)
        sets.append(f"cyclegan.vgg_weights={vgg_weights.resolve()}")
    if quiet:
        sets.append("training.progress=false")
    cfg = load_config(config, sets)
    result = train(cfg, data, mr_data, out_dir=out, resume=resume)
    console.print(
        f"{cfg.training.method}: best epoch {result.best_epoch}/{result.epochs}, "
        f"val Dice loss {result.best_val_loss:.4f}, val Dice {result.best_val_dice:.4f}"
        f"{' (early stop)' if result.stopped_early else ''}, {result.seconds:.0f} s; "
        f"best checkpoint: {result.best_checkpoint}"
    )


@app.command("methods")
@handle_errors
def methods_command() -> None:
    """List the registered training methods: what each does, its batch kind, what runs at test time."""
    from cmedl.methods import describe_methods  # lazy: `cmedl --help` stays under 1 s (torch: ~8 s)

    for row in describe_methods():
        console.print(f"[bold]{row['method']}[/bold]: {row['description']}", soft_wrap=True)
        console.print(f"    batch: {row['batch']}; test time: {row['test time']}; translate: {row['translate']}; "
                      f"config sections: {row['sections']}", soft_wrap=True, highlight=False)
