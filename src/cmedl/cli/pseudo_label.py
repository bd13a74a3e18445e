"""``cmedl pseudo-label``: a guided teacher's masks for the box-only cases of a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import app
from cmedl.cli._common import console, handle_errors


@app.command("pseudo-label")
@handle_errors
def pseudo_label_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="box-teacher or point-teacher checkpoint (.pt).")],
    data: Annotated[Path, typer.Option("--data", help="Manifest (or its folder) with box-only cases.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: labels/<case>.nii.gz + manifest.json.")],
    splits: Annotated[str, typer.Option("--splits", help="Splits whose box-only cases are labelled.")] = "train,val",
    threshold: Annotated[float, typer.Option("--threshold", help="Probability threshold (p >= threshold).")] = 0.5,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the output of an earlier run.")] = False,
) -> None:
    """Pseudo-label box-only cases with a teacher (masks kept inside the boxes); the new manifest records
    each label's source (expert | pseudo)."""
    from cmedl.inference.pseudo_label import pseudo_label_files  # lazy: `cmedl --help` under 1 s (torch: ~8 s)

    written = pseudo_label_files(model, data, out, splits=[s.strip() for s in splits.split(",") if s.strip()],
                                 threshold=threshold, device=device, overwrite=overwrite)
    console.print(f"wrote {written}", highlight=False, soft_wrap=True)
