"""Benchmark of ``cmedl segment`` on CPU: the paper U-Net (width 64) on a 512x512x134 CT.

Prints, in one run on this machine:

- the fp32 (and bf16) matmul peak, measured with a large ``torch.mm`` at the start and the end
  (the larger of the two is used: other processes may share the cores);
- the FLOPs of the network per working slice (``torch.utils.flop_counter.FlopCounterMode``, one
  multiply-add = 2 FLOPs) times the number of slices: the compute floor of the pixels actually
  processed (the preprocessing crops each slice to the body box), and of whole 512x512 slices;
- a sweep of memory format (contiguous / channels_last) x batch size, fp32 and bf16, on a few
  slices of the working size, timing :func:`cmedl.nets.predict.predict_slices`;
- full-volume :func:`cmedl.inference.segment_volume` runs with the library defaults (fp32, then
  bf16 autocast): seconds per volume, achieved GFLOP/s, fraction of the fp32 peak (= compute floor
  / time), and the peak RSS of the process (``resource.getrusage``; target <= 3 GB).

Usage: ``python benchmarks/bench_segment.py [--slices 134] [--sweep-slices 6] [--no-bf16] [--device cuda]``
(``--device cuda``: GPU seconds per volume and fraction of the GPU's measured matmul peaks only).
Random weights are fine: the cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import matmul_peak as _peak

from cmedl.data.preprocess import PreprocessConfig, prepare_volume
from cmedl.inference.segment import segment_volume
from cmedl.io import Volume
from cmedl.nets import UNet2D
from cmedl.nets.predict import inference_copy, predict_slices


def synthetic_ct(slices: int, size: int = 512, seed: int = 0) -> Volume:
    """Thorax-like int16 CT [z, y, x] in HU: air, an elliptic body with soft tissue, two lungs, a
    rib ring, a tumour, and a couch line below the body (0.78 x 0.78 x 2.5 mm)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size * 0.5, size * 0.5
    r_body = ((yy - cy) / (0.33 * size)) ** 2 + ((xx - cx) / (0.43 * size)) ** 2
    plane = np.full((size, size), -1000, np.float32)
    plane[r_body < 1.0] = 40
    plane[(r_body > 0.88) & (r_body < 0.95)] = 700  # ribs
    for sx in (-1, 1):
        lung = ((yy - cy) / (0.24 * size)) ** 2 + (
            (xx - cx - sx * 0.2 * size) / (0.15 * size)
        ) ** 2 < 1
        plane[lung] = -820
    plane[int(cy + 0.36 * size) : int(cy + 0.37 * size), int(0.05 * size) : int(0.95 * size)] = (
        200  # couch
    )
    vol = np.empty((slices, size, size), np.int16)
    for k in range(slices):
        noise = rng.normal(0, 15, (size, size)).astype(np.float32)
        sl = plane + noise
        t = abs(k - slices / 2) / (slices / 2)
        if t < 0.3:
            tumour = ((yy - cy + 0.05 * size) ** 2 + (xx - cx - 0.2 * size) ** 2) < (
                0.05 * size * (1 - t)
            ) ** 2
            sl[tumour] = 30
        vol[k] = np.clip(sl, -1024, 3000).astype(np.int16)
    return Volume(vol, spacing=(0.78, 0.78, 2.5), origin=(-200.0, -200.0, -150.0))


def matmul_peak(dtype: torch.dtype = torch.float32, reps: int = 3) -> float:
    """Best CPU GFLOP/s of a 4096^3 ``torch.mm`` in ``dtype``."""
    return _peak(n=4096, reps=reps, dtype=dtype)


def flops_per_slice(net: torch.nn.Module, rows: int, cols: int) -> float:
    x = torch.zeros(1, 1, rows, cols)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x)
    return float(counter.get_total_flops())


