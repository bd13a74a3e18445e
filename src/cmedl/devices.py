"""Device names shared by training and inference: ``cpu``, ``cuda``/``cuda:N`` or ``auto``."""

from __future__ import annotations

import re

import torch

from cmedl.errors import ConfigError, did_you_mean

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (CUDA when available) as a torch device.

    Raises:
        ConfigError: an unknown name (with a did-you-mean), or CUDA on a machine without it.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
            raise ConfigError(did_you_mean(name, DEVICES, "device"))
        dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{dev}' requested but CUDA is not available here; use cpu or auto")
    return dev
