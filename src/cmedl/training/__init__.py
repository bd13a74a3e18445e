"""Training: the shared trainer (:mod:`.trainer`), its data (:mod:`.data`), validation
(:mod:`.validation`), schedules, exact resume (:mod:`.resume`), checkpoints (:mod:`.checkpoint`)
and run logs (:mod:`.logging`). Configs come from :func:`cmedl.methods.load_config`.

Typical use::

    from cmedl.methods import load_config
    from cmedl.training import train
    cfg = load_config("cpu-demo", ["training.method=ct-only", "training.max_epochs=3"])
    result = train(cfg, "phantom/manifest.json", out_dir="runs/ct-only")
    print(result.best_val_dice, result.best_checkpoint)
"""

from __future__ import annotations

from cmedl.training.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from cmedl.training.trainer import TrainingDiverged, TrainResult, train

__all__ = ["FORMAT", "TrainResult", "TrainingDiverged", "load_checkpoint", "save_checkpoint", "train"]
