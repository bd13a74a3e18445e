"""Checkpoint files: one ``.pt`` dict readable with ``torch.load(weights_only=True)``.

Format ``cmedl-checkpoint/1`` (keys are stable; readers must ignore keys they do not know)::

    {
      "format": "cmedl-checkpoint/1",
      "method": a registered method name ("cmedl", "ct-only", ...),
      "config": plain nested dict of the full TrainConfig,
      "preprocess": {"student": PreprocessConfig dict, "mr": PreprocessConfig dict or None,
                     "ts": TSPreprocessConfig dict (teacher-student paper pipeline only)},
      "networks": {name: state_dict},     # student_ct, teacher_mr, g_ct2mr, g_mr2ct, d_ct, d_mr
      "optimizers": {name: state_dict},   # e.g. "g", "d", "s"
      "method_state": {...},              # method extras (e.g. CycleGAN image pools), tensors only
      "epoch": int,                       # number of completed epochs; resume continues with the next one
      "global_step": int,                 # optimisation steps done
      "metrics": {"val_loss": float, "val_dice": float, ...},
      "best": {"epoch": int, "val_loss": float, "val_dice": float, "epochs_since_best": int},
      "history": [per-epoch dict, ...],
      "rng": {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...ints/tensor}, "python": {...}},
      "world_size": int,                  # processes of the run (torchrun); 1 without
      "method_state_ranks": [{...}, ...], # data-parallel runs only: each rank's method extras (image pools)
    }

Writes go through :func:`cmedl.io.atomic.atomic_path` (hidden temporary folder + ``fsync`` + ``os.replace``),
so a crash or a full disk never leaves a truncated checkpoint and a previous good one is only replaced
by a complete new one.
"""

from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmedl.errors import InputError
from cmedl.io.atomic import atomic_path

FORMAT = "cmedl-checkpoint/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically; ``payload["format"]`` is set to :data:`FORMAT`.

    Raises:
        InputError: naming ``path`` if it cannot be written (e.g. the disk is full); the previous
            file at ``path``, if any, is kept and no temporary file is left behind.
    """
    path = Path(path)
    payload = {"format": FORMAT, **{k: v for k, v in payload.items() if k != "format"}}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(payload, f)
        except RuntimeError as exc:  # torch's zip writer turns a failed write (ENOSPC) into its own error
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                raise cause from None  # atomic_path reports it naming `path` and removes the temporary
            raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises :class:`InputError` naming ``path`` if it is missing, unreadable or not a cmedl checkpoint
    (among others: a pickle of Python objects that a weights-only load refuses to build).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a readable checkpoint"
        found = re.search(r"GLOBAL (\S+)|[Uu]nsupported global", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and found:  # torch's text is many lines, cut mid-sentence
            what = f" ({found.group(1)})" if found.group(1) else ""
            raise InputError("not a cmedl checkpoint: it holds Python objects that a weights-only checkpoint "
                             f"may not hold{what}; it was not loaded", path) from None
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"not a readable cmedl checkpoint ({reason})", path) from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise InputError("not a cmedl checkpoint (no 'format' key)", path)
    fmt = str(ckpt["format"])
    if fmt != FORMAT:
        raise InputError(f"unsupported checkpoint format '{fmt}' (this version reads '{FORMAT}')", path)
    for key in ("method", "config", "networks", "preprocess"):
        if key not in ckpt:
            raise InputError(f"checkpoint lacks '{key}'", path)
    return ckpt


# ------------------------------------------------------------------------------------ RNG
def capture_rng_state() -> dict[str, Any]:
    """Global RNG states of torch (CPU, CUDA), numpy (legacy global) and python ``random``.

    Stored as tensors and plain ints only, so the checkpoint stays ``weights_only``-loadable.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(list(py_state), dtype=torch.int64),
            "gauss": None if py_gauss is None else float(py_gauss),
        },
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
