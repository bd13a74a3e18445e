"""Whole-volume image translation with a trained CycleGAN generator (``cmedl translate``).

:func:`translate_volume` turns a CT/CBCT volume into a pseudo-MRI (pMRI) volume (or, with the
``mr2ct`` generator, an MRI into a pseudo-CT) on exactly the input's grid: the volume is prepared
with the preprocessing of the generator's *input* modality stored in the checkpoint, the generator
runs slice by slice (same runner as segmentation, :func:`cmedl.nets.predict.predict_slices`),
and the slices are stacked and put back onto the input grid (linear interpolation if the
preprocessing resampled in-plane).

Output intensity scale (``scale``):

- ``"normalised"`` (default): the generator's own tanh scale, float32 in [-1, 1], i.e. the scale
  the MRI teacher network and the pMRI/MRI histogram comparison (KL) work in. Outside the body crop
  the value is -1 (background).
- ``"au"``: the same image mapped linearly to [0, 1000] arbitrary units (``(x + 1) * 500``;
  background 0), convenient in image viewers. MRI has no physical unit, so no other scale is
  more "correct".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmedl.data.plausibility import check_modality
from cmedl.data.preprocess import PreprocessConfig, prepare_volume, restore_to_input
from cmedl.devices import resolve_device
from cmedl.errors import CmedlError, InputError, did_you_mean
from cmedl.inference.files import ALLOW_MISMATCH_HINT, check_batch_size, check_inputs, run_cases
from cmedl.io.volume import Volume, read_volume
from cmedl.methods.checkpoints import DIRECTIONS, build_generator_from_checkpoint
from cmedl.nets.predict import inference_copy, predict_slices
from cmedl.training.checkpoint import load_checkpoint

SCALES = ("normalised", "au")
#: Upper end of the ``au`` scale: tanh output -1..1 maps to 0..AU_MAX.
AU_MAX = 1000.0
#: output file suffix of each direction
OUTPUT_SUFFIX = {"ct2mr": "_pmri", "mr2ct": "_pct"}


def _check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise InputError(did_you_mean(str(scale), SCALES, "intensity scale"))
    return scale


def translate_volume(
    volume: Volume,
    generator: nn.Module,
    preprocess: PreprocessConfig,
    *,
    scale: str = "normalised",
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    amp_bf16: bool = False,
) -> Volume:
    """Translate ``volume`` (``[z, y, x]``) slice by slice; returns a float32 Volume on its grid.

    Args:
        volume: the input image (CT/CBCT in HU for ``ct2mr``).
        generator: a generator mapping ``[B, 1, H, W]`` in [-1, 1] to ``[B, 1, H, W]`` in [-1, 1]
            (e.g. :class:`cmedl.nets.ResnetGenerator`); it is not modified.
        preprocess: the preprocessing of the generator's input modality (from the checkpoint).
        scale: ``normalised`` ([-1, 1]) or ``au`` ([0, 1000]); see the module docstring.
        batch_size, device, amp_bf16: as in :func:`cmedl.inference.segment.segment_volume`.
    """
    _check_scale(scale)
    prepared = prepare_volume(volume, preprocess)
    out_w, _ = predict_slices(
        generator,
        prepared.image,
        batch_size=batch_size,
        device=device,
        amp_bf16=amp_bf16,
        activation=None,
        pad_value=prepared.pad_value,
    )
    out = restore_to_input(out_w, prepared, is_label=False, fill_value=-1.0)
    del out_w
    np.clip(out, -1.0, 1.0, out=out)
    if scale == "au":
        out += np.float32(1.0)
        out *= np.float32(AU_MAX / 2.0)
    result = volume.with_array(out.astype(np.float32, copy=False))
    result.meta["cmedl_scale"] = scale
    return result


def translate_files(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    direction: str = "ct2mr",
    scale: str = "normalised",
    batch_size: int | None = None,
    device: str = "cpu",
    amp_bf16: bool = False,
    progress: bool = True,
    allow_modality_mismatch: bool = False,
    on_failure: Callable[[CmedlError], None] | None = None,
) -> list[Path]:
    """Translate image files / DICOM folders with a generator of the checkpoint
    ``model_path`` (loaded once); writes ``<out_dir>/<case>_pmri.nii.gz`` (``ct2mr``) or
    ``<case>_pct.nii.gz`` (``mr2ct``) atomically, float32.

    Inputs and planned outputs are checked before any work (no output overwrites an input); each
    input must look like the generator's input modality (:mod:`cmedl.data.plausibility`) unless
    ``allow_modality_mismatch``. A failing case is reported through ``on_failure`` (default: one line
    on stderr) and the next one goes on.

    Returns:
        The written paths, in input order.

    Raises:
        InputError: one line naming the offending checkpoint, argument or output folder (before any work).
        CasesFailed: after the loop, if any input failed.
    """
    if direction not in DIRECTIONS:
        raise InputError(did_you_mean(str(direction), DIRECTIONS, "translation direction"))
    _check_scale(scale)
    check_batch_size(batch_size)
    dev = resolve_device(device)
    suffix = f"{OUTPUT_SUFFIX[direction]}.nii.gz"
    cases = check_inputs(inputs, out_dir, [suffix])
    ckpt = load_checkpoint(model_path)
    generator, cfg = build_generator_from_checkpoint(ckpt, direction, source=model_path)
    del ckpt
    run_net = inference_copy(generator, dev)
    out = Path(out_dir)

    def work(path: Path, name: str) -> list[tuple[Volume, Path]]:
        volume = read_volume(path)
        if not allow_modality_mismatch:
            check_modality(volume, cfg.modality, path, ALLOW_MISMATCH_HINT)
        result = translate_volume(volume, run_net, cfg, scale=scale, batch_size=batch_size, device=dev,
                                  amp_bf16=amp_bf16)
        return [(result, out / f"{name}{suffix}")]

    return run_cases(cases, work, out, dev, desc="translate", progress=progress, on_failure=on_failure)


__all__ = ["AU_MAX", "SCALES", "translate_files", "translate_volume"]
