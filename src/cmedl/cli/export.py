"""``cmedl data export``: a mask on a DICOM series' grid -> RTSTRUCT and/or DICOM-SEG
(a thin wrapper over :func:`cmedl.io.dicom_export.export_mask_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import data_app
from cmedl.cli._common import console, handle_errors


@data_app.command("export")
@handle_errors
def export_cmd(
    mask: Annotated[
        Path, typer.Argument(help="Binary mask (NIfTI, NRRD, MHA) on the grid of the DICOM series.")
    ],
    dicom: Annotated[
        Path, typer.Option("--dicom", help="Folder holding the DICOM series the mask was made on.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (may be the series folder).")],
    format: Annotated[
        str, typer.Option("--format", help="rtstruct, seg or rtstruct,seg.")
    ] = "rtstruct,seg",
    roi_name: Annotated[str, typer.Option("--roi-name", help="ROI name / segment label.")] = "GTV",
    colour: Annotated[
        str, typer.Option("--colour", help="Display colour R,G,B (0-255).")
    ] = "255,0,0",
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Output file stem (default: the mask's): NAME_rtstruct.dcm, NAME_seg.dcm.",
        ),
    ] = None,
    probabilities: Annotated[
        Path | None,
        typer.Option(
            "--probabilities",
            help="Probability map in [0, 1] on the same grid: the SEG is FRACTIONAL.",
        ),
    ] = None,
    series_uid: Annotated[
        str | None,
        typer.Option("--series-uid", help="SeriesInstanceUID if the folder has several series."),
    ] = None,
) -> None:
    """Export a mask as an RT Structure Set and/or DICOM-SEG referencing its DICOM series."""
    from cmedl.io.dicom_export import export_mask_file  # lazy: keeps `cmedl --help` fast

    written = export_mask_file(
        mask,
        dicom,
        out,
        format.split(","),
        name=name,
        roi_name=roi_name,
        colour=colour,
        probabilities=probabilities,
        series_uid=series_uid,
    )
    for path in written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
