"""``cmedl data import | info | split``: thin wrappers over :mod:`cmedl.data.importer`.

(``cmedl data phantom`` is registered by :mod:`cmedl.cli.phantom`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cmedl.cli import data_app
from cmedl.cli._common import console, handle_errors
from cmedl.data.cohort_import import import_data
from cmedl.data.importer import describe_path, split_manifest


def _fmt(values: Any, digits: int = 4) -> str:
    return (
        "("
        + ", ".join(f"{float(v):.{digits}g}" if isinstance(v, float) else str(v) for v in values)
        + ")"
    )


@data_app.command("import")
@handle_errors
def import_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="A DICOM series folder (one case: --id), a DICOM cohort folder (one sub-folder per "
            "patient), an images/ + labels/ folder, or an nnU-Net raw data set (dataset.json, imagesTr/).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Data set folder (images/, labels/, manifest.json).")
    ],
    case_id: Annotated[
        str | None, typer.Option("--id", help="Case id (file name stem) of a single DICOM series.")
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="auto | dicom-series | dicom-cohort | folders | nnunet (auto: dataset.json or "
            "imagesTr/ -> nnunet, images/ -> folders, DICOM files in SOURCE -> dicom-series, in "
            "its sub-folders -> dicom-cohort).",
        ),
    ] = "auto",
    rtstruct: Annotated[
        Path | None, typer.Option("--rtstruct", help="RTSTRUCT file for the label (single series).")
    ] = None,
    roi: Annotated[
        str | None,
        typer.Option("--roi", help="ROI name in the RTSTRUCT(s) (optional where there is one ROI)."),
    ] = None,
    roi_pattern: Annotated[
        str | None,
        typer.Option(
            "--roi-pattern",
            help="DICOM cohort: regular expression (full match, any case) over ROI names, e.g. "
            "'GTV.*'; several matches are united into one label.",
        ),
    ] = None,
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="Default: DICOM PatientID (single series).")
    ] = None,
    modality: Annotated[
        str | None,
        typer.Option(
            "--modality",
            help="ct, cbct or mr (default: from DICOM or nnU-Net's channel name; needed for an images/ "
            "folder). For a DICOM cohort: import only series of this modality.",
        ),
    ] = None,
    label_value: Annotated[
        int | None,
        typer.Option(
            "--label-value",
            help="Image-file data sets: the label value of the tumour (default: nnU-Net's one "
            "foreground / tumour-named label; images/ labels must be 0/1).",
        ),
    ] = None,
    include_unlabelled: Annotated[
        bool,
        typer.Option(
            "--include-unlabelled",
            help="DICOM cohort: also import image series that no RTSTRUCT labels (without a label).",
        ),
    ] = False,
    series_uid: Annotated[
        str | None,
        typer.Option("--series-uid", help="SeriesInstanceUID if the folder has several."),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="Manifest to update (default OUT/manifest.json)."),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Replace cases whose id exists (their image, label and entry)."),
    ] = False,
    no_reference_check: Annotated[
        bool,
        typer.Option(
            "--no-reference-check",
            help="Rasterise the RTSTRUCT even if its frame of reference is not the series' "
            "(only when you know the contours fit this image).",
        ),
    ] = False,
) -> None:
    """Import a DICOM series (+ RTSTRUCT ROI), a DICOM cohort, an images/ + labels/ folder or an
    nnU-Net data set as NIfTI, and add the cases to a manifest."""

    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True, markup=False)

    result = import_data(
        source,
        out,
        layout=layout,
        case_id=case_id,
        rtstruct=rtstruct,
        roi=roi,
        roi_pattern=roi_pattern,
        patient_id=patient_id,
        modality=modality,
        series_uid=series_uid,
        label_value=label_value,
        include_unlabelled=include_unlabelled,
        manifest=manifest,
        replace=replace,
        check_reference=not no_reference_check,
        on_line=say,
    )
    if result.layout == "dicom-series":
        case = result.cases[0]
        label = f", label {case.label}" if case.label else ""
        say(
            f"imported {case.id} (patient {case.patient_id}, {case.modality}, split {case.split}): "
            f"image {case.image}{label}"
        )
        return
    labelled = sum(c.label is not None for c in result.cases)
    say(
        f"imported {len(result.cases)} case(s) of {result.patients} patient(s), {labelled} labelled "
        f"({len(result.skipped)} skipped, 0 failed) in {result.seconds:.1f} s; manifest {result.manifest}"
    )


def _print_info(info: dict[str, Any]) -> None:
    kind = info["kind"]

    def p(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    p(f"{info['path']}: {kind.replace('_', ' ')}")
    if kind == "manifest":
        p(
            f"  name: {info['name']}  cases: {info['cases']}  patients: {info['patients']}  labelled: {info['labelled']}"
        )
        splits = " ".join(f"{s}={n}" for s, n in info["per_split"].items())
        p(f"  splits: {splits}" + (f"  (seed {info['seed']})" if info["seed"] is not None else ""))
        for mod, counts in info["per_modality_split"].items():
            p(f"  {mod}: " + " ".join(f"{s}={n}" for s, n in counts.items()))
        return
    if kind == "rtstruct":
        for r in info["rois"]:
            p(f"  ROI {r['number']}: {r['name']} ({r['contours']} contours)")
        return
    series = info.get("series") or []
    if series:
        p(f"  DICOM series: {len(series)}")
        for s in series:
            desc = f" '{s.description}'" if s.description else ""
            p(
                f"    {s.uid}  {s.modality or '?'}{desc}  {s.n_files} files{'' if s.is_image else ' (not an image)'}"
            )
    if kind == "dicom_folder":
        p("  several image series: pass --series-uid to choose one")
        return
    p(f"  shape (z, y, x): {info['shape']}")
    p(f"  spacing (x, y, z) mm: {_fmt(info['spacing'])}")
    p(f"  origin (x, y, z) mm: {_fmt(info['origin'], 6)}")
    p(f"  orientation: {info['orientation']}  direction: {_fmt(info['direction'])}")
    p(
        f"  dtype: {info['dtype']}  min: {info['min']:.6g}  max: {info['max']:.6g}  nonzero voxels: {info['nonzero']}"
    )
    p("  percentiles: " + "  ".join(f"p{k}={v:.6g}" for k, v in info["percentiles"].items()))
    for key, value in info.get("meta", {}).items():
        p(f"  {key}: {value}")


@data_app.command("info")
@handle_errors
def info_cmd(
    path: Annotated[
        Path, typer.Argument(help="Image file, DICOM folder, RTSTRUCT file or manifest JSON.")
    ],
    series_uid: Annotated[
        str | None,
        typer.Option("--series-uid", help="SeriesInstanceUID to describe if the folder has several."),
    ] = None,
) -> None:
    """Show geometry and intensities of an image, the ROIs of an RTSTRUCT, or manifest counts."""
    _print_info(describe_path(path, series_uid=series_uid))


@data_app.command("split")
@handle_errors
def split_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest JSON (or its folder).")],
    train: Annotated[
        float, typer.Option("--train", min=0.0, help="Fraction of patients for training.")
    ] = 0.7,
    val: Annotated[
        float, typer.Option("--val", min=0.0, help="Fraction of patients for validation.")
    ] = 0.1,
    test: Annotated[
        float, typer.Option("--test", min=0.0, help="Fraction of patients for testing.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same split).")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of rewriting MANIFEST.")
    ] = None,
) -> None:
    """Split a manifest into train/val/test by patient (reproducible from --seed)."""
    man = split_manifest(manifest, (train, val, test), seed=seed, out=out)
    counts = {
        s: len({c.patient_id for c in man.cases if c.split == s}) for s in ("train", "val", "test")
    }
    console.print(
        f"split {len(man.cases)} cases by patient (seed {seed}): "
        + ", ".join(f"{s} {n} patients" for s, n in counts.items()),
        highlight=False,
        soft_wrap=True,
    )
