"""``cmedl data phantom``: write a synthetic thoracic CT / CBCT / T2w MRI cohort with a manifest."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import data_app
from cmedl.cli._common import console, handle_errors
from cmedl.errors import InputError


def _triple(text: str | None, what: str, cast: type) -> tuple | None:
    """Parse ``AxBxC`` (or ``A,B,C``) into a tuple of three finite positive numbers, or None."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = tuple(cast(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise InputError(f"--{what} must look like 128x128x48 (x, y, z), got '{text}'")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise InputError(f"--{what} must be three finite positive numbers (x, y, z), got '{text}'")
    return vals


def _floats(text: str, n: int, error: str) -> tuple[float, ...]:
    """Parse ``n`` comma-separated numbers; ``error`` is the one-line message otherwise."""
    try:
        vals = tuple(float(p) for p in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise InputError(error)
    return vals


@data_app.command("phantom")
@handle_errors
def phantom(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (images/, labels/, manifest.json).")
    ],
    ct: Annotated[int, typer.Option("--ct", help="Number of CT patients.")] = 20,
    cbct: Annotated[int, typer.Option("--cbct", help="Number of CBCT patients.")] = 0,
    mr: Annotated[
        int, typer.Option("--mr", help="Number of T2w MRI patients (unpaired with CT).")
    ] = 10,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed: same seed, byte-identical images.")
    ] = 0,
    size: Annotated[
        str, typer.Option("--size", help="Voxels X x Y x Z of every image.")
    ] = "128x128x48",
    spacing: Annotated[
        str | None,
        typer.Option(
            "--spacing",
            help="CT/CBCT spacing X x Y x Z mm (default: 346 x 346 x 144 mm field of view).",
        ),
    ] = None,
    mr_spacing: Annotated[
        str | None,
        typer.Option(
            "--mr-spacing",
            help="MRI spacing X x Y x Z mm (default: CT spacing x 1.12, 0.99, 0.83).",
        ),
    ] = None,
    fractions: Annotated[
        str, typer.Option("--fractions", help="train,val,test patient fractions.")
    ] = "0.7,0.1,0.2",
    mr_labels: Annotated[
        bool, typer.Option("--mr-labels/--no-mr-labels", help="Write tumour masks for MRI too.")
    ] = True,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Processes (default: min(2, CPUs)).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a cohort already in --out.")
    ] = False,
    control: Annotated[
        bool,
        typer.Option("--control", help="Negative-control cohort: the original random-sign 0-12 HU CT "
                     "tumour contrast (no consistent cue); same as --ct-cue 0,12 --cue-sign random."),
    ] = False,
    ct_cue: Annotated[
        str | None,
        typer.Option("--ct-cue", help="LO,HI: tumour minus the soft tissue it abuts on CT/CBCT, HU "
                     "(default 15,25; with --control 0,12)."),
    ] = None,
    cue_sign: Annotated[
        str | None,
        typer.Option("--cue-sign", help="positive (same sign in every patient; default) or random (--control)."),
    ] = None,
    diameters: Annotated[
        str, typer.Option("--diameters", help="LO,HI: dominant tumour diameter range, mm (log-uniform).")
    ] = "20,50",
    nodule_share: Annotated[
        float, typer.Option("--nodule-share", help="Share of dominant tumours drawn as 5-15 mm nodules.")
    ] = 0.0,
    second_tumour: Annotated[
        float, typer.Option("--second-tumour", help="Share of patients with a second, smaller tumour.")
    ] = 0.0,
    kind_mix: Annotated[
        str, typer.Option("--kind-mix", help="Shares of lung,mediastinal,chest-wall tumours.")
    ] = "1,1,1",
    paired_oracle: Annotated[
        bool,
        typer.Option("--paired-oracle", help="Also render each CT/CBCT patient as MRI on its own grid "
                     "(paired_mr/): an upper-bound control arm only."),
    ] = False,
    box_only_share: Annotated[
        float,
        typer.Option("--box-only-share", help="Share (0-1) of CT training cases made box-only: every CT case "
                     "gets boxes/<id>.json (axial boxes of its tumour) and these no label in the manifest."),
    ] = 0.0,
) -> None:
    """Synthesise a thoracic phantom cohort (CT in HU, CBCT with artefacts, T2w MRI) with tumour masks."""
    from cmedl.data.phantom import generate_cohort  # lazy: fast `cmedl --help`
    from cmedl.data.phantom.cohort import MAX_VOXELS  # lazy: as above

    from cmedl.data.phantom.options import PhantomOptions, parse_kind_mix  # lazy: as above

    study = dict(
        diameter_mm=_floats(diameters, 2, f"--diameters: expected two numbers LO,HI, got {diameters!r}"),
        nodule_share=nodule_share,
        second_tumour=second_tumour,
        kind_mix=parse_kind_mix(kind_mix),
        paired_oracle=paired_oracle,
        box_only_share=box_only_share,
    )
    if ct_cue is not None:
        study["ct_cue_hu"] = _floats(ct_cue, 2, f"--ct-cue: expected two numbers LO,HI, got {ct_cue!r}")
    if cue_sign is not None:
        study["cue_sign"] = cue_sign
    options = PhantomOptions.control(**study) if control else PhantomOptions(**study)
    nx, ny, nz = _triple(size, "size", int)  # type: ignore[misc]
    if nx * ny * nz > MAX_VOXELS:
        raise InputError(f"--size {size} is {nx * ny * nz:.3g} voxels per image; at most {MAX_VOXELS} (2**31)")
    path = generate_cohort(
        out,
        ct,
        cbct,
        mr,
        seed=seed,
        shape=(nz, ny, nx),
        spacing=_triple(spacing, "spacing", float),
        mr_spacing=_triple(mr_spacing, "mr-spacing", float),
        fractions=_floats(fractions, 3, f"--fractions must be three numbers train,val,test, got '{fractions}'"),
        mr_labels=mr_labels,
        workers=workers,
        overwrite=overwrite,
        progress=True,
        options=options,
    )
    console.print(f"wrote {ct + cbct + mr} cases and {path}")
