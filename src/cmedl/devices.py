"""Device names shared by training and inference (``cpu``, ``cuda``/``cuda:N`` or ``auto``) and the
training precision (``fp32``, ``bf16`` or ``auto``: bf16 where the hardware runs it natively)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
import re

import torch

from cmedl.errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ConfigError(f"device '{dev}' requested but this machine sees {n} CUDA device{'s' if n != 1 else ''} "
                          f"(cuda:0 to cuda:{n - 1}; CUDA_VISIBLE_DEVICES limits them)")
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


@functools.lru_cache(maxsize=1)
def cpu_bf16_conv3d_grads_ok() -> bool:
    """Whether CPU bf16 autocast gives right conv3d *weight* gradients on this PyTorch build.

    PyTorch 2.13's oneDNN 3.12 does not: for bf16 3x3x3 convolutions on inputs two slices deep with
    32 or more channels it returns wrong weight gradients on every call (measured 2026-12-03: relative
    error 0.9 to 1e34 against fp32, sometimes inf/NaN, for 32-128 channels and in-plane sizes 2x2 to
    16x16; depths 1 and 3-8, 2D convolutions, the forward pass and the input gradients are right).
    Such layers are the bottlenecks of 3D U-Nets on 32-slice patches (``cpu-ts``: 2 x 4 x 4 x 128),
    whose training then silently learns from garbage or diverges to NaN. Checked once per process on
    that layer against fp32 (a few ms), so bf16 comes back by itself once the kernel is fixed.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, 2, 4, 4, generator=gen)
    w = torch.randn(32, 32, 3, 3, 3, generator=gen) * 0.05
    grad_out = torch.randn(1, 32, 2, 4, 4, generator=gen)
    grads = []
    for bf16 in (False, True):
        weight = w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.conv3d(x, weight, None, 1, 1)
        y.backward(grad_out.to(y.dtype))
        grads.append(weight.grad)
    ref, got = grads
    ok = bool(torch.isfinite(got).all()) and float((got - ref).norm() / ref.norm()) < 0.05
    if not ok:
        logger.info("this PyTorch's CPU bf16 conv3d weight gradients are wrong (oneDNN); 3D networks train in fp32")
    return ok


def resolve_precision(precision: str, device: torch.device, dims: int = 2) -> str:
    """``fp32``/``bf16`` as given; ``auto``: ``bf16`` when :func:`native_bf16` says so, else ``fp32``.

    ``dims=3`` (3D networks) on a CPU whose bf16 conv3d gradients are wrong
    (:func:`cpu_bf16_conv3d_grads_ok`): ``auto`` resolves to ``fp32`` and ``bf16`` is refused.
    """
    if precision not in PRECISIONS:
        raise ConfigError(did_you_mean(precision, PRECISIONS, "precision"))
    resolved = ("bf16" if native_bf16(device) else "fp32") if precision == "auto" else precision
    if resolved == "bf16" and dims == 3 and device.type == "cpu" and not cpu_bf16_conv3d_grads_ok():
        if precision == "bf16":
            raise ConfigError("training.precision=bf16: this PyTorch computes wrong bf16 conv3d weight gradients on "
                              "CPU (oneDNN, 2-slice-deep layers), so 3D networks cannot train in bf16 here; use fp32 or auto")
        return "fp32"
    return resolved


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.lru_cache(maxsize=1)
def keep_freed_host_memory() -> bool:
    """Let glibc malloc keep freed memory for reuse instead of returning it to the OS at once.

    PyTorch on CPU has no caching allocator: every activation and gradient of a training step is a
    fresh ``malloc``. With glibc's defaults, buffers of a few MB come from ``mmap`` (or are trimmed
    off the heap top) and go back to the OS on ``free``, so the next step page-faults them in and the
    kernel zeroes them again: about 30,000 minor page faults per cpu-demo CMEDL step on this project's
    2-core reference machine, roughly 10 % of the step (measured with ``getrusage``; see
    ``benchmarks/bench_train_step.py``). Raising the mmap and trim thresholds (``mallopt``) makes
    freed buffers reusable, the same effect that preloading jemalloc/tcmalloc gives (PyTorch's CPU
    performance guide), without asking users to change how they start Python. The process keeps up
    to its peak of small buffers instead of shrinking between steps. This is process-wide: it is
    called once by :func:`cmedl.training.train` and :func:`cmedl.inference.segment_files` on CPU; a
    no-op elsewhere (not Linux/glibc). Returns whether the setting was applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # buffers up to 32 MiB (glibc's own upper bound for the dynamic threshold; every per-step buffer of
        # cpu-demo training is < 8 MiB) come from the heap and are kept there (trim threshold 1 GiB);
        # larger ones (whole volumes in `cmedl segment`) stay mmapped and go back to the OS when freed,
        # so volumes of varying size do not fragment the heap (a 1 GiB mmap threshold nearly doubled
        # the peak RSS of a 12-volume run in a test)
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and ok
    except (OSError, AttributeError):  # no usable libc: keep the defaults
        return False
    logger.debug("glibc malloc: freed memory kept for reuse (mallopt trim/mmap thresholds raised): %s", ok)
    return ok
