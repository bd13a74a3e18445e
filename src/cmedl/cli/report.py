"""``cmedl report``: the papers' tables and figures as one offline HTML page (:mod:`cmedl.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import app
from cmedl.cli._common import console, handle_errors


@app.command("report")
@handle_errors
def report_cmd(
    sources: Annotated[list[str], typer.Argument(
        help="[NAME=]PATH, repeated: a demo folder, a study folder, a training run folder, a folder of predicted "
             "masks or a per-case results CSV; the same NAME merges a run with its masks.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (index.html, figures/, tables/).")],
    data: Annotated[Path | None, typer.Option(
        "--data", "-d", help="Data manifest (images, expert masks, splits; default: a demo folder's phantom).")] = None,
    ref: Annotated[list[str] | None, typer.Option(
        "--ref", help="NAME=DIR: one rater's masks (repeat for an inter-rater analysis).")] = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
) -> None:
    """Cohort, results tables (Wilcoxon + Holm, per tumour kind), per-case plots, training curves, example
    slices, pMRI and its histogram KL, t-SNE with silhouette, feature maps, test-time dropout and
    inter-rater analysis, in OUT/index.html (figures embedded; also as PNG and CSV)."""
    from cmedl.report import build_report  # lazy: `cmedl --help` stays under 1 s (the library imports torch)

    build_report(sources, out, data=data, refs=list(ref or []), title=title,
                 log=lambda msg: console.print(msg, soft_wrap=True, markup=False, highlight=False))
