"""The configuration sections every method shares: data, preprocessing, augmentation, model, loss,
optim, training and evaluation.

Each section checks its own values when it is built (``__post_init__``) and names the bad key;
the method and translator sections live beside their methods (:mod:`cmedl.methods`). Messages
start with the field name; :func:`cmedl.config.schema.build_section` prefixes the section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cmedl.config.schema import check_choice, check_positive, check_range
from cmedl.data.augment import AugmentConfig
from cmedl.data.preprocess import PreprocessOptions
from cmedl.devices import DEVICES, PRECISIONS
from cmedl.errors import ConfigError

#: modalities a student may see (the teacher of unpaired methods always sees ``mr``)
STUDENT_MODALITIES = ("ct", "cbct")
#: ``volumes``: the student segments every validation volume whole (as at test time), so false
#: positives anywhere in the scan count; ``patches``: the fixed validation patches only (faster)
VALIDATION_MODES = ("volumes", "patches")
LR_SCHEDULES = ("constant", "linear", "cosine")
DICE_REDUCTIONS = ("batch", "sample")


@dataclass
class DataConfig:
    """What the networks see. Patch sizes are in pixels (square 2D patches of axial slices)."""

    #: modality of the student (``ct`` or ``cbct``); the teacher always sees ``mr``
    modality: str = "ct"
    #: side of the square training patches, pixels (papers: 256)
    patch_size: int = 256
    #: 3D patch ``[d, h, w]`` voxels (z, y, x) of volumetric methods (``ct-only-3d``); also the
    #: sliding-window size of ``cmedl segment`` for them
    patch_size_3d: list[int] = field(default_factory=lambda: [32, 128, 128])
    #: fraction of training patches centred on a tumour-containing slice/region (rest: random body)
    tumour_fraction: float = 0.7
    #: training samples drawn per epoch; an epoch has ``samples_per_epoch // batch_size`` iterations
    samples_per_epoch: int = 1000
    #: fixed (deterministic) validation patches (``training.validation: patches``, and the image grid)
    val_samples: int = 64
    #: DataLoader worker processes (0 = load in the main process)
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_choice("modality", self.modality, STUDENT_MODALITIES)
        check_positive("patch_size", self.patch_size)
        if len(self.patch_size_3d) != 3 or min(self.patch_size_3d) < 1:
            raise ConfigError(f"patch_size_3d: must be three positive ints [d, h, w], got {self.patch_size_3d}")
        check_range("tumour_fraction", self.tumour_fraction, 0.0, 1.0)
        check_positive("samples_per_epoch", self.samples_per_epoch)
        check_positive("val_samples", self.val_samples)
        check_positive("num_workers", self.num_workers, allow_zero=True)


@dataclass
class PreprocessingConfig:
    """How volumes become network input, per modality group: every option left unset (null) takes
    the modality's default (see :class:`cmedl.data.preprocess.PreprocessConfig`)."""

    #: the student modality (``data.modality``: CT or CBCT)
    student: PreprocessOptions = field(default_factory=PreprocessOptions)
    #: MRI (teacher of unpaired methods)
    mr: PreprocessOptions = field(default_factory=PreprocessOptions)


@dataclass
class AugmentationConfig(AugmentConfig):
    """Online augmentation of 2D training patches (flip, affine, elastic; MONAI), or random flips of
    every axis (``flip_prob``) for 3D patches. ``enabled: false`` switches all of it off."""

    enabled: bool = True

    def augment_config(self) -> AugmentConfig | None:
        """The augmentation parameters, or None when switched off."""
        if not self.enabled:
            return None
        return AugmentConfig(**{k: v for k, v in vars(self).items() if k != "enabled"})


@dataclass
class ModelConfig:
    """Segmentation networks (student and, for teacher-student methods, teacher: same architecture)."""

    #: ``unet``, ``densefcn57``, ``mrrn`` (2D methods) or ``unet3d`` (3D methods); the choices come
    #: from the network registry (:data:`cmedl.nets.SEGMENTATION_NETS`), checked with the method
    arch: str = "unet"
    #: base width (U-Net/MRRN/3D U-Net: first level's channels; DenseFCN57: growth rate). None: the
    #: architecture's paper width (64, 12, 64, 32). In YAML or overrides it may also be a mapping
    #: ``{arch: width}`` so one preset fits every architecture; it is resolved for ``arch`` when the
    #: config is built (a missing architecture gets its paper width), so a built config holds an int
    #: or null.
    seg_base_width: int | None = None
    #: dropout probability inside the segmentation networks (test-time MC dropout needs > 0)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.seg_base_width is not None:
            check_positive("seg_base_width", self.seg_base_width)
        check_range("dropout", self.dropout, 0.0, 1.0, high_open=True)


