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
    ct_tumour_contrast: Annotated[
        str,
        typer.Option(
            "--ct-tumour-contrast",
            help="LO,HI: range of |tumour - mediastinum| HU on CT/CBCT (default 0,12: calibrated, "
            "nearly invisible; raise it to study how much CT contrast a method needs).",
        ),
    ] = "0,12",
) -> None:
    """Synthesise a thoracic phantom cohort (CT in HU, CBCT with artefacts, T2w MRI) with tumour masks."""
    from cmedl.data.phantom import generate_cohort  # lazy: fast `cmedl --help`
    from cmedl.data.phantom.cohort import MAX_VOXELS  # lazy: as above

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
        ct_tumour_contrast_hu=_floats(
            ct_tumour_contrast, 2, f"--ct-tumour-contrast: expected two numbers LO,HI, got {ct_tumour_contrast!r}"
        ),
    )
    console.print(f"wrote {ct + cbct + mr} cases and {path}")
