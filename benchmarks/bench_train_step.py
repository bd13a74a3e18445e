"""Benchmark of one full CMEDL training step (shared forward, G, S and D updates).

Prints, for each size: seconds per iteration (median), FLOPs of one step (counted with
``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls, forward and backward),
achieved GFLOP/s, and that as a fraction of this machine's fp32 matmul peak measured in the same
run (best of a few large ``torch.mm``). On CPU it also pairs every timed step with a peak measured
right after it and prints the median and best of those per-step fractions: on a shared host the load
changes within seconds, and a step slowed by another process compared with a peak measured while the
host was quiet understates the code's efficiency. Sizes:

- ``demo``: the ``cpu-demo`` preset (64x64 patches, batch 8, every network at width 16);
- ``128``:  ``paper-ct`` at 128x128 patches (full widths: U-Net 64, generator 64 with 9 blocks,
  PatchGAN 64, VGG19 up to conv4_1), batch 2.

Options: ``--precision fp32 bf16`` (autocast, reported beside fp32), ``--channels-last auto|true|false``
(``training.channels_last``; auto = the segmentation networks on CPU), ``--no-fast-conv`` (plain
``nn.Conv2d`` for the generators' single-channel 7x7 layers instead of :mod:`cmedl.nets.fastconv`),
``--profile`` (torch.profiler table of the ops that take the time), ``--iters``, ``--threads``,
``--ct-only`` (also time the ct-only step), ``--default-malloc`` (without the glibc malloc tuning that
training applies on CPU, :func:`cmedl.devices.keep_freed_host_memory`), ``--device cuda`` (GPU; times with synchronisation, prints
the fraction of the measured fp32 and bf16 matmul peaks and the peak GPU memory). Example::

    python benchmarks/bench_train_step.py --sizes demo 128 --precision fp32 bf16 --iters 3
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import matmul_peak, sync

from cmedl.devices import keep_freed_host_memory
from cmedl.methods import build_method, load_config
from cmedl.nets.fastconv import fast_path_disabled


def make_batch(method_name: str, b: int, p: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ct = torch.rand(b, 1, p, p, generator=g) * 2 - 1
    lab = (torch.rand(b, 1, p, p, generator=g) > 0.9).float()
    if method_name == "ct-only":
        return {"image": ct, "label": lab}
    return {"ct": ct, "ct_label": lab, "mr": torch.rand(b, 1, p, p, generator=g) * 2 - 1, "mr_label": lab,
            "mr_has_label": torch.ones(b, dtype=torch.bool)}


def bench(size: str, method_name: str, precision: str, channels_last: str, iters: int, profile: bool,
          peak: float, device: str = "cpu", bf16_peak: float = float("nan"), no_fast_conv: bool = False) -> float:
    """Time one configuration; returns the (possibly raised) fp32 peak used for the fraction."""
    preset, over = ("cpu-demo", []) if size == "demo" else ("paper-ct", [f"data.patch_size={size}"])
    over += [f"training.method={method_name}", f"training.precision={precision}", f"training.device={device}",
             f"training.channels_last={channels_last}"]
    cfg = load_config(preset, over)
    torch.manual_seed(0)
    m = build_method(cfg, device)
    b, p = cfg.training.batch_size, cfg.data.patch_size
    batch = make_batch(method_name, b, p)
    if device.startswith("cuda"):
        batch = {k: v.pin_memory() for k, v in batch.items()}  # as the trainer's loader does
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2 if device.startswith("cuda") else 1):
        m.training_step(batch)  # warm-up (allocations, pools, cuDNN algorithm search)
    # the model's FLOPs: with the plain convolutions, not the faster single-channel ones (which do more
    # arithmetic, cmedl.nets.fastconv), so that faster code shows as a higher fraction of the peak
    with FlopCounterMode(display=False) as fc, fast_path_disabled():
        m.training_step(batch)
    flops = fc.get_total_flops()
    times, pair_fractions, faults = [], [], 0
    for _ in range(iters):
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sync(device)
        t = time.perf_counter()
        with fast_path_disabled() if no_fast_conv else contextlib.nullcontext():
            m.training_step(batch)  # returns Python floats: the step has finished on the device
        sync(device)
        times.append(time.perf_counter() - t)
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        if device == "cpu":
            # a shared host's load changes within seconds: pair every step with a peak measured right
            # after it, under the same conditions (one 3072^3 product, ~0.3 s)
            pair_fractions.append(flops / times[-1] / 1e9 / matmul_peak(reps=1))
    s = statistics.median(times)
    faults /= iters
    # re-measure the peak right after as well (the best one seen is used for the headline fraction)
    peak = max(peak, matmul_peak(reps=2, device=device))
    gfs = flops / s / 1e9
    extra = ""
    if device == "cpu":
        extra = (f"  (paired with the peak after each step: median {statistics.median(pair_fractions):.1%}, "
                 f"best {max(pair_fractions):.1%}; fastest step {min(times):.3f} s)  {faults:5.0f} page faults/iter")
    if device.startswith("cuda"):
        extra = f"  {gfs / bf16_peak:6.1%} of bf16 peak  {torch.cuda.max_memory_allocated() / 2**30:5.2f} GiB"
    print(f"{size:>5} {method_name:8} {precision:5} cl={channels_last} batch {b} {p}x{p}: "
          f"{s:8.3f} s/iter  {flops / 1e9:8.1f} GFLOP/step  {gfs:7.1f} GFLOP/s  {100 * gfs / peak:5.1f}% of fp32 peak"
          + extra, flush=True)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with prof(activities=acts) as pr, fast_path_disabled() if no_fast_conv else contextlib.nullcontext():
            m.training_step(batch)
        key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        print(pr.key_averages().table(sort_by=key, row_limit=14))
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["demo", "128"])
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                    help="training.channels_last (auto: the segmentation networks on CPU)")
    ap.add_argument("--no-fast-conv", action="store_true",
                    help="time plain nn.Conv2d for the single-channel 7x7 layers (cmedl.nets.fastconv)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ct-only", action="store_true", help="also time the ct-only step")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU: 'demo 128 256' are all useful sizes)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="keep glibc's malloc defaults (training raises its trim/mmap thresholds on CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    if dev == "cpu" and not args.default_malloc:
        keep_freed_host_memory()  # as cmedl.training.train does on CPU
    peak = matmul_peak(device=dev)
    bf16_peak = matmul_peak(dtype=torch.bfloat16, device=dev) if dev.startswith("cuda") else float("nan")
    where = torch.cuda.get_device_name() if dev.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; fp32 matmul peak {peak:.1f} GFLOP/s"
          + (f", bf16 {bf16_peak:.1f} GFLOP/s (cuDNN convolutions use TF32 in fp32 mode, so '% of fp32 peak' "
             "can pass 100%)" if dev.startswith("cuda") else ""))
    for size in args.sizes:
        for prec in args.precision:
            peak = bench(size, "cmedl", prec, args.channels_last, args.iters, args.profile, peak, dev, bf16_peak,
                         args.no_fast_conv)
            if args.ct_only:
                peak = bench(size, "ct-only", prec, args.channels_last, args.iters, False, peak, dev, bf16_peak,
                             args.no_fast_conv)
    print(f"best fp32 matmul peak seen: {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
