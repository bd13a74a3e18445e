"""Typed training configuration: nested dataclasses, YAML presets and ``a.b=value`` overrides.

A :class:`TrainConfig` has five sections::

    data      which modality the student sees, patch size, sampling, preprocessing overrides
    model     segmentation architecture (teacher = student architecture), generator/discriminator/VGG
    loss      weights (lambda_*) and on/off switches of every CMEDL loss term (Table V ablations)
    optim     Adam learning rates and betas (translation vs segmentation networks)
    training  method name, batch size, epochs, early stopping, seed, device, bf16 autocast
    evaluation surface-Dice tolerance tau (mm) used when the trained model is evaluated

Presets are YAML files in the package folder ``cmedl/configs/`` (``cpu-demo``, ``paper-ct``,
``paper-cbct``, ``paper-ct-densefcn57``, ``paper-ct-mrrn``, ``paper-cbct-unet3d``). A preset (or user file) may start with
``extends: <preset name or relative file>`` and then only lists what differs. Unknown keys anywhere
raise :class:`~cmedl.errors.ConfigError` with a did-you-mean hint. The full config is written as
``config.yaml`` next to every run (:func:`save_config`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from cmedl.devices import DEVICES, PRECISIONS
from cmedl.errors import ConfigError, did_you_mean

#: Folder holding the YAML presets shipped with the package.
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"

METHODS = ("cmedl", "ct-only", "ct-only-3d")
#: segmentation networks by name (= ``cmedl.nets.SEGMENTATION_NETS``; kept here so that a config
#: is checked without importing torch; a test keeps the two in sync)
SEGMENTATION_ARCHS = ("unet", "densefcn57", "mrrn", "unet3d")
STUDENT_MODALITIES = ("ct", "cbct")
HINT_LAYERS = ("high", "mid", "low")
GAN_MODES = ("lsgan", "bce")
#: ``volumes``: the student segments every validation volume whole (as at test time), so false
#: positives anywhere in the scan count; ``patches``: the fixed validation patches only (faster)
VALIDATION_MODES = ("volumes", "patches")
LR_SCHEDULES = ("constant", "linear", "cosine")


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
    #: fixed (deterministic) validation patches evaluated after every epoch
    val_samples: int = 64
    #: online augmentation (flip, scale, rotation, elastic) of training patches
    augment: bool = True
    #: overrides of cmedl.data.augment.AugmentConfig (flip_prob, affine_prob, rotate_deg, scale, elastic_*)
    augment_params: dict[str, Any] = field(default_factory=dict)
    #: overrides of the student-modality PreprocessConfig (keys of cmedl.data.preprocess.PreprocessConfig)
    preprocess: dict[str, Any] = field(default_factory=dict)
    #: overrides of the MRI PreprocessConfig
    preprocess_mr: dict[str, Any] = field(default_factory=dict)
    #: folder for the preprocessed-volume cache (None: in memory only)
    cache_dir: str | None = None
    #: DataLoader worker processes (0 = load in the main process)
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Networks. Widths are channel counts of the first level; None means the paper's width."""

    #: segmentation architecture of student and teacher: ``unet``, ``densefcn57``, ``mrrn`` (2D
    #: methods) or ``unet3d`` (``ct-only-3d``); teacher and student always share it
    arch: str = "unet"
    #: base width of the segmentation nets (U-Net/MRRN/3D U-Net: first level's channels; DenseFCN57:
    #: growth rate). None: the architecture's paper width (64, 12, 64, 32). In YAML or overrides it
    #: may also be a mapping ``{arch: width}`` so one preset fits every architecture (e.g. a CPU
    #: preset ``{unet: 16, densefcn57: 4, mrrn: 16}``); the mapping is resolved for ``arch`` when the
    #: config is built (an architecture missing from it gets its paper width), so a built config and
    #: its saved ``config.yaml`` hold a plain int or null.
    seg_base_width: int | None = None
    #: which features are tied by the hint loss: ``high`` (last two layers), ``mid``, ``low``
    hint_layers: str = "high"
    dropout: float = 0.0
    #: CycleGAN ResNet generator width and number of residual blocks (paper: 64, 9)
    gen_base_width: int = 64
    gen_n_blocks: int = 9
    #: PatchGAN discriminator width and number of strided layers (paper 70x70 PatchGAN: 64, 3)
    disc_base_width: int = 64
    disc_n_layers: int = 3
    #: torchvision ``vgg19`` ImageNet state-dict file; None = deterministic fixed-seed random init
    vgg_weights: str | None = None


