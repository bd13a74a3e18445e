"""Typed configuration: the common sections, the run config and YAML presets (``cmedl/configs``).

Layer: above ``io`` and ``data`` (its sections reuse their option types), below ``nets``,
``methods`` and ``training``. Method and translator sections are declared by the methods; the
registry (:func:`cmedl.methods.parse_config`) assembles a :class:`TrainConfig` from them.
"""

from cmedl.config.schema import (
    PRESET_DIR,
    apply_overrides,
    build_section,
    list_presets,
    parse_override,
    read_yaml,
    resolve_config_path,
)
from cmedl.config.sections import (
    AugmentationConfig,
    DataConfig,
    EvaluationConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PreprocessingConfig,
    TrainingConfig,
)
from cmedl.config.train import TrainConfig, flatten_config, save_config

__all__ = [
    "PRESET_DIR", "AugmentationConfig", "DataConfig", "EvaluationConfig", "LossConfig", "ModelConfig",
    "OptimConfig", "PreprocessingConfig", "TrainConfig", "TrainingConfig", "apply_overrides", "build_section",
    "flatten_config", "list_presets", "parse_override", "read_yaml", "resolve_config_path", "save_config",
]
