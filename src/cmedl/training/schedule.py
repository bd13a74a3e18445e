"""Learning-rate schedules over the whole run (``optim.lr_schedule``, ``optim.lr_decay_start``)."""

from __future__ import annotations

import math

from cmedl.config import OptimConfig
from cmedl.errors import ConfigError
from cmedl.methods.base import Method


def lr_factor(schedule: str, progress: float, decay_start: float = 0.5) -> float:
    """Multiplier of the base learning rate at ``progress`` = fraction of all steps already taken."""
    if schedule == "constant" or progress <= decay_start:
        return 1.0
    t = min((progress - decay_start) / (1.0 - decay_start), 1.0)
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ConfigError(f"optim.lr_schedule: unknown schedule {schedule!r}")


def remember_base_rates(method: Method) -> None:
    """Store each parameter group's base rate (``initial_lr``) unless a restored optimiser has it."""
    for opt in method.optimizers.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])


def apply_lr_schedule(method: Method, optim: OptimConfig, progress: float) -> None:
    """Set every optimiser's rates for ``progress`` (fraction of the run's steps taken); a no-op for ``constant``."""
    if optim.lr_schedule == "constant":
        return
    factor = lr_factor(optim.lr_schedule, progress, optim.lr_decay_start)
    for opt in method.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor


__all__ = ["apply_lr_schedule", "lr_factor", "remember_base_rates"]
