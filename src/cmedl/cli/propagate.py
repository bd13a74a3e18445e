"""``cmedl data propagate``: a planning-CT mask carried onto a CBCT by registration
(thin wrapper over :func:`cmedl.data.registration.propagate_files`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import data_app
from cmedl.cli._common import console, handle_errors


def _iterations(text: str) -> tuple[int, ...]:
    from cmedl.errors import InputError  # lazy: errors only (keeps `cmedl --help` fast)

    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--iterations: comma-separated integers per level (e.g. 100,70,30), got {text!r}") from None


@data_app.command("propagate")
@handle_errors
def propagate_cmd(
    fixed: Annotated[Path, typer.Option("--fixed", help="CBCT (image file or DICOM series folder): the target grid.")],
    moving: Annotated[Path, typer.Option("--moving", help="Planning CT the mask belongs to.")],
    mask: Annotated[Path, typer.Option("--mask", help="0/1 mask on the planning CT's grid.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: <cbct>.nii.gz (the mask on the CBCT grid).")],
    iterations: Annotated[
        str, typer.Option("--iterations", help="B-spline iterations per level, coarsest first (its length = levels).")
    ] = "100,70,30",
    mesh_spacing: Annotated[
        float, typer.Option("--mesh-spacing", help="B-spline control-point spacing (mm) at the coarsest level.")
    ] = 32.0,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="Deformable gradient-descent step.")] = 0.2,
    samples: Annotated[
        int, typer.Option("--samples", help="Metric samples per level (0: every voxel; slower).")
    ] = 20000,
    roi_margin: Annotated[
        float, typer.Option("--roi-margin", help="Margin (mm) of the deformable region around the mask; "
                                                 "-1: the whole image (slow on large images).")
    ] = 40.0,
    interpolation: Annotated[
        str, typer.Option("--interpolation", help="Mask resampling: linear (then >= 0.5) or nearest.")
    ] = "linear",
    init: Annotated[
        str, typer.Option("--init", help="geometry: align image centres first; identity: images already share "
                                         "patient coordinates.")
    ] = "geometry",
    rigid_only: Annotated[bool, typer.Option("--rigid-only", help="Skip the deformable stage.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Metric sampling seed (>= 1).")] = 1,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="ITK threads (1: identical results on any machine).")
    ] = None,
    save_warped: Annotated[
        bool, typer.Option("--save-warped", help="Also write <cbct>_warped.nii.gz (the planning CT on the CBCT grid).")
    ] = False,
    save_transform: Annotated[
        bool, typer.Option("--save-transform", help="Also write <cbct>_transform.h5 (CBCT point -> planning-CT point).")
    ] = False,
) -> None:
    """Propagate a planning-CT contour onto a CBCT: rigid then B-spline registration (SimpleITK)."""
    from cmedl.data.propagation import propagate_files  # lazy: SimpleITK registration
    from cmedl.data.registration import PropagateConfig  # lazy: as above

    config = PropagateConfig(
        iterations=_iterations(iterations), mesh_spacing_mm=mesh_spacing, learning_rate=learning_rate,
        samples=samples, roi_margin_mm=None if roi_margin < 0 else roi_margin, seed=seed,
        mask_interpolation=interpolation, init=init, deformable=not rigid_only, threads=threads,
    )
    result = propagate_files(fixed, moving, mask, out, config, save_warped=save_warped,
                             save_transform=save_transform)
    console.print(result.quality.line(), highlight=False, soft_wrap=True)
    console.print(f"wrote {', '.join(str(p) for p in result.written)}", highlight=False, soft_wrap=True)
