"""``cmedl evaluate`` and ``cmedl compare``: thin wrappers over :mod:`cmedl.evaluation`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from cmedl.cli import app
from cmedl.cli._common import console, handle_errors
from cmedl.errors import InputError


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    pred: Path = typer.Option(..., "--pred", "-p", help="Folder of predicted masks, or a manifest (.json)."),
    ref: Path = typer.Option(..., "--ref", "-r", help="Folder of reference masks, or a manifest (labels)."),
    out: Path = typer.Option(..., "--out", "-o", help="Per-case CSV to write."),
    tolerance_mm: float | None = typer.Option(
        None, "--tolerance-mm", help="Surface-Dice tolerance in mm (default: ct 2, cbct 4.38, mr 2)."
    ),
    modality: str | None = typer.Option(None, "--modality", help="ct, cbct or mr: default tolerance."),
    label: int | None = typer.Option(None, "--label", help="Evaluate mask == LABEL (for label maps)."),
    resample_pred: bool = typer.Option(
        False, "--resample-pred", help="Resample predictions onto the reference grid (nearest neighbour)."
    ),
    split: str | None = typer.Option(None, "--split", help="Only this split of a manifest (train/val/test)."),
    overlap: float = typer.Option(0.25, "--overlap", help="Object detection threshold (fraction of a reference object)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Cases evaluated in parallel processes."),
) -> None:
    """Score predicted masks against references: DSC, sDSC, HD95, HD, ASSD, volumes, object F1."""
    from cmedl.evaluation.evaluate import evaluate_folders, summary_table  # lazy: fast `cmedl --help`

    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    rows = evaluate_folders(
        pred, ref, out, tolerance_mm=tolerance_mm, modality=modality, label=label,
        resample_pred=resample_pred, split=split, overlap=overlap, workers=workers, progress=True,
        warn=lambda msg: print(f"warning: {msg}", file=sys.stderr),
    )
    table = Table(title=f"{len(rows)} cases: {pred} vs {ref}", title_justify="left")
    table.add_column("metric")
    table.add_column("mean ± SD", justify="right")
    table.add_column("median [IQR]", justify="right")
    for cells in summary_table(rows):
        table.add_row(*cells)
    console.print(table)
    console.print(f"per-case results: {out}", highlight=False, soft_wrap=True)


@app.command("compare")
@handle_errors
def compare_cmd(
    results: list[Path] = typer.Argument(..., help="Per-case CSVs from `cmedl evaluate`; the first is the reference."),
    metric: str = typer.Option("dsc", "--metric", "-m", help="Metric column for the paired Wilcoxon tests."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the table as CSV."),
) -> None:
    """Compare methods on their common cases (Wilcoxon, Holm-Bonferroni), like the papers' tables."""
    from cmedl.evaluation.compare import compare_results  # lazy: fast `cmedl --help`

    comp = compare_results(results, metric=metric, out=out)
    headers = comp.headers()
    table = Table(title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for cells in comp.rows():
        table.add_row(*cells)
    console.print(table)
    console.print(comp.to_text().splitlines()[-1], highlight=False, soft_wrap=True)
    if out is not None:
        console.print(f"table: {out}", highlight=False, soft_wrap=True)
