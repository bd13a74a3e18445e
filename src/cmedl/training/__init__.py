"""Training: typed configs (:mod:`.config`), the shared trainer (:mod:`.trainer`), checkpoints
(:mod:`.checkpoint`) and run logs (:mod:`.logging`).

Typical use::

    from cmedl.training import load_config, train
    cfg = load_config("cpu-demo", ["training.method=ct-only", "training.max_epochs=3"])
    result = train(cfg, "phantom/manifest.json", out_dir="runs/ct-only")
    print(result.best_val_dice, result.best_checkpoint)

The trainer is imported lazily so that ``cmedl.training.config``/``checkpoint`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cmedl.training.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from cmedl.training.config import TrainConfig, list_presets, load_config, save_config

if TYPE_CHECKING:
    from cmedl.training.trainer import TrainingDiverged, TrainResult, train

__all__ = [
    "FORMAT", "TrainConfig", "TrainResult", "TrainingDiverged", "list_presets", "load_checkpoint", "load_config",
    "save_checkpoint", "save_config", "train",
]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult", "TrainingDiverged"):
        from cmedl.training import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
