"""Whole-volume segmentation with a trained method's test-time model (``cmedl segment``).

Pipeline of :func:`segment_volume` for one volume ``[z, y, x]``:

1. :func:`cmedl.data.preprocess.prepare_volume` with the preprocessing stored in the checkpoint
   (intensity normalisation, optional in-plane resampling, in-plane crop to the body box padded to a
   multiple of 16; slices are never dropped, so working slice ``k`` is input slice ``k``);
2. the network runs over the working grid (:mod:`cmedl.nets.predict`): a 2D network slice by slice
   (the volume padded once to its ``stride``), a 3D network (``dims == 3``, the ``ct-only-3d`` 3D
   U-Net) by sliding window over patches of the training ``data.patch_size_3d`` (25 % overlap,
   Gaussian blending). What runs is the method's test-time recipe
   (:class:`cmedl.methods.TestTimeModel`: the student alone, translator then segmenter, or CT and
   pMRI fused), loaded by :func:`segment_files` from the checkpoint;
3. the probability map goes back onto exactly the input grid with
   :func:`cmedl.data.preprocess.restore_to_input` (linear interpolation if the preprocessing
   resampled in-plane, probability 0 outside the body crop);
4. :func:`cmedl.inference.postprocess.postprocess_probabilities`: ``p >= threshold``, optional
   lung filter (``lung_filter``: keep the components that reach the lungs, the classical lung mask of
   :func:`cmedl.data.lung.lung_mask` on the input CT grown by ``lung_margin_mm``; LungTumorMask's
   post-processing, which without a margin drops tumours outside the lung mask), largest 3D connected
   component and per-slice hole filling (LungTumorMask's issue #8: holes on 5 mm slices). The mask is the thresholded
   *restored* probability map, so the written mask and probability files always agree voxel by
   voxel (``mask == (prob >= threshold)`` before the optional clean-ups).

Teacher-student paper students trained with its preprocessing (checkpoint ``preprocess["ts"]``) take
:mod:`cmedl.inference.ts_segment` for steps 1-3 instead: resampled, z-scored, each lung crop by sliding
window, back onto the input grid; step 4 is the same.

Test-time (Monte Carlo) dropout, as in the CBCT paper's robustness analysis
(``mc_dropout_samples = N > 0``), returns the mean probability and the per-voxel SD over the N passes
(:func:`cmedl.nets.predict.predict_slices`); a network built without dropout gives SD 0 everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmedl.data.lung import lung_mask
from cmedl.data.plausibility import check_modality
from cmedl.data.preprocess import PreprocessConfig, prepare_volume, restore_to_input
from cmedl.data.ts_preprocess import TSPreprocessConfig
from cmedl.devices import keep_freed_host_memory, resolve_device
from cmedl.errors import CmedlError, InputError
from cmedl.inference.files import (
    ALLOW_MISMATCH_HINT,
    CaseOutputs,
    check_batch_size,
    check_inputs,
    manifest_inputs,
    run_cases,
)
from cmedl.inference.formats import (
    check_dicom_inputs,
    check_output_formats,
    check_roi,
    dicom_formats,
    output_suffixes,
)
from cmedl.inference.postprocess import near_region, postprocess_probabilities
from cmedl.inference.ts_segment import student_probabilities, ts_preprocess_of_checkpoint
from cmedl.io.dicom_export import export_mask
from cmedl.io.volume import Volume, read_volume
from cmedl.methods import build_test_time_model
from cmedl.methods.checkpoint_as import checkpoint_as_method
from cmedl.methods.checkpoints import method_of
from cmedl.nets.predict import inference_copy, network_dims, predict_slices, predict_volume_3d
from cmedl.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

#: distance from the lungs within which the lung filter keeps a component: tumours abutting the
#: mediastinum or chest wall lie mostly outside the lung mask (measured on the phantom: ~12 % of their
#: voxels inside it), so a component must reach the lungs grown by this margin, not lie inside them
DEFAULT_LUNG_MARGIN_MM = 5.0


@dataclass
class SegmentationResult:
    """Output of :func:`segment_volume`, every volume on exactly the input's grid.

    Attributes:
        mask: ``uint8`` {0, 1} tumour mask.
        probabilities: float32 sigmoid probabilities in [0, 1] (MC mean with MC dropout), or None
            unless requested.
        uncertainty: float32 per-voxel SD of the probability over the MC-dropout passes, or None
            without MC dropout.
    """

    mask: Volume
    probabilities: Volume | None = None
    uncertainty: Volume | None = None



# ============================================================================ one volume
def segment_volume(
    volume: Volume,
    net: nn.Module,
    preprocess: PreprocessConfig,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    threshold: float = 0.5,
    largest_component: bool = False,
    fill_holes: bool = False,
    min_component_ml: float = 0.0,
    return_probabilities: bool = False,
    amp_bf16: bool = False,
    mc_dropout_samples: int = 0,
    seed: int = 0,
    channels_last: bool | None = None,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    lung_filter: bool = False,
    lung_margin_mm: float = DEFAULT_LUNG_MARGIN_MM,
    ts_preprocess: TSPreprocessConfig | None = None,
) -> SegmentationResult:
    """Segment one volume with a 2D (slice-wise) or 3D (sliding-window) student; every output is on
    ``volume``'s exact grid.

    Args:
        volume: the CT/CBCT volume (CT in HU), array ``[z, y, x]``.
        net: the student segmentation network (logits ``[B, 1, H, W]``); it is not modified.
        preprocess: the preprocessing the network was trained with (stored in its checkpoint).
        batch_size: slices per forward pass; None = about 512x512 pixels per pass on CPU, 8 on CUDA.
            The result does not depend on it.
        device: ``cpu``, ``cuda`` or ``auto``.
        threshold: probability threshold of the mask (``p >= threshold``), in (0, 1).
        largest_component: keep only the largest 3D connected component (26-connectivity).
        fill_holes: fill holes in every axial slice of the mask.
        min_component_ml: drop connected components smaller than this volume (ml) before the others.
        return_probabilities: also return the probability map.
        amp_bf16: bf16 autocast (about 2x faster on CPUs with AVX512-BF16/AMX and on GPUs;
            probabilities differ from fp32 by ~1e-2).
        mc_dropout_samples: N > 0 enables test-time dropout with N passes (mean probability and
            per-voxel SD; see the module docstring).
        seed: seed of the MC-dropout masks.
        channels_last: memory format (None: channels_last on CPU, where it is faster).
        patch_size: ``(d, h, w)`` sliding window of a 3D student (``net.dims == 3``; required
            then: the checkpoint's ``data.patch_size_3d``); ignored for 2D students.
        overlap: sliding-window overlap of a 3D student, in ``[0, 1)``.
        lung_filter: keep only the mask components within ``lung_margin_mm`` of the lungs (CT only;
            no lung found: the mask is left as it is, with a logged warning).
        ts_preprocess: a teacher-student paper student's preprocessing (the checkpoint's
            ``preprocess["ts"]``): ``preprocess`` is then not applied, the student segments each lung
            crop of the resampled CT (:mod:`cmedl.inference.ts_segment`).

    Raises:
        InputError: bad arguments or an image the preprocessing refuses (named by its source).
    """
    is_3d = network_dims(net) == 3
    check_segment_arguments(threshold, mc_dropout_samples, network_dims(net))
    if is_3d and patch_size is None:
        raise InputError("a 3D student needs the sliding-window patch size (the checkpoint's data.patch_size_3d)")
    sd_w: np.ndarray | None = None
    if is_3d and ts_preprocess is not None:  # hook: the teacher-student paper's pipeline (per-lung crops)
        probs = student_probabilities(volume, net, ts_preprocess, patch_size, overlap=overlap,  # type: ignore[arg-type]
                                      batch_size=batch_size, device=device, amp_bf16=amp_bf16,
                                      channels_last=channels_last)
    else:
        prepared = prepare_volume(volume, preprocess)
        if is_3d:
            probs_w = predict_volume_3d(
                net, prepared.image, patch_size, overlap=overlap, batch_size=batch_size,  # type: ignore[arg-type]
                device=device, amp_bf16=amp_bf16, pad_value=prepared.pad_value, channels_last=channels_last)
        else:
            probs_w, sd_w = predict_slices(
                net, prepared.image, batch_size=batch_size, device=device, amp_bf16=amp_bf16,
                activation=torch.sigmoid, pad_value=prepared.pad_value, mc_dropout_samples=mc_dropout_samples,
                seed=seed, channels_last=channels_last)
        probs = restore_to_input(probs_w, prepared, is_label=False, fill_value=0.0)
        del probs_w
        np.clip(probs, 0.0, 1.0, out=probs)  # linear interpolation cannot leave [0, 1]; guards rounding
    region = lung_region(volume, lung_margin_mm) if lung_filter else None
    mask = postprocess_probabilities(probs, threshold, largest_component, fill_holes, min_component_ml,
                                     volume.spacing_zyx, keep_region=region)
    uncertainty = None
    if sd_w is not None:
        sd = restore_to_input(sd_w, prepared, is_label=False, fill_value=0.0)  # 2D students only
        uncertainty = volume.with_array(np.maximum(sd, 0.0, out=sd))
    return SegmentationResult(
        mask=volume.with_array(mask),
        probabilities=volume.with_array(probs) if return_probabilities else None,
        uncertainty=uncertainty,
    )


def lung_region(volume: Volume, margin_mm: float = DEFAULT_LUNG_MARGIN_MM) -> np.ndarray | None:
    """The lungs of a CT grown by ``margin_mm`` (bool ``[z, y, x]``), or None (and a warning) when no
    lung is found: the lung filter then keeps every component rather than erasing the mask."""
    lungs = lung_mask(volume) > 0
    if not lungs.any():
        log.warning("%s: no lung found; the lung filter is skipped", volume.meta.get("source", "volume"))
        return None
    return near_region(lungs, volume.spacing_zyx, margin_mm)


# ============================================================================ files
def check_segment_arguments(threshold: float, mc_dropout_samples: int, dims: int | None = None) -> None:
    """Threshold in (0, 1), MC-dropout passes >= 0 (2D networks only)."""
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    if mc_dropout_samples < 0:
        raise InputError(f"the number of MC-dropout samples must be >= 0, got {mc_dropout_samples}")
    if dims == 3 and mc_dropout_samples:
        raise InputError("MC dropout is implemented for 2D (slice-wise) students only")


def segment_files(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    largest_component: bool = False,
    fill_holes: bool = False,
    min_component_ml: float = 0.0,
    probabilities: bool = False,
    batch_size: int | None = None,
    device: str = "cpu",
    amp_bf16: bool = False,
    mc_dropout_samples: int = 0,
    seed: int = 0,
    progress: bool = True,
    allow_modality_mismatch: bool = False,
    on_failure: Callable[[CmedlError], None] | None = None,
    manifest: str | Path | None = None,
    split: str | None = None,
    formats: str | Sequence[str] = ("nifti",),
    roi_name: str = "GTV",
    roi_colour: Sequence[int] | str = (255, 0, 0),
    overwrite: bool = True,
    on_skip: Callable[[Path, Sequence[Path]], None] | None = None,
    recipe: str | None = None,
    lung_filter: bool = False,
    lung_margin_mm: float = DEFAULT_LUNG_MARGIN_MM,
) -> list[Path]:
    """Segment image files / DICOM folders with the test-time model of checkpoint ``model_path``.

    The checkpoint is loaded once; what runs is its method's test-time recipe. Inputs: files, DICOM
    series folders and folders of them (:func:`cmedl.inference.files.collect_inputs`), or, with
    ``manifest``, the cases of its ``split`` (all splits: None) of the model's modality, named by case
    id. Per case, the files of :mod:`cmedl.inference.formats` (``formats``; default
    ``<out_dir>/<case>.nii.gz``, uint8 mask, plus ``<case>_prob.nii.gz`` with ``probabilities`` and
    ``<case>_sd.nii.gz`` with ``mc_dropout_samples > 0``; ``rtstruct`` / ``seg`` for DICOM series
    inputs, the SEG FRACTIONAL with ``probabilities``; ``roi_name`` and ``roi_colour`` name and colour
    the DICOM structure). ``case`` is the file name without its image suffix or the DICOM folder's name.

    Before any work, every input must exist, the formats must suit the inputs, and the planned outputs
    must not overwrite an input (:func:`cmedl.inference.files.check_inputs`). Each input's intensities
    must look like the modality of the model's preprocessing (:mod:`cmedl.data.plausibility`) unless
    ``allow_modality_mismatch``. A case's files are written together, atomically; a failing case is
    reported through ``on_failure`` (default: one line on stderr) and the next one goes on. Without
    ``overwrite``, a case whose files all exist (a finished case of an earlier run) is skipped and
    reported through ``on_skip``. ``recipe`` runs the checkpoint with another registered method's
    test-time recipe (e.g. ``pmri-cmedl`` on a ``cmedl`` checkpoint: CT -> pMRI -> MRI teacher; see
    :func:`cmedl.methods.checkpoint_as.checkpoint_as_method`). A guided teacher (``box-teacher``,
    ``point-teacher``) is refused: it needs boxes (``cmedl pseudo-label``). Other arguments: see
    :func:`segment_volume`.

    Returns:
        The main output (mask, else the first DICOM file) of every case, in input order.

    Raises:
        InputError: one line naming the offending checkpoint, argument or output folder (before any work).
        CasesFailed: after the loop, if any input failed (its ``written`` and ``failures``; for a single
            input the message is that input's error).
    """
    check_segment_arguments(threshold, mc_dropout_samples)
    check_batch_size(batch_size)
    fmts = check_output_formats(formats)
    to_dicom = dicom_formats(fmts)
    roi_name, colour = check_roi(roi_name, roi_colour)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_host_memory()
    suffixes = output_suffixes(fmts, probabilities, mc_dropout_samples > 0)
    if manifest is not None:
        if inputs:
            raise InputError("give input volumes or a manifest, not both", manifest)
        named = manifest_inputs(manifest, split)
        check_dicom_inputs([p for p, _ in named], fmts)
        cases = check_inputs(named, out_dir, suffixes)
    else:
        cases = check_inputs(inputs, out_dir, suffixes)
        check_dicom_inputs([p for p, _ in cases], fmts)
    if not float(lung_margin_mm) >= 0.0:
        raise InputError(f"lung margin must be >= 0 mm, got {lung_margin_mm}")
    ckpt = load_checkpoint(model_path)
    if getattr(method_of(ckpt, model_path), "guidance", None) is not None:
        raise InputError(f"checkpoint of method '{method_of(ckpt, model_path).name}' is a guided teacher: it needs "
                         "boxes at test time; use `cmedl pseudo-label` (or segment with a student)", model_path)
    if recipe is not None:
        ckpt = checkpoint_as_method(ckpt, recipe, source=model_path)
    model, preprocess, config = build_test_time_model(ckpt, source=model_path)
    ts_preprocess = ts_preprocess_of_checkpoint(ckpt, model_path)  # teacher-student paper pipeline, or None
    if model.dims == 3 and mc_dropout_samples:
        raise InputError("MC dropout is implemented for 2D (slice-wise) students only", model_path)
    if manifest is not None:  # the manifest's cases of the model's modality (it may list MRI as well)
        ids = {case_id for _, case_id in manifest_inputs(manifest, split, preprocess.modality)}
        cases = [(p, n) for p, n in cases if n in ids]
        if not cases:
            raise InputError(f"has no case of split '{split}' of the model's modality ({preprocess.modality})",
                             manifest)
    patch_size = tuple(config.data.patch_size_3d) if model.dims == 3 else None
    run_net = inference_copy(model, dev)
    del model
    out = Path(out_dir)

    def work(path: Path, name: str) -> CaseOutputs:
        volume = read_volume(path)
        if not allow_modality_mismatch:
            check_modality(volume, preprocess.modality, path, ALLOW_MISMATCH_HINT)
        result = segment_volume(
            volume, run_net, preprocess, batch_size=batch_size, device=dev, threshold=threshold,
            largest_component=largest_component, fill_holes=fill_holes, min_component_ml=min_component_ml,
            return_probabilities=probabilities, amp_bf16=amp_bf16, mc_dropout_samples=mc_dropout_samples, seed=seed,
            patch_size=patch_size, lung_filter=lung_filter, lung_margin_mm=lung_margin_mm,
            ts_preprocess=ts_preprocess,
        )
        files = export_mask(result.mask, path, out, to_dicom, name=name, roi_name=roi_name, colour=colour,
                            probabilities=result.probabilities if "seg" in to_dicom else None) if to_dicom else []
        volumes = []
        if "nifti" in fmts:
            volumes.append((result.mask, out / f"{name}.nii.gz"))
            if result.probabilities is not None:
                volumes.append((result.probabilities, out / f"{name}_prob.nii.gz"))
            if result.uncertainty is not None:
                volumes.append((result.uncertainty, out / f"{name}_sd.nii.gz"))
        return CaseOutputs(volumes, files)

    def planned(name: str) -> list[Path]:
        return [out / f"{name}{suffix}" for suffix in suffixes]

    return run_cases(cases, work, out, dev, desc="segment", progress=progress, on_failure=on_failure,
                     skip_finished=None if overwrite else planned, on_skip=on_skip)


__all__ = ["DEFAULT_LUNG_MARGIN_MM", "SegmentationResult", "check_segment_arguments", "lung_region", "segment_files",
           "segment_volume"]
