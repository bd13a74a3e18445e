"""Configs written before the method registry (one flat layout for every method) -> today's layout.

Until cmedl 0.1 every run's ``config.yaml`` and checkpoint held the CMEDL and CycleGAN settings in
the shared ``model``, ``loss`` and ``optim`` sections and untyped ``data.preprocess*`` /
``data.augment_params`` mappings. :func:`migrate_legacy_keys` moves each such key to its section
(``loss.lambda_hint`` -> ``cmedl.lambda_hint``, ``model.gen_base_width`` -> ``cyclegan.gen_base_width``,
``data.preprocess.window`` -> ``preprocessing.student.window`` ...), so old checkpoints, old run
folders and old command lines keep working. A key given in the old form wins over the same key in
the new form (it can only come from the user's own, later input or from an old file as a whole).
"""

from __future__ import annotations

import logging
from typing import Any

from cmedl.errors import ConfigError

log = logging.getLogger(__name__)

#: old dotted key -> new dotted key (None: the setting no longer exists and is dropped)
LEGACY_KEYS: dict[str, str | None] = {
    "data.augment": "augmentation.enabled",
    "data.cache_dir": None,  # was parsed but never used
    "model.hint_layers": "cmedl.hint_layers",
    **{f"model.{k}": f"cyclegan.{k}" for k in
       ("gen_base_width", "gen_n_blocks", "disc_base_width", "disc_n_layers", "vgg_weights")},
    **{f"loss.{k}": f"cmedl.{k}" for k in
       ("lambda_hint", "lambda_seg", "use_hint", "use_seg_pmri", "use_seg_real_mri", "hint_to_teacher")},
    **{f"loss.{k}": f"cyclegan.{k}" for k in
       ("lambda_adv", "lambda_cycle", "lambda_contextual", "use_adversarial", "use_cycle", "use_contextual",
        "gan_mode", "contextual_layers", "contextual_bandwidth", "contextual_max_positions",
        "contextual_max_images", "pool_size")},
    "optim.lr_translation": "cyclegan.lr",
    "optim.betas_translation": "cyclegan.betas",
}
#: old mapping-valued keys whose entries move one by one under a new section
LEGACY_MAPPINGS: dict[str, str] = {
    "data.preprocess": "preprocessing.student",
    "data.preprocess_mr": "preprocessing.mr",
    "data.augment_params": "augmentation",
}


def _pop(raw: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    section, _, key = dotted.partition(".")
    node = raw.get(section)
    if isinstance(node, dict) and key in node:
        return True, node.pop(key)
    return False, None


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for p in parents:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{p}: expected a mapping of settings, got {child!r}")
        node = child
    node[last] = value


def migrate_legacy_keys(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return (a copy of ``raw`` in today's layout, the old keys that were moved or dropped)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    moved: list[str] = []
    for old, new in LEGACY_MAPPINGS.items():
        found, value = _pop(out, old)
        if not found:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{old}: expected a mapping, got {value!r}")
        for key, v in value.items():
            _set(out, f"{new}.{key}", v)
        moved.append(old)
    for old, new in LEGACY_KEYS.items():
        found, value = _pop(out, old)
        if not found:
            continue
        if new is not None:
            _set(out, new, value)
        elif value is not None:
            log.warning("config key %s is no longer used and was ignored", old)
        moved.append(old)
    return out, moved


def warn_legacy(moved: list[str], source: object = None) -> None:
    """Log once which old keys a config used (they keep working)."""
    if moved:
        where = f"{source}: " if source is not None else ""
        log.warning(
            "%sconfig uses keys of the pre-registry layout, read as today's (%s); see docs/architecture.md",
            where, ", ".join(f"{k} -> {LEGACY_KEYS.get(k) or LEGACY_MAPPINGS.get(k) or 'dropped'}" for k in moved),
        )