@dataclass
class LossConfig:
    """Segmentation loss shared by every method (the method sections hold their own terms)."""

    #: soft Dice reduction of every segmentation loss: ``batch`` (one Dice over the pooled batch, keeps
    #: penalising false positives on tumour-free patches) or ``sample`` (mean of per-sample Dice losses)
    dice_reduction: str = "batch"

    def __post_init__(self) -> None:
        check_choice("dice_reduction", self.dice_reduction, DICE_REDUCTIONS)


@dataclass
class OptimConfig:
    """Adam for the segmentation networks, and the learning-rate schedule of every optimiser
    (translators keep their own rates in their sections)."""

    lr_segmentation: float = 2e-4
    betas_segmentation: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    #: ``constant`` (the papers), ``linear`` (pytorch-CycleGAN: constant, then linear decay to 0) or
    #: ``cosine`` (constant, then half a cosine to 0); the decay starts after the fraction
    #: ``lr_decay_start`` of the steps. With a decaying schedule ``training.max_epochs`` cannot
    #: change when a run is resumed.
    lr_schedule: str = "constant"
    lr_decay_start: float = 0.5

    def __post_init__(self) -> None:
        check_positive("lr_segmentation", self.lr_segmentation)
        check_betas("betas_segmentation", self.betas_segmentation)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_range("lr_decay_start", self.lr_decay_start, 0.0, 1.0, high_open=True)


def check_betas(key: str, betas: list[float]) -> None:
    """Adam betas: two numbers in [0, 1)."""
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"{key}: must be two numbers in [0, 1), got {betas}")


@dataclass
class TrainingConfig:
    """Loop control."""

    #: the training method, by its registered name (``cmedl methods`` lists them)
    method: str = "cmedl"
    batch_size: int = 2
    max_epochs: int = 100
    #: early stopping: stop after this many epochs without a validation-loss improvement
    patience: int = 10
    #: an improvement must lower the validation Dice loss by more than this
    min_delta: float = 0.0
    #: what the per-epoch validation (early stopping, best checkpoint) looks at: ``volumes`` (the
    #: student segments each validation volume whole; val_loss = mean per-volume soft Dice loss,
    #: val_dice = mean per-volume Dice) or ``patches`` (the fixed ``data.val_samples`` patches)
    validation: str = "volumes"
    seed: int = 0
    device: str = "auto"
    #: ``fp32``, ``bf16`` (torch.autocast; weights and optimiser states stay fp32) or ``auto``: bf16
    #: where the device has native bf16 units (Ampere+ GPUs, CPUs with AVX512-BF16/AMX), else fp32
    precision: str = "fp32"
    #: log running losses to TensorBoard every this many iterations
    log_every: int = 10
    #: write a PNG image grid (CT, pMRI, rec. CT, expert and predicted masks) every epoch
    image_grid: bool = True
    #: torch.channels_last memory format: ``true`` (every network), ``false`` (none) or ``auto``: the
    #: segmentation networks (student, teacher) on CPU, where it was measured 22-31 % faster in
    #: fp32 (forward + backward at cpu-demo size, unet / densefcn57 / mrrn), and none on CUDA
    channels_last: bool | str = "auto"
    #: show a progress bar
    progress: bool = True
    #: data-parallel runs (``torchrun``): normalise the batch-norm layers over the global batch of all
    #: processes (SyncBatchNorm) rather than over each process's share; no effect in one process
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size)
        check_positive("max_epochs", self.max_epochs)
        check_positive("patience", self.patience)
        check_positive("log_every", self.log_every)
        if not 0 <= self.seed < 2**63:  # numpy and torch seeds are non-negative 64-bit integers
            raise ConfigError(f"seed: must be >= 0 (and below 2**63), got {self.seed}")
        check_choice("validation", self.validation, VALIDATION_MODES)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.channels_last, bool) and self.channels_last != "auto":
            raise ConfigError(f"channels_last: expected true, false or auto, got {self.channels_last!r}")


@dataclass
class EvaluationConfig:
    """Evaluation settings carried with the model (used by ``cmedl demo`` / ``cmedl evaluate``)."""

    #: surface Dice tolerance tau in mm (CT paper 2 mm, CBCT paper 4.38 mm)
    surface_tolerance_mm: float = 2.0
    #: predicted 3D components smaller than this (ml) are dropped when ``cmedl demo`` and ``cmedl study``
    #: segment the test cases (0: none); part of the recipe, so chosen on validation data (``cpu-demo``: 1.5)
    min_component_ml: float = 0.0

    def __post_init__(self) -> None:
        check_positive("surface_tolerance_mm", self.surface_tolerance_mm)
        check_positive("min_component_ml", self.min_component_ml, allow_zero=True)
