"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is
on ``sys.path``): the measured matmul peak that every efficiency figure is relative to, and median timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str | torch.device) -> None:
    """Wait for queued CUDA work (timings must cover it); a no-op on CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(n: int = 3072, reps: int = 4, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Best achieved GFLOP/s of an ``n x n`` by ``n x n`` matrix product (2 n^3 FLOPs) over ``reps``
    runs after a warm-up. On CUDA: n = 8192, at least 10 runs, TF32 off for fp32 (the true fp32 rate)."""
    if device.startswith("cuda"):
        n, reps = 8192, max(reps, 10)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.mm(a, b)
        best = 0.0
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return best


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call (oneDNN primitive
    creation, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
