"""Exact resume: the run state saved in every checkpoint and restored from ``last.pt``.

A resumed run takes exactly the steps an uninterrupted run would take: network/optimiser states,
method extras (image pools), global RNG states, the epoch and the early-stopping state are restored,
and the data order depends only on (seed, epoch, index). A data-parallel run resumes exactly with the
same world size (each rank's extras are in the checkpoint, its RNGs are reseeded per epoch); with
another one it continues from the same weights with other per-rank batches (see :func:`restore_run`). Only settings that do not change the steps
may differ between a run and its resumption (:data:`RESUMABLE_CHANGES`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmedl.config import TrainConfig, flatten_config
from cmedl.errors import ConfigError
from cmedl.methods.base import Method
from cmedl.methods.registry import get_method, parse_config
from cmedl.methods.ts_common import TSMethod
from cmedl.training.checkpoint import load_checkpoint, restore_rng_state
from cmedl.training.schedule import remember_base_rates

#: settings that may differ between a run and its resumption (they do not change the steps taken)
RESUMABLE_CHANGES = ("training.max_epochs", "training.patience", "training.min_delta", "training.device",
                     "training.progress", "training.log_every", "training.image_grid", "data.num_workers",
                     "training.channels_last")


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def check_resume_config(saved: dict[str, Any], config: TrainConfig, ckpt_path: Path) -> None:
    """Raise ConfigError naming the differing keys unless ``config`` may resume the run saved with ``saved``
    (a checkpoint's config; one of the pre-registry layout is read as today's first)."""
    a = flatten_config(parse_config(saved, warn=False).to_dict())
    b = flatten_config(config.to_dict())
    resumable = set(RESUMABLE_CHANGES)
    if config.optim.lr_schedule != "constant":  # the decay is spread over max_epochs: changing it changes the steps
        resumable.discard("training.max_epochs")
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in resumable)
    if diff:
        show = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise ConfigError(
            f"cannot resume with a different configuration ({show}); only {', '.join(sorted(resumable))} "
            "may change" + (" (max_epochs is fixed because optim.lr_schedule decays over it)"
                            if "training.max_epochs" in diff else ""), ckpt_path,
        )


def saved_config_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config as it trained. Teacher-student runs written before the paper pipeline existed
    (no ``<method>.pipeline`` key, no ``preprocess.ts``) trained on the working grid: they read as
    ``pipeline: legacy``, so resuming one with today's default is refused naming that key instead of
    switching its preprocessing mid-run."""
    saved = ckpt["config"]
    method = (saved.get("training") or {}).get("method")
    section = saved.get(method) if isinstance(method, str) else None
    if not isinstance(section, dict) or "pipeline" in section or "ts" in (ckpt.get("preprocess") or {}):
        return saved
    try:
        is_ts = issubclass(get_method(method), TSMethod)
    except ConfigError:
        return saved  # an unknown method: check_resume_config names it
    return {**saved, method: {**section, "pipeline": "legacy"}} if is_ts else saved


def load_resume_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """``last.pt`` of the run to resume, after checking that ``config`` may resume it."""
    ckpt = load_checkpoint(path)
    check_resume_config(saved_config_of(ckpt), config, path)
    return ckpt


@dataclass
class RunState:
    """Epochs done, steps taken, the early-stopping state and the per-epoch history."""

    epoch: int = 0
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "val_loss": math.inf, "val_dice": 0.0, "epochs_since_best": 0})
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, epoch: int, val: dict[str, float], min_delta: float) -> bool:
        """Note epoch ``epoch``'s validation; True when it improved on the best ``val_loss`` by more than ``min_delta``."""
        improved = val["val_loss"] < self.best["val_loss"] - min_delta
        if improved:
            self.best.update(epoch=epoch, val_loss=val["val_loss"], val_dice=val["val_dice"], epochs_since_best=0)
        else:
            self.best["epochs_since_best"] += 1
        return improved

    def stopped(self, patience: int) -> bool:
        """Early stop: ``patience`` epochs without improvement."""
        return self.best["epochs_since_best"] >= patience


def restore_run(method: Method, ckpt: dict[str, Any] | None, world: int = 1, rank: int = 0) -> RunState:
    """The run state of a new run (``ckpt`` None) or of the checkpoint, whose networks, optimisers,
    extras and RNG states are loaded into ``method`` and the process.

    Data-parallel runs (``world`` processes): a checkpoint written by a run of the same world size gives
    each rank its own method extras (image pools); with another world size every rank starts from rank
    0's (the checkpoint's) extras, and the steps differ from the interrupted run's from there on."""
    state = RunState()
    if ckpt is not None:
        method.load_state_dict(ckpt)
        per_rank = ckpt.get("method_state_ranks")
        if world > 1 and int(ckpt.get("world_size", 1)) == world and per_rank is not None and len(per_rank) == world:
            method.load_extra_state(dict(per_rank[rank]))
        state.history = list(ckpt.get("history", []))
        state.epoch, state.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        state.best = {**state.best, **ckpt.get("best", {})}
        restore_rng_state(ckpt["rng"])
    method.global_step = state.global_step
    remember_base_rates(method)
    return state


__all__ = ["RESUMABLE_CHANGES", "RunState", "check_resume_config", "load_resume_checkpoint", "restore_run", "saved_config_of",
           "seed_everything"]
