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
        list[Path],
        typer.Argument(help="CT/CBCT volumes (NIfTI, NRRD, MHA) or DICOM series folders."),
    ],
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Checkpoint (.pt) written by `cmedl train`.")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output folder: <case>.nii.gz masks on the input grids."),
    ],
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
    probabilities: Annotated[
        bool,
        typer.Option(
            "--probabilities", help="Also write <case>_prob.nii.gz (float32 probabilities)."
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
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
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
    """Segment lung tumours with the student network of a checkpoint; masks keep the input geometry."""
    from cmedl.inference.segment import segment_files  # lazy: `cmedl --help` under 1 s (torch: ~8 s)

    written = segment_files(
        model,
        inputs,
        out,
        threshold=threshold,
        largest_component=largest_component,
        fill_holes=fill_holes,
        probabilities=probabilities,
        batch_size=batch_size,
        device=device,
        amp_bf16=bf16,
        mc_dropout_samples=mc_dropout,
        seed=seed,
        allow_modality_mismatch=allow_modality_mismatch,
    )
    console.print(f"wrote {len(written)} mask(s) to {out}", highlight=False, soft_wrap=True)


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
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
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