@dataclass
class LossConfig:
    """Weights (lambda) and switches of the CMEDL loss terms (papers: 1, 10, 1, 1, 5)."""

    lambda_adv: float = 1.0
    lambda_cycle: float = 10.0
    lambda_contextual: float = 1.0
    lambda_hint: float = 1.0
    lambda_seg: float = 5.0
    #: Table V ablations: switch a term off entirely (it is then neither computed nor logged as >0)
    use_adversarial: bool = True
    use_cycle: bool = True
    use_contextual: bool = True
    use_hint: bool = True
    #: teacher segmentation loss on pMRI with the CT labels (L_seg^pM)
    use_seg_pmri: bool = True
    #: teacher segmentation loss on real labelled MRI (L_seg^rM); off = teacher without labelled MRI
    use_seg_real_mri: bool = True
    #: hint gradient also flows into the teacher (mutual learning, default) or only into the student
    hint_to_teacher: bool = True
    #: soft Dice reduction of every segmentation loss: ``batch`` (one Dice over the pooled batch, keeps
    #: penalising false positives on tumour-free patches) or ``sample`` (mean of per-sample Dice losses)
    dice_reduction: str = "batch"
    #: adversarial loss form
    gan_mode: str = "lsgan"
    #: contextual loss on these VGG19 layers (torchvision layout names), bandwidth h
    contextual_layers: list[str] = field(default_factory=lambda: ["conv3_3", "conv3_4", "conv4_1"])
    contextual_bandwidth: float = 0.5
    #: at most this many feature positions per image enter the contextual loss (memory bound)
    contextual_max_positions: int = 4096
    #: compute the contextual loss on at most this many images of the batch (None: all). The frozen
    #: full-width VGG19 dominates the step cost at small network widths, so the CPU preset caps it.
    contextual_max_images: int | None = None
    #: CycleGAN image pool size for the discriminator step (0 disables the pool)
    pool_size: int = 50


@dataclass
class OptimConfig:
    """Adam optimisers: translation networks (G, D) and segmentation networks (teacher + student)."""

    lr_translation: float = 1e-4
    lr_segmentation: float = 2e-4
    betas_translation: list[float] = field(default_factory=lambda: [0.5, 0.999])
    betas_segmentation: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    #: learning-rate schedule of every optimiser over ``training.max_epochs``: ``constant`` (the
    #: papers), ``linear`` (pytorch-CycleGAN: constant, then linear decay to 0) or ``cosine`` (constant,
    #: then half a cosine to 0); the decay starts after the fraction ``lr_decay_start`` of the steps.
    #: With a decaying schedule ``training.max_epochs`` cannot change when a run is resumed.
    lr_schedule: str = "constant"
    lr_decay_start: float = 0.5


@dataclass
class TrainingConfig:
    """Loop control."""

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
    #: (the choice is logged; results then differ slightly between such machines)
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


@dataclass
class EvaluationConfig:
    """Evaluation settings carried with the model (used by ``cmedl demo`` / ``cmedl evaluate``)."""

    #: surface Dice tolerance tau in mm (CT paper 2 mm, CBCT paper 4.38 mm)
    surface_tolerance_mm: float = 2.0


