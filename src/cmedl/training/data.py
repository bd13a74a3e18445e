"""The datasets and loaders of a training run, by the method's batch kind.

:func:`build_training_data` reads the cases :func:`cmedl.data.selection.select_cases` picked (the one
case-selection path), preprocesses them once (:class:`~cmedl.data.datasets.VolumeCache`) and builds
the training dataset of the method's :class:`~cmedl.data.batches.BatchKind`, the fixed validation
patches and the whole validation volumes. Item ``i`` of epoch ``e`` is drawn from ``(seed, e, i)``,
so batches do not depend on the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any


from cmedl.config import TrainConfig
from cmedl.data.augment import AugmentConfig
from cmedl.data.batches import BatchKind
from cmedl.data.datasets import SliceDataset, UnpairedDataset, VolumeCache
from cmedl.data.datasets3d import PatchDataset3D
from cmedl.data.datasets_ts import BoxPatchDataset3D, GuidedCropDataset, TSCache
from cmedl.data.manifest import Manifest
from cmedl.data.preprocess import PreprocessConfig
from cmedl.data.selection import CaseSelection, select_cases
from cmedl.methods.ts_common import ts_preprocess_of  # teacher-student preprocessing

#: offset of the validation patches' seed from the training seed
VAL_SEED_OFFSET = 7919


@dataclass
class TrainingData:
    """Everything a run reads: the training dataset of the method's batch kind, the fixed validation
    patches (``training.validation=patches``; the image grid in both modes), the preprocessed
    validation volumes (``volumes``) and the preprocessing (stored in checkpoints)."""

    train: Any
    val: Any
    val_cache: VolumeCache
    student_pp: PreprocessConfig
    mr_pp: PreprocessConfig | None


def _slices(config: TrainConfig, selection: CaseSelection, pp: PreprocessConfig, augment: AugmentConfig | None,
            progress: bool, paired: PreprocessConfig | None = None) -> tuple[SliceDataset, SliceDataset, VolumeCache]:
    d, seed, patch = config.data, config.training.seed, (config.data.patch_size, config.data.patch_size)
    train_cache = VolumeCache.load(selection.manifest, selection.train, pp, workers=2, progress=progress, paired=paired)
    train = SliceDataset(train_cache, patch, d.tumour_fraction, d.samples_per_epoch, augment or False, seed)
    val_cache = VolumeCache.load(selection.manifest, selection.val, pp, workers=2, progress=progress)
    val = SliceDataset(val_cache, patch, 0.5, d.val_samples, False, seed + VAL_SEED_OFFSET)
    return train, val, val_cache


def _labelled_slices(config: TrainConfig, selection: CaseSelection, progress: bool) -> TrainingData:
    student_pp, _ = config.preprocess_configs()
    train, val, val_cache = _slices(config, selection, student_pp, config.augmentation.augment_config(), progress)
    return TrainingData(train, val, val_cache, student_pp, None)


def _unpaired_slices(config: TrainConfig, selection: CaseSelection, progress: bool,
                     paired_oracle: bool = False) -> TrainingData:
    """CT (or CBCT) patches with MRI patches of other patients; ``paired_oracle``: each CT patch also
    carries the same window of its patient's own MRI (``ct_paired_mr``; validation stays CT only)."""
    student_pp, mr_pp = config.preprocess_configs()
    augment = config.augmentation.augment_config()
    train_ct, val, val_cache = _slices(config, selection, student_pp, augment, progress,
                                       paired=mr_pp if paired_oracle else None)
    assert selection.mr_manifest is not None
    mr_cache = VolumeCache.load(selection.mr_manifest, selection.mr_train, mr_pp, workers=2, progress=progress)
    patch = (config.data.patch_size, config.data.patch_size)
    seed = config.training.seed
    train_mr = SliceDataset(mr_cache, patch, config.data.tumour_fraction, None, augment or False, seed + 1)
    return TrainingData(UnpairedDataset(train_ct, train_mr, seed=seed), val, val_cache, student_pp, mr_pp)


