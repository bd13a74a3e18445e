"""Run a checkpoint with another method's test-time recipe (``cmedl segment --recipe METHOD``).

Some methods test networks that another method trains: ``pmri-cmedl`` runs the generator and the
MRI teacher of any ``cmedl`` checkpoint (CT -> pMRI -> teacher) instead of its student. A method
declares the methods whose checkpoints it can run in ``runs_checkpoints_of``;
:func:`checkpoint_as_method` returns a copy of a loaded checkpoint relabelled as that method (its
``method`` and ``config.training.method``; networks, weights and preprocessing unchanged), which
:func:`cmedl.methods.build_test_time_model` then composes by the new method's recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmedl.errors import ConfigError, InputError, did_you_mean
from cmedl.methods.base import Method
from cmedl.methods.registry import get_method, method_names, parse_config


def methods_running(method: str) -> list[str]:
    """The registered methods whose recipe can run a checkpoint of ``method`` (besides itself)."""
    return [name for name in method_names() if method in get_method(name).runs_checkpoints_of]


def checkpoint_as_method(ckpt: dict[str, Any], method: str, source: str | Path | None = None) -> dict[str, Any]:
    """A copy of checkpoint ``ckpt`` that runs as registered method ``method`` (``ckpt`` itself when it
    already is one of ``method``).

    Raises:
        InputError: naming ``source``: ``method`` is unknown (did-you-mean), cannot run checkpoints of
            the checkpoint's method (the message lists those that can), lacks a network of its
            recipe (e.g. a checkpoint saved with the student only), or the stored config does not fit it.
    """
    names = method_names()
    if method not in names:
        raise InputError(did_you_mean(str(method), names, "method"), source)
    target: type[Method] = get_method(method)
    current = str(ckpt.get("method"))
    if current == target.name:
        return ckpt
    if current not in target.runs_checkpoints_of:
        others = methods_running(current)
        runs = ", ".join(target.runs_checkpoints_of) or "none but its own"
        hint = f"; for a '{current}' checkpoint use {' or '.join(others)}" if others else ""
        raise InputError(f"method '{target.name}' cannot run a '{current}' checkpoint (it runs checkpoints of: "
                         f"{runs}){hint}", source)
    missing = [n for n in target.recipe.networks if n not in (ckpt.get("networks") or {})]
    if missing:
        have = ", ".join(sorted(ckpt.get("networks") or {})) or "none"
        raise InputError(f"checkpoint of method '{current}' has no '{missing[0]}' network, which method "
                         f"'{target.name}' runs (it has: {have})", source)
    try:
        config = parse_config(ckpt["config"], warn=False)
        config.training.method = target.name
        config.active_sections = target.config_sections(config)
        target.check_config(config)
    except (KeyError, TypeError, ConfigError) as exc:
        raise InputError(f"checkpoint config does not fit method '{target.name}' ({exc})", source) from None
    target.check_reused_checkpoint(ckpt, source)
    return {**ckpt, "method": target.name, "config": config.to_dict()}


__all__ = ["checkpoint_as_method", "methods_running"]