@dataclass
class TrainConfig:
    """The whole configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/``torch.load(weights_only=True)`` safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
        """Build and validate from a (possibly partial) nested dict; unknown keys raise ConfigError."""
        cfg = _build(cls, _resolve_arch_widths(raw, source), "", source)
        cfg.validate(source)
        return cfg

    def validate(self, source: str | Path | None = None) -> None:
        """Check value ranges and choices; raise ConfigError naming the key."""

        def choice(key: str, value: str, choices: tuple[str, ...]) -> None:
            if value not in choices:
                raise ConfigError(f"{key}: {did_you_mean(value, choices, 'value')}", source)

        def positive(key: str, value: float, allow_zero: bool = False) -> None:
            if value < 0 or (value == 0 and not allow_zero):
                raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}", source)

        choice("training.method", self.training.method, METHODS)
        choice("model.arch", self.model.arch, SEGMENTATION_ARCHS)
        choice("data.modality", self.data.modality, STUDENT_MODALITIES)
        choice("model.hint_layers", self.model.hint_layers, HINT_LAYERS)
        choice("loss.gan_mode", self.loss.gan_mode, GAN_MODES)
        choice("loss.dice_reduction", self.loss.dice_reduction, ("batch", "sample"))
        choice("training.device", self.training.device, DEVICES)
        choice("training.precision", self.training.precision, PRECISIONS)
        cl = self.training.channels_last
        if not isinstance(cl, bool) and cl != "auto":
            raise ConfigError(f"training.channels_last: expected true, false or auto, got {cl!r}", source)
        choice("training.validation", self.training.validation, VALIDATION_MODES)
        choice("optim.lr_schedule", self.optim.lr_schedule, LR_SCHEDULES)
        if not 0.0 <= self.optim.lr_decay_start < 1.0:
            raise ConfigError(f"optim.lr_decay_start: must be in [0, 1), got {self.optim.lr_decay_start}", source)
        positive("data.patch_size", self.data.patch_size)
        if len(self.data.patch_size_3d) != 3 or min(self.data.patch_size_3d) < 1:
            raise ConfigError(
                f"data.patch_size_3d: must be three positive ints [d, h, w], got {self.data.patch_size_3d}", source
            )
        if self.model.seg_base_width is not None:
            positive("model.seg_base_width", self.model.seg_base_width)
        positive("training.batch_size", self.training.batch_size)
        positive("training.max_epochs", self.training.max_epochs)
        positive("training.patience", self.training.patience)
        positive("training.log_every", self.training.log_every)
        positive("data.val_samples", self.data.val_samples)
        positive("optim.lr_translation", self.optim.lr_translation)
        positive("optim.lr_segmentation", self.optim.lr_segmentation)
        positive("loss.pool_size", self.loss.pool_size, allow_zero=True)
        positive("data.num_workers", self.data.num_workers, allow_zero=True)
        if self.loss.contextual_max_images is not None:
            positive("loss.contextual_max_images", self.loss.contextual_max_images)
        positive("evaluation.surface_tolerance_mm", self.evaluation.surface_tolerance_mm)
        for name in ("adv", "cycle", "contextual", "hint", "seg"):
            positive(f"loss.lambda_{name}", getattr(self.loss, f"lambda_{name}"), allow_zero=True)
        if not 0.0 <= self.data.tumour_fraction <= 1.0:
            raise ConfigError(f"data.tumour_fraction: must be in [0, 1], got {self.data.tumour_fraction}", source)
        if self.data.samples_per_epoch < self.training.batch_size:
            raise ConfigError(
                f"data.samples_per_epoch ({self.data.samples_per_epoch}) must be >= training.batch_size "
                f"({self.training.batch_size})",
                source,
            )
        for key in ("betas_translation", "betas_segmentation"):
            betas = getattr(self.optim, key)
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise ConfigError(f"optim.{key}: must be two numbers in [0, 1), got {betas}", source)

    @property
    def iterations_per_epoch(self) -> int:
        """Optimisation steps per epoch (incomplete last batch dropped)."""
        return self.data.samples_per_epoch // self.training.batch_size


# ---------------------------------------------------------------------------------- building
def _resolve_arch_widths(raw: dict[str, Any], source: str | Path | None) -> dict[str, Any]:
    """``model.seg_base_width`` given as a mapping ``{arch: width}`` -> the width of ``model.arch``
    (None when the mapping lacks it: the paper width). Unknown architecture keys are an error."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("seg_base_width"), dict):
        return raw
    widths = model["seg_base_width"]
    for key in widths:
        if key not in SEGMENTATION_ARCHS:
            raise ConfigError(
                f"model.seg_base_width: {did_you_mean(str(key), SEGMENTATION_ARCHS, 'architecture')}", source
            )
    arch = str(model.get("arch", ModelConfig.arch))
    return {**raw, "model": {**model, "seg_base_width": widths.get(arch)}}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, source: str | Path | None) -> Any:
    """Coerce a YAML value to the annotated type (int->float allowed, strings for numbers too)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}", source)
        return _build(tp, value, key + ".", source)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}", source)
        return [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}", source)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}", source)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, float) and not value.is_integer()
        ):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}", source)
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}", source) from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}", source)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}", source) from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}", source)
        return str(value)
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str, source: str | Path | None) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}", source)
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(did_you_mean(f"{prefix}{key}", [prefix + n for n in names], "config key"), source)
        kwargs[key] = _coerce(value, hints[key], prefix + key, source)
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def list_presets() -> list[str]:
    """Names of the YAML presets shipped in ``cmedl/configs``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _resolve(path_or_name: str | Path, relative_to: Path | None = None) -> Path:
    text = str(path_or_name)
    candidates = []
    p = Path(text)
    if relative_to is not None and not p.is_absolute():
        candidates.append(relative_to / p)
    candidates.append(p)
    for c in candidates:
        if c.is_file():
            return c
    if p.suffix == "" and "/" not in text:
        preset = PRESET_DIR / f"{text}.yaml"
        if preset.is_file():
            return preset
        raise ConfigError(did_you_mean(text, list_presets(), "config preset") + " (or give a YAML file)")
    raise ConfigError("config file not found", p)


def _read_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    if depth > 8:
        raise ConfigError("'extends' chain is too deep (a cycle?)", path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror})", path) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a YAML mapping", path)
    base_name = raw.pop("extends", None)
    if base_name is not None:
        base = _read_yaml(_resolve(base_name, path.parent), depth + 1)
        raw = _deep_merge(base, raw)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``"a.b=value"`` into (``["a", "b"]``, value); the value is parsed as YAML (numbers, lists, ...)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, _, value = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override '{text}': the key must name a section and a setting, e.g. training.max_epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of the nested dict ``raw`` with every ``a.b=value`` override set."""
    out = _deep_merge({}, raw)
    for text in overrides or []:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{p}' is not a section")
        node[parts[-1]] = value
    return out


def load_config(path_or_preset: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a preset by name (``cpu-demo``) or a YAML file, then apply ``a.b=value`` overrides.

    Raises :class:`ConfigError` for unknown presets/keys (with did-you-mean), bad types or ranges.
    """
    path = _resolve(path_or_preset)
    raw = apply_overrides(_read_yaml(path), overrides)
    return TrainConfig.from_dict(raw, source=path)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the full config as YAML, atomically."""
    from cmedl.io.volume import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
