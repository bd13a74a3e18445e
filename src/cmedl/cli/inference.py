"""``cmedl segment`` and ``cmedl translate``: thin wrappers over :mod:`cmedl.inference`.

With several inputs a failing case is reported on stderr (``error: <input>: <reason>``) and the next one
goes on; the command then exits 1 with a last line saying how many failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmedl.cli import app
from cmedl.cli._common import console, handle_errors


@app.command("segment")
@handle_errors
def segment_cmd(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="CT/CBCT volumes (NIfTI, NRRD, MHA), DICOM series folders, or folders of them."),
    ] = None,
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Checkpoint (.pt) written by `cmedl train`.")
    ] = ...,  # type: ignore[assignment]
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output folder: <case>.nii.gz masks on the input grids."),
    ] = ...,  # type: ignore[assignment]
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="Segment the cases of a manifest split instead (named by case id)."),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Manifest split: train, val, test or all.")
    ] = "test",
    formats: Annotated[
        str,
        typer.Option("--format", help="Outputs, any of nifti,rtstruct,seg (rtstruct/seg: DICOM series inputs)."),
    ] = "nifti",
    roi_name: Annotated[
        str, typer.Option("--roi-name", help="ROI name (RTSTRUCT) and segment label (SEG).")
    ] = "GTV",
    roi_colour: Annotated[
        str, typer.Option("--roi-colour", help="ROI display colour R,G,B (0-255).")
    ] = "255,0,0",
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Segment again the cases whose outputs exist (default: skip them)."),
    ] = False,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Probability threshold (mask: p >= threshold).")
    ] = 0.5,
    largest_component: Annotated[
        bool,
        typer.Option("--largest-component", help="Keep only the largest 3D connected component."),
    ] = False,
    fill_holes: Annotated[
        bool, typer.Option("--fill-holes", help="Fill holes in every axial slice of the mask.")
    ] = False,
    min_component_ml: Annotated[
        float, typer.Option("--min-component-ml", help="Drop 3D components smaller than this volume (ml).")
    ] = 0.0,
    lung_filter: Annotated[
        bool,
        typer.Option("--lung-filter", help="Keep only components within --lung-margin-mm of the lungs "
                     "(classical lung mask of the input CT)."),
    ] = False,
    lung_margin_mm: Annotated[
        float, typer.Option("--lung-margin-mm", help="Distance from the lungs a kept component must reach (mm).")
    ] = 5.0,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="Run the checkpoint with another method's test-time recipe, e.g. "
                     "pmri-cmedl on a cmedl checkpoint (CT -> pMRI -> MRI teacher)."),
    ] = None,
    probabilities: Annotated[
        bool,
        typer.Option(
            "--probabilities",
            help="Also write <case>_prob.nii.gz (float32 probabilities); makes the SEG FRACTIONAL.",
        ),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Slices per forward pass (default: ~512x512 px on CPU, 8 on CUDA).",
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "cpu",
    bf16: Annotated[
        bool, typer.Option("--bf16", help="bf16 autocast (faster on recent CPUs and GPUs).")
    ] = False,
    mc_dropout: Annotated[
        int,
        typer.Option(
            "--mc-dropout",
            min=0,
            help="Test-time dropout passes N: mean probability and <case>_sd.nii.gz.",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the MC-dropout masks.")] = 0,
    allow_modality_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-modality-mismatch",
            help="Segment inputs whose intensities do not look like the model's modality (e.g. no HU).",
        ),
    ] = False,
) -> None:
    """Segment lung tumours with a checkpoint's test-time recipe (the student alone, or translator + segmenter where
    the method has one; --recipe chooses another method's); masks keep the input geometry.

    Finished cases (all their outputs present) are skipped on a rerun unless --overwrite; a failing case is reported on one line and the others go on (exit status 1 at the end)."""
    from cmedl.errors import InputError  # lazy: as below
    from cmedl.inference.files import report_skip
    from cmedl.inference.segment import segment_files  # lazy: `cmedl --help` under 1 s (torch: ~8 s)

    if not inputs and manifest is None:
        raise InputError("give input volumes or folders, or --manifest")
    skipped: list[Path] = []

    def on_skip(path: Path, outputs: list[Path]) -> None:
        skipped.append(path)
        report_skip(path, outputs)

    written = segment_files(
        model,
        inputs or [],
        out,
        threshold=threshold,
        largest_component=largest_component,
        fill_holes=fill_holes,
        min_component_ml=min_component_ml,
        lung_filter=lung_filter,
        lung_margin_mm=lung_margin_mm,
        recipe=recipe,
        probabilities=probabilities,
        batch_size=batch_size,
        device=device,
        amp_bf16=bf16,
        mc_dropout_samples=mc_dropout,
        seed=seed,
        allow_modality_mismatch=allow_modality_mismatch,
        manifest=manifest,
        split=None if split == "all" else split,
        formats=formats,
        roi_name=roi_name,
        roi_colour=roi_colour,
        overwrite=overwrite,
        on_skip=on_skip,
    )
    done = f" ({len(skipped)} already done, skipped)" if skipped else ""
    console.print(f"wrote {len(written) - len(skipped)} case(s) to {out}{done}", highlight=False, soft_wrap=True)


@app.command("translate")
@handle_errors
def translate_cmd(
    inputs: Annotated[
        list[Path], typer.Argument(help="Volumes (NIfTI, NRRD, MHA) or DICOM series folders.")
    ],
    model: Annotated[
        Path, typer.Option("--model", "-m", help="`cmedl` checkpoint (.pt) holding the generators.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output folder: <case>_pmri.nii.gz (or _pct) on the input grids."
        ),
    ],
    direction: Annotated[
        str, typer.Option("--direction", help="ct2mr (CT/CBCT -> pMRI) or mr2ct.")
    ] = "ct2mr",
    scale: Annotated[
        str,
        typer.Option(
            "--scale", help="normalised: generator scale [-1, 1]; au: [0, 1000] arbitrary units."
        ),
    ] = "normalised",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Slices per forward pass.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "cpu",
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 autocast.")] = False,
    allow_modality_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-modality-mismatch",
            help="Translate inputs whose intensities do not look like the generator's input modality.",
        ),
    ] = False,
) -> None:
    """Translate CT/CBCT volumes to pseudo-MRI (or MRI to pseudo-CT) with a CMEDL checkpoint's generator."""
    from cmedl.inference.translate import translate_files  # lazy: as above

    written = translate_files(
        model,
        inputs,
        out,
        direction=direction,
        scale=scale,
        batch_size=batch_size,
        device=device,
        amp_bf16=bf16,
        allow_modality_mismatch=allow_modality_mismatch,
    )
    console.print(f"wrote {len(written)} volume(s) to {out}", highlight=False, soft_wrap=True)
