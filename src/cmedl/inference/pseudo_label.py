"""Pseudo labels from a guided teacher (``cmedl pseudo-label``; teacher-student paper, Sec. 2.3).

A ``box-teacher`` or ``point-teacher`` checkpoint (:mod:`cmedl.methods.ts_teacher`) segments every
box-only case (a box file, no label) of a manifest's ``train`` and ``val`` splits:

1. the case is prepared with the checkpoint's preprocessing: with the paper pipeline (``preprocess["ts"]``,
   :func:`cmedl.data.ts_preprocess.ts_prepare`) HU clipped and z-scored, resampled to 1 x 1 x 1.5 mm (the
   stored spacing), its boxes re-derived on that grid; with the legacy one
   (:func:`cmedl.data.preprocess.prepare_volume`) the working grid and the box mask (the union of its
   axial boxes, :mod:`cmedl.data.boxes`) put on it;
2. :func:`teacher_probabilities`: per lesion (26-connected component of the box mask) a window of the
   training crop size (``data.patch_size_3d``, the paper's 128^3) centred on the lesion's boxes (larger
   lesions: the window grows to cover them plus one voxel and the teacher runs over it by sliding window,
   25 % overlap); the box teacher sees CT + box mask, the point teacher the CT alone. Overlapping lesions
   keep the larger probability;
3. the probability map goes back onto the input grid (:func:`restore_to_input`), is thresholded and
   **kept inside the boxes** (voxels outside every box are set to 0).

Outputs (:func:`pseudo_label_files`): ``<out>/labels/<case>.nii.gz`` (uint8, on the image grid) and
``<out>/manifest.json``: every case of the input manifest with its paths rewritten relative to
``<out>``, the box-only cases of the labelled splits now with ``label`` = their pseudo mask and
``label_source: pseudo``, the expertly labelled ones with ``label_source: expert``. Everything is
written beside ``<out>`` and moved in when complete (:mod:`cmedl.data.phantom.staging`): a failure
leaves nothing behind. A checkpoint that is not a teacher is refused before any work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cmedl.data.boxes import BoxSet, box_mask, read_boxes
from cmedl.data.datasets_ts import lesion_regions, window_start
from cmedl.data.manifest import Case, Manifest
from cmedl.data.phantom.staging import MANIFEST, check_destination, commit, staging_folder
from cmedl.data.preprocess import PreprocessConfig, extract_window, prepare_label, prepare_volume, restore_to_input
from cmedl.data.selection import is_box_only
from cmedl.data.ts_preprocess import TSPreprocessConfig, mask_to_grid, restore_to_input as ts_restore, ts_prepare
from cmedl.devices import resolve_device
from cmedl.errors import InputError
from cmedl.io.outputs import check_output_folder, writing
from cmedl.io.volume import Volume, read_volume, write_volume
from cmedl.inference.ts_segment import ts_preprocess_of_checkpoint
from cmedl.methods.checkpoints import config_of, load_networks, method_of, preprocess_of
from cmedl.nets.unet3d import sliding_window_predict_3d
from cmedl.training.checkpoint import load_checkpoint

#: splits whose box-only cases get pseudo labels (test cases are for evaluation)
DEFAULT_SPLITS = ("train", "val")


class Teacher(NamedTuple):
    """A teacher checkpoint's method class, network (eval mode), preprocessing (``ts``: the paper pipeline's,
    None: the legacy working grid of ``preprocess``) and crop size."""

    cls: type
    net: nn.Module
    preprocess: PreprocessConfig
    crop: tuple[int, ...]
    ts: TSPreprocessConfig | None


def teacher_of(ckpt: dict, source: str | Path | None = None) -> Teacher:
    """The :class:`Teacher` of a teacher checkpoint; InputError naming ``source`` for any other method."""
    cls = method_of(ckpt, source)
    guidance = getattr(cls, "guidance", None)
    if guidance is None:
        raise InputError(f"checkpoint of method '{cls.name}' is not a teacher; pseudo labels need a box-teacher or "
                         "point-teacher checkpoint", source)
    net = load_networks(ckpt, (cls.net_key,), source)[cls.net_key]
    crop = tuple(int(s) for s in config_of(ckpt, source).data.patch_size_3d)
    ts = ts_preprocess_of_checkpoint(ckpt, source)
    return Teacher(cls, net, preprocess_of(ckpt, "student", source), ts.teacher_crop if ts is not None else crop, ts)


def teacher_probabilities(net: nn.Module, image: np.ndarray, boxes: np.ndarray, guidance: str, crop: Sequence[int],
                          *, pad_value: float = -1.0, device: str | torch.device = "cpu",
                          overlap: float = 0.25) -> np.ndarray:
    """Teacher probabilities ``[z, y, x]`` on a working grid around every lesion of ``boxes`` (0 elsewhere).

    Args:
        net: the teacher (input channels: 2 for ``box`` guidance, 1 for ``point``).
        image: float32 working-grid CT; boxes: the box mask on the same grid.
        guidance: ``box`` (CT + box mask) or ``point`` (CT alone, windows centred on the boxes).
        crop: ``(d, h, w)`` window (the training crop size).
    """
    if guidance not in ("box", "point"):
        raise InputError(f"guidance must be 'box' or 'point', got {guidance!r}")
    dev = resolve_device(device)
    probs = np.zeros(image.shape, np.float32)
    net = net.to(dev).eval()
    for region in lesion_regions(boxes):
        extent = [r.stop - r.start for r in region]
        # one voxel of context beyond the boxes on every side (the probabilities are interpolated back)
        size = [max(int(c), e + 2) for c, e in zip(crop, extent)]
        centre = [(r.start + r.stop - 1) / 2 for r in region]
        starts = window_start(centre, size, image.shape)
        channels = [extract_window(image, starts, size, pad_value)]
        if guidance == "box":
            channels.append(extract_window(boxes, starts, size, 0).astype(np.float32))
        x = torch.from_numpy(np.stack(channels).astype(np.float32)).to(dev)
        logits = sliding_window_predict_3d(net, x, [int(c) for c in crop], overlap=overlap, sw_batch_size=1)
        window = torch.sigmoid(logits[0, 0].float()).cpu().numpy()
        _paste_max(probs, window, starts)
    return probs


def _paste_max(target: np.ndarray, window: np.ndarray, starts: Sequence[int]) -> None:
    """``target[window region] = max(target, window)`` for the part of the window inside ``target``."""
    dst, src = [], []
    for s, n, dim in zip(starts, window.shape, target.shape):
        lo, hi = max(int(s), 0), min(int(s) + n, dim)
        dst.append(slice(lo, hi))
        src.append(slice(lo - int(s), hi - int(s)))
    np.maximum(target[tuple(dst)], window[tuple(src)], out=target[tuple(dst)])


def pseudo_label_volume(volume: Volume, boxes: np.ndarray | BoxSet, net: nn.Module, preprocess: PreprocessConfig,
                        guidance: str, crop: Sequence[int], *, threshold: float = 0.5, inside_boxes: bool = True,
                        device: str | torch.device = "cpu", ts: TSPreprocessConfig | None = None) -> np.ndarray:
    """The teacher's ``uint8`` mask of one volume on its own grid; ``boxes``: its box file (a BoxSet of that
    grid) or the box mask on that grid. ``inside_boxes`` sets every voxel outside the boxes to 0 (what
    pseudo labels always do). ``ts``: the paper pipeline (the teacher's crop is ``ts.teacher_crop``), else
    the legacy working grid of ``preprocess``."""
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    box_set = boxes if isinstance(boxes, BoxSet) else None
    boxes_in = box_mask(boxes, volume.shape) if box_set is not None else np.asarray(boxes) != 0  # type: ignore[arg-type]
    if ts is not None:  # the paper's preprocessing: clip + z-score, resampled; boxes re-derived there
        prepared_ts = ts_prepare(volume, ts, boxes=box_set)
        if box_set is not None:
            boxes_r = box_mask(prepared_ts.boxes, prepared_ts.image.shape)  # type: ignore[arg-type]
        else:
            boxes_r = mask_to_grid(volume.with_array(boxes_in.astype(np.uint8)), prepared_ts.image).array
        probs_r = teacher_probabilities(net, prepared_ts.image.array, boxes_r.astype(np.uint8), guidance,
                                        ts.teacher_crop, pad_value=prepared_ts.background, device=device)
        probs = ts_restore(probs_r, prepared_ts, volume).array
    else:
        prepared = prepare_volume(volume, preprocess)
        boxes_w = prepare_label(boxes_in.astype(np.uint8), prepared)
        probs_w = teacher_probabilities(net, prepared.image, boxes_w, guidance, crop, pad_value=prepared.pad_value,
                                        device=device)
        probs = restore_to_input(probs_w, prepared, is_label=False, fill_value=0.0)
    mask = probs >= np.float32(threshold)
    if inside_boxes:
        mask &= boxes_in
    return mask.astype(np.uint8)


def _relative(path: Path | None, out: Path) -> str | None:
    return None if path is None else os.path.relpath(path, out.resolve())


def pseudo_label_files(model_path: str | Path, data: str | Path, out_dir: str | Path, *,
                       splits: Sequence[str] = DEFAULT_SPLITS, threshold: float = 0.5, device: str = "cpu",
                       overwrite: bool = False, progress: bool = True,
                       on_case: Callable[[str], None] | None = None) -> Path:
    """Pseudo-label the box-only cases of ``splits`` of manifest ``data`` with the teacher checkpoint
    ``model_path``; returns ``<out_dir>/manifest.json`` (see the module docstring).

    Raises:
        InputError: a checkpoint that is not a teacher, no box-only case in ``splits``, a box file that does
            not fit its image, an output folder that cannot be written or already holds a manifest
            (without ``overwrite``); nothing is written then.
    """
    out = Path(out_dir)
    manifest = Manifest.load(data)
    targets = [c for c in manifest.cases if is_box_only(c) and c.split in splits]
    target_ids = {c.id for c in targets}
    planned = [f"labels/{c.id}.nii.gz" for c in targets] + [MANIFEST]
    check_output_folder(out, inputs=[manifest.source, model_path, *(manifest.image_path(c) for c in manifest.cases)],
                        planned=[out / p for p in planned])
    check_destination(out, planned, overwrite)
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    ckpt = load_checkpoint(model_path)
    cls, net, preprocess, crop, ts = teacher_of(ckpt, model_path)
    if not targets:
        raise InputError(f"has no box-only cases (boxes, no label) in splits {', '.join(splits)}", manifest.source)
    dev = resolve_device(device)
    cases: list[Case] = []
    with staging_folder(out) as stage:
        (stage / "labels").mkdir()
        for case in tqdm(manifest.cases, desc="pseudo-label", disable=not progress):
            rel = {"image": _relative(manifest.image_path(case), out), "label": _relative(manifest.label_path(case), out),
                   "boxes": _relative(manifest.boxes_path(case), out),
                   "paired_mr": _relative(manifest.paired_mr_path(case), out)}
            source = case.label_source or ("expert" if case.label is not None else None)
            if case.id in target_ids:
                image_path = manifest.image_path(case)
                volume = read_volume(image_path)
                boxes = read_boxes(manifest.boxes_path(case), volume)  # type: ignore[arg-type]
                mask = pseudo_label_volume(volume, boxes, net, preprocess, cls.guidance, crop, threshold=threshold,
                                           device=dev, ts=ts)
                target = stage / "labels" / f"{case.id}.nii.gz"
                with writing(out / "labels" / f"{case.id}.nii.gz"):
                    write_volume(volume.with_array(mask), target)
                rel["label"], source = f"labels/{case.id}.nii.gz", "pseudo"
                if on_case is not None:
                    on_case(case.id)
            cases.append(Case(id=case.id, patient_id=case.patient_id, modality=case.modality, image=rel["image"],  # type: ignore[arg-type]
                              label=rel["label"], split=case.split, tumour_kind=case.tumour_kind,
                              paired_mr=rel["paired_mr"], boxes=rel["boxes"], label_source=source))
        result = Manifest(cases, f"{manifest.name}-pseudo",
                          f"{manifest.description} (pseudo labels: {cls.name} {Path(model_path).name})".strip(),
                          manifest.seed)
        with writing(out / MANIFEST):
            result.save(stage / MANIFEST)
        commit(stage, out, planned)
    return out / MANIFEST


__all__ = ["DEFAULT_SPLITS", "Teacher", "pseudo_label_files", "pseudo_label_volume", "teacher_of",
           "teacher_probabilities"]