def _labelled_patches_3d(config: TrainConfig, selection: CaseSelection, progress: bool) -> TrainingData:
    d, seed = config.data, config.training.seed
    student_pp, _ = config.preprocess_configs()
    augment = config.augmentation.augment_config()
    flip = augment.flip_prob if augment is not None else 0.0  # 3D patches: random flips of every axis only
    cache = VolumeCache.load(selection.manifest, selection.train, student_pp, workers=2, progress=progress)
    train = PatchDataset3D(cache, d.patch_size_3d, d.tumour_fraction, d.samples_per_epoch, flip, seed=seed)
    val_cache = VolumeCache.load(selection.manifest, selection.val, student_pp, workers=2, progress=progress)
    val = PatchDataset3D(val_cache, d.patch_size_3d, 0.5, d.val_samples, 0.0, seed=seed + VAL_SEED_OFFSET)
    return TrainingData(train, val, val_cache, student_pp, None)


def _flip_prob(config: TrainConfig) -> float:
    augment = config.augmentation.augment_config()
    return augment.flip_prob if augment is not None else 0.0  # 3D: random flips of every axis only


def _guided_crops_3d(config: TrainConfig, selection: CaseSelection, progress: bool) -> TrainingData:
    """Teacher crops around the lesions of the expert-labelled cases (``data.patch_size_3d``, centre
    jitter up to 1/8 of the crop), and fixed validation crops centred on the lesions."""
    d, seed = config.data, config.training.seed
    student_pp, _ = config.preprocess_configs()
    ts = ts_preprocess_of(config, teacher=True)  # the paper's preprocessing (None: legacy working grid)
    train_cache = TSCache.load(selection.manifest, selection.train, student_pp, ts=ts)
    train = GuidedCropDataset(train_cache, d.patch_size_3d, d.samples_per_epoch, 0.125, _flip_prob(config), seed)
    val_cache = TSCache.load(selection.manifest, selection.val, student_pp, ts=ts)
    val = GuidedCropDataset(val_cache, d.patch_size_3d, d.val_samples, 0.0, 0.0, seed + VAL_SEED_OFFSET)
    return TrainingData(train, val, val_cache.volume_cache(), student_pp, None)


def _box_patches_3d(config: TrainConfig, selection: CaseSelection, progress: bool) -> TrainingData:
    """Student patches (expert, or expert + pseudo labels: the selection decided) with box targets."""
    d, seed = config.data, config.training.seed
    student_pp, _ = config.preprocess_configs()
    ts = ts_preprocess_of(config, teacher=False)  # the paper's preprocessing: per-lung crops (None: legacy)
    train_cache = TSCache.load(selection.manifest, selection.train, student_pp, ts=ts, lungs=True)
    train = BoxPatchDataset3D(train_cache, d.patch_size_3d, d.tumour_fraction, d.samples_per_epoch, _flip_prob(config),
                              seed=seed)
    val_cache = TSCache.load(selection.manifest, selection.val, student_pp, ts=ts, lungs=True)
    val = BoxPatchDataset3D(val_cache, d.patch_size_3d, 0.5, d.val_samples, 0.0, seed=seed + VAL_SEED_OFFSET)
    return TrainingData(train, val, val_cache.volume_cache(), student_pp, None)


#: dataset builder of each batch kind
BUILDERS: dict[BatchKind, Callable[[TrainConfig, CaseSelection, bool], TrainingData]] = {
    BatchKind.LABELLED_SLICES: _labelled_slices,
    BatchKind.UNPAIRED_SLICES: _unpaired_slices,
    BatchKind.PAIRED_ORACLE_SLICES: partial(_unpaired_slices, paired_oracle=True),
    BatchKind.LABELLED_PATCHES_3D: _labelled_patches_3d,
    BatchKind.GUIDED_CROPS_3D: _guided_crops_3d,
    BatchKind.STRONG_PATCHES_3D: _box_patches_3d,
    BatchKind.MIXED_PATCHES_3D: _box_patches_3d,
}


def build_training_data(config: TrainConfig, batch_kind: BatchKind, manifest: Manifest | str | Path,
                        mr_manifest: Manifest | str | Path | None = None, progress: bool = False) -> TrainingData:
    """Select the cases (every check before any image is read) and build the datasets of ``batch_kind``."""
    selection = select_cases(manifest, mr_manifest, config.data.modality, batch_kind.needs_mr,
                             labels="expert" if batch_kind.expert_labels_only else "any")
    return BUILDERS[batch_kind](config, selection, progress)


__all__ = ["BUILDERS", "TrainingData", "build_training_data"]