def peak_rss_gb() -> float:
    """Peak RSS of this process in GB (``ru_maxrss``, KiB on Linux).

    ``ru_maxrss`` survives ``exec``: a spawned child starts with its parent's peak, so the
    full-volume children run before the parent allocates anything large. :func:`vm_hwm_gb` (reset
    by exec) cross-checks it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def vm_hwm_gb() -> float:
    """Peak RSS of this process image from ``/proc/self/status`` (VmHWM), NaN where unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def _full_run(slices: int, width: int, amp: bool) -> dict[str, float]:
    """One full-volume ``segment_volume`` with the library defaults, in a fresh process (so that
    ``ru_maxrss`` is this run's peak): returns seconds, peak RSS and the fp32 peak around it."""
    torch.manual_seed(0)
    vol = synthetic_ct(slices)
    net = UNet2D(base_width=width).eval()
    before = matmul_peak()
    t0 = time.perf_counter()
    segment_volume(vol, net, PreprocessConfig("ct"), amp_bf16=amp)
    dt = time.perf_counter() - t0
    return {
        "seconds": dt,
        "rss_gb": peak_rss_gb(),
        "hwm_gb": vm_hwm_gb(),
        "peak": (before + matmul_peak()) / 2,
    }


def cuda_report(slices: int, width: int, no_bf16: bool) -> None:
    """GPU variant: full-volume ``segment_volume(device="cuda")`` with the library defaults (batch 8
    slices), fp32 (cuDNN uses TF32 convolutions by default) and bf16 autocast; seconds per volume
    including preprocessing and host<->device copies, achieved GFLOP/s against the measured fp32
    (TF32 off) and bf16 matmul peaks, and peak GPU memory."""
    torch.manual_seed(0)
    vol = synthetic_ct(slices)
    net = UNet2D(base_width=width).eval()
    z, rows, cols = prepare_volume(vol, PreprocessConfig("ct")).shape
    f_work = flops_per_slice(net, rows, cols)
    p32 = _peak(device="cuda")
    p16 = _peak(dtype=torch.bfloat16, device="cuda")
    print(f"{torch.cuda.get_device_name()}: fp32 matmul {p32 / 1e3:.1f} TFLOP/s, bf16 {p16 / 1e3:.1f} TFLOP/s; "
          f"working grid {z}x{rows}x{cols}, {f_work / 1e9:.1f} GFLOP per slice")
    for label, amp in [("fp32", False)] + ([] if no_bf16 else [("bf16", True)]):
        segment_volume(synthetic_ct(8), net, PreprocessConfig("ct"), device="cuda", amp_bf16=amp)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        segment_volume(vol, net, PreprocessConfig("ct"), device="cuda", amp_bf16=amp)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        gf = z * f_work / dt / 1e9
        print(f"  {label}: {dt:.2f} s/volume, {gf / 1e3:.1f} TFLOP/s = {gf / p32:.1%} of fp32 peak, "
              f"{gf / p16:.1%} of bf16 peak; GPU memory peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
              f"host peak RSS {peak_rss_gb():.2f} GB", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--slices", type=int, default=134, help="slices of the synthetic CT (512x512 each)"
    )
    ap.add_argument("--sweep-slices", type=int, default=4, help="slices per sweep configuration")
    ap.add_argument("--width", type=int, default=64, help="U-Net base width (paper: 64)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast runs")
    ap.add_argument(
        "--no-sweep", action="store_true", help="skip the memory-format / batch-size sweep"
    )
    ap.add_argument("--device", default="cpu", help="cpu (the full report) or cuda (GPU timings only)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda"):
        cuda_report(args.slices, args.width, args.no_bf16)
        return

    import concurrent.futures
    import multiprocessing

    from cmedl.devices import keep_freed_host_memory

    keep_freed_host_memory()  # as `cmedl segment` does on CPU
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}"
    )
    print(
        "(each figure is relative to the fp32 matmul peak measured just before and after it: other "
        "processes sharing the cores move both together)"
    )
    # ------------------------------------------------------------------ full volume, defaults
    runs = [("fp32", False)] + ([] if args.no_bf16 else [("bf16", True)])
    full: list[tuple[str, dict[str, float]]] = []
    ctx = multiprocessing.get_context("spawn")
    for label, amp in runs:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            res = pool.submit(_full_run, args.slices, args.width, amp).result()
        full.append((label, res))
        print(f"  full volume {label}: {res['seconds']:.1f} s", flush=True)
    vol = synthetic_ct(args.slices)
    cfg = PreprocessConfig("ct")  # the default stored in checkpoints: body crop, padded to 16
    net = UNet2D(base_width=args.width).eval()
    t0 = time.perf_counter()
    prepared = prepare_volume(vol, cfg)
    t_prep = time.perf_counter() - t0
    z, rows, cols = prepared.shape
    f_work = flops_per_slice(net, rows, cols)
    f_full = flops_per_slice(net, vol.shape[1], vol.shape[2])
    print(
        f"volume {vol.shape} (z, y, x) int16; working grid {prepared.shape} after the body crop "
        f"({rows * cols / (vol.shape[1] * vol.shape[2]):.1%} of the pixels); prepare_volume {t_prep:.1f} s"
    )
    print(
        f"U-Net width {args.width}: {f_work / 1e9:.1f} GFLOP per working slice, "
        f"{f_full / 1e9:.1f} GFLOP per 512x512 slice",
        flush=True,
    )

    # ------------------------------------------------------------------ sweep
    sweep: list[tuple[str, str, int, float, float]] = []
    if not args.no_sweep:
        sub = np.ascontiguousarray(prepared.image[: args.sweep_slices])
        for cl in (True, False):
            run_net = inference_copy(net, torch.device("cpu"), channels_last=cl)
            for amp in (False, True) if not args.no_bf16 else (False,):
                for bs in (1, 2, 4):
                    predict_slices(run_net, sub[:bs], batch_size=bs, amp_bf16=amp)  # warm-up
                    p0 = matmul_peak(reps=2)
                    t0 = time.perf_counter()
                    predict_slices(run_net, sub, batch_size=bs, amp_bf16=amp)
                    dt = (time.perf_counter() - t0) / len(sub)
                    peak = (p0 + matmul_peak(reps=2)) / 2
                    fmt = "channels_last" if cl else "contiguous"
                    sweep.append((fmt, "bf16" if amp else "fp32", bs, dt, peak))
                    print(
                        f"  sweep {fmt:13s} {sweep[-1][1]} batch {bs}: {dt:.3f} s/slice "
                        f"(fp32 peak {peak:.0f} GFLOP/s)",
                        flush=True,
                    )
            del run_net
    del prepared

    bf16_peak = matmul_peak(torch.bfloat16) if not args.no_bf16 else float("nan")
    fp32_peak = matmul_peak()

    # ------------------------------------------------------------------ report
    print()
    print(f"matmul peak now: fp32 {fp32_peak:.1f} GFLOP/s, bf16 {bf16_peak:.1f} GFLOP/s")
    if sweep:
        print()
        print(
            f"{'memory format':14s} {'prec':5s} {'batch':>5s} {'s/slice':>8s} {'GFLOP/s':>8s} "
            f"{'fp32 peak':>9s} {'% of peak':>9s}"
        )
        for fmt, prec, bs, dt, peak in sweep:
            gf = f_work / dt / 1e9
            print(f"{fmt:14s} {prec:5s} {bs:5d} {dt:8.3f} {gf:8.1f} {peak:9.1f} {gf / peak:9.1%}")
    print()
    print(
        f"{'full volume':11s} {'s/volume':>9s} {'GFLOP/s':>8s} {'fp32 peak':>9s} {'% of peak':>9s} "
        f"{'x floor':>8s} {'floor s':>8s} {'512px floor s':>13s} {'peak RSS GB':>11s} {'VmHWM GB':>8s}"
    )
    for label, r in full:
        gf = z * f_work / r["seconds"] / 1e9
        floor = z * f_work / (r["peak"] * 1e9)
        floor_full = z * f_full / (r["peak"] * 1e9)
        print(
            f"{label:11s} {r['seconds']:9.1f} {gf:8.1f} {r['peak']:9.1f} {gf / r['peak']:9.1%} "
            f"{r['seconds'] / floor:8.2f} {floor:8.1f} {floor_full:13.1f} {r['rss_gb']:11.2f} {r['hwm_gb']:8.2f}"
        )
    print(
        "(s/volume includes preprocessing, restore and post-processing; the floor is the network's FLOPs "
        "on the pixels processed at the fp32 peak; '512px floor' is the same for whole 512x512 slices, "
        "i.e. without the body crop)"
    )


if __name__ == "__main__":
    main()
