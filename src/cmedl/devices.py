"""Device names shared by training and inference (``cpu``, ``cuda``/``cuda:N`` or ``auto``) and the
training precision (``fp32``, ``bf16`` or ``auto``: bf16 where the hardware runs it natively)."""

from __future__ import annotations

import functools
import re

import torch

from cmedl.errors import ConfigError, did_you_mean

DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16", "auto")


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


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: no reliable way to ask, assume no native bf16
        pass
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix units exist on ``device``: CUDA with bf16 support (Ampere or newer), or
    an x86 CPU with AVX512-BF16 or AMX (Linux ``/proc/cpuinfo``). Elsewhere bf16 autocast is
    emulated and slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32``/``bf16`` as given; ``auto``: ``bf16`` when :func:`native_bf16` says so, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ConfigError(did_you_mean(precision, PRECISIONS, "precision"))
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision
