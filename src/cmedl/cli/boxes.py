"""``cmedl data boxes``: axial box annotations for a manifest (thin wrapper over
:func:`cmedl.data.box_manifest.derive_manifest_boxes` and :func:`cmedl.data.voc_boxes.import_voc_manifest`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import data_app
from cmedl.cli._common import console, handle_errors


@data_app.command("boxes")
@handle_errors
def boxes_cmd(
    manifest: Annotated[Path, typer.Argument(help="The data set's manifest.json (or its folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new manifest (never the input); box files go to "
                                                            "boxes/<case>.json beside it.")],
    from_masks: Annotated[bool, typer.Option("--from-masks", help="Derive boxes from the cases' labels (per 3D "
                                                                  "lesion, per slice: its bounding box).")] = False,
    share: Annotated[float | None, typer.Option("--share", help="With --from-masks: share (0-1) of the labelled "
                                                                "cases of --splits made box-only (label removed "
                                                                "from the new manifest, file kept).")] = None,
    cases: Annotated[str | None, typer.Option("--cases", help="With --from-masks: comma-separated case ids made "
                                                              "box-only (instead of --share).")] = None,
    splits: Annotated[str, typer.Option("--splits", help="Splits --share draws from (comma-separated).")] = "train",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --share draw.")] = 0,
    voc: Annotated[Path | None, typer.Option("--voc", help="PASCAL VOC XML folder (Lung-PET-CT-Dx: one "
                                                           "<SOPInstanceUID>.xml per slice; searched "
                                                           "recursively).")] = None,
    dicom: Annotated[Path | None, typer.Option("--dicom", help="With --voc: the DICOM series folder of --case, or "
                                                               "a cohort root (series matched to cases by grid "
                                                               "and patient).")] = None,
    case: Annotated[str | None, typer.Option("--case", help="With --voc: the case whose image --dicom is.")] = None,
    series_uid: Annotated[str | None, typer.Option("--series-uid", help="With --voc --case: the series in "
                                                                        "--dicom (when it holds several).")] = None,
) -> None:
    """Box annotations (weak labels): derive them from masks, or import a PASCAL VOC folder."""
    from cmedl.errors import InputError  # lazy: keeps `cmedl --help` fast

    if from_masks == (voc is not None):
        raise InputError("choose one source: --from-masks or --voc FOLDER --dicom FOLDER")
    if from_masks:
        if share is not None and cases:
            raise InputError("--share and --cases exclude each other")
        if dicom is not None or case is not None or series_uid is not None:
            raise InputError("--dicom, --case and --series-uid go with --voc, not --from-masks")
        from cmedl.data.box_manifest import derive_manifest_boxes  # lazy: library import

        result = derive_manifest_boxes(
            manifest, out, share=share, seed=seed, splits=[s.strip() for s in splits.split(",") if s.strip()],
            cases=[c.strip() for c in cases.split(",") if c.strip()] if cases else None)
    else:
        if dicom is None:
            raise InputError("--voc needs --dicom (the DICOM series folder, or the cohort root)")
        if share is not None or cases:
            raise InputError("--share and --cases go with --from-masks")
        from cmedl.data.voc_boxes import import_voc_manifest  # lazy: library import

        result = import_voc_manifest(manifest, out, voc, dicom, case=case, series_uid=series_uid)
    for line in result.notes:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"wrote {result.manifest} and {len(result.box_files)} box files in "
                  f"{result.manifest.parent / 'boxes'}", highlight=False, soft_wrap=True)
