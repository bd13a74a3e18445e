"""GPU efficiency of training and segmentation, as fractions of matmul peaks measured in the same run.

Sections (each prints as it goes; ``--budget`` seconds skips the optional variants once spent):

1. **peaks**: fp32 (TF32 off), TF32 and bf16 ``torch.mm`` at n = 8192 (CPU: n = 3072, fp32 only).
2. **training steps** at the papers' size (``paper-ct``: 256x256 patches, batch 2, full widths: U-Net 64,
   ResNet generator 64 x 9 blocks, PatchGAN 64, VGG19 to conv4_1), CMEDL and ct-only: seconds per
   step (median), FLOPs per step (``FlopCounterMode``, plain convolutions), and the fraction of the
   peak of its precision (fp32 runs with TF32 allowed -> TF32 peak; bf16 -> bf16 peak), for
   fp32 and bf16, each with ``training.channels_last`` false and true.
3. **segment**: ``segment_volume`` of a synthetic 512x512x``--slices`` CT with the paper U-Net
   (fp32 and bf16, batch sizes ``--seg-batches``): seconds per volume (target <= 1 s on an H100/H200;
   1.9 s measured on an H100 on 2026-11-25), split into preprocessing (CPU) and the network pass.
4. **scaling**: steps per second of the ct-only and cmedl steps over 1, 2, ... processes (one per GPU,
   NCCL; gradients averaged before every optimiser step as in ``torchrun -m cmedl train``,
   :mod:`cmedl.training.distributed`), per-process batch = the paper batch, and the epoch time of
   ``--epoch-samples`` samples from that. Needs 2+ GPUs (else says so); ``--quick`` runs 2 CPU
   processes over gloo instead, to check the code path.
5. **compile**: on the faster layout of each method x precision (CMEDL and bf16 first), ``torch.compile``
   of every network (default mode) and with CUDA graphs (mode ``reduce-overhead``); each option is
   listed as kept or dropped by whether it beat that layout. Compiling takes minutes, so it comes last
   and stops starting new variants once ``--budget`` seconds have passed.

Usage (``--quick`` runs tiny sizes on the CPU in about a minute)::

    python benchmarks/gpu_efficiency.py                      # cuda, every section
    python benchmarks/gpu_efficiency.py --sections compile --methods ct-only --budget 600
    python benchmarks/gpu_efficiency.py --quick --device cpu # smoke test of every section

On one H200 (2026-12-04) the peaks and both layouts of both steps took ~90 s, the segment section ~40 s,
and compiling CMEDL's networks ~150 s per variant, so the whole run needs 15-20 minutes; the README
has the figures of that session (compile reached CMEDL bf16 only).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import matmul_peak, sync
from bench_segment import flops_per_slice, synthetic_ct
from bench_train_step import make_batch

from cmedl.data.preprocess import PreprocessConfig, prepare_volume
from cmedl.inference.segment import segment_volume
from cmedl.methods import build_method, load_config
from cmedl.nets import UNet2D
from cmedl.nets.fastconv import fast_path_disabled
from cmedl.nets.predict import inference_copy, predict_slices

T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


# ---------------------------------------------------------------------------------------------- peaks
def peaks(device: str) -> dict[str, float]:
    """GFLOP/s of fp32 (TF32 off), TF32 and bf16 matmuls (CPU: fp32 only)."""
    out = {"fp32": matmul_peak(device=device)}
    if device.startswith("cuda"):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:  # matmul_peak switches TF32 off; time the TF32 product here
            n = 8192
            a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
            torch.mm(a, b)
            best = 0.0
            for _ in range(10):
                sync(device)
                t = time.perf_counter()
                torch.mm(a, b)
                sync(device)
                best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
            out["tf32"] = best
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        out["bf16"] = matmul_peak(dtype=torch.bfloat16, device=device)
    return out


# ---------------------------------------------------------------------------------------------- steps
def _config(method: str, precision: str, channels_last: bool, device: str, quick: bool) -> Any:
    preset, over = ("cpu-demo", []) if quick else ("paper-ct", ["data.patch_size=256", "training.batch_size=2"])
    over += [f"training.method={method}", f"training.precision={precision}", f"training.device={device}",
             f"training.channels_last={str(channels_last).lower()}"]
    if quick:
        over += ["data.patch_size=32", "training.batch_size=2", "model.seg_base_width=8", "cyclegan.gen_base_width=8",
                 "cyclegan.gen_n_blocks=1", "cyclegan.contextual_layers=[conv1_2]"]
    return load_config(preset, over)


def time_step(method: str, precision: str, channels_last: bool, device: str, iters: int, quick: bool,
              compile_mode: str | None = None) -> dict[str, float]:
    """Median seconds per training step and FLOPs per step of ``method`` in one configuration."""
    cfg = _config(method, precision, channels_last, device, quick)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the GiB column is this configuration's own peak
    torch.manual_seed(0)
    m = build_method(cfg, device)
    if compile_mode is not None:
        for net in m.networks.values():
            net.compile(mode=compile_mode, dynamic=False)
    batch = make_batch(method, cfg.training.batch_size, cfg.data.patch_size)
    if device.startswith("cuda"):
        batch = {k: v.pin_memory() for k, v in batch.items()}
    t_warm = time.perf_counter()
    for _ in range(3 if compile_mode else 2):
        m.training_step(batch)  # warm-up: allocations, cuDNN algorithm search, compilation, graph capture
    sync(device)
    t_warm = time.perf_counter() - t_warm
    with FlopCounterMode(display=False) as fc, fast_path_disabled():
        build_method(cfg, device).training_step(batch) if compile_mode else m.training_step(batch)
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        m.training_step(batch)
        sync(device)
        times.append(time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"s": statistics.median(times), "flops": float(fc.get_total_flops()), "warmup_s": t_warm, "gib": mem}


def _peak_of(precision: str, pk: dict[str, float], cuda: bool) -> tuple[float, str]:
    """The matmul peak a step of ``precision`` is measured against (fp32 on CUDA runs TF32)."""
    if precision == "fp32" and cuda:
        return pk.get("tf32", pk["fp32"]), "TF32"
    return pk.get(precision, pk["fp32"]), precision


def _show(method: str, precision: str, label: str, r: dict[str, float], pk: dict[str, float], cuda: bool,
          base: float | None) -> None:
    peak, peak_name = _peak_of(precision, pk, cuda)
    frac = r["flops"] / r["s"] / 1e9 / peak
    verdict = "" if base is None else (f"  kept ({base / r['s']:.2f}x)" if r["s"] < base * 0.97
                                       else f"  dropped (no gain: {base / r['s']:.2f}x)")
    print(f"  {method:7} {precision:4} {label:34} {r['s'] * 1e3:8.1f} ms/step  {r['flops'] / 1e9:7.1f} GFLOP  "
          f"{frac:6.1%} of {peak_name} peak  warm-up {r['warmup_s']:5.1f} s  {r['gib']:5.2f} GiB" + verdict,
          flush=True)


def step_section(args: argparse.Namespace, pk: dict[str, float]) -> dict[tuple[str, str], tuple[bool, float]]:
    """Both layouts of every method x precision; returns the faster layout and its time per pair."""
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 training runs TF32 matmuls and convolutions
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    best: dict[tuple[str, str], tuple[bool, float]] = {}
    print(f"\n== training steps ({'quick, tiny' if args.quick else 'paper-ct 256x256, batch 2'})")
    for method in args.methods:
        for precision in args.precisions:
            times = {}
            for cl in (False, True):
                r = time_step(method, precision, cl, args.device, args.iters, args.quick)
                times[cl] = r["s"]
                _show(method, precision, f"channels_last={cl}", r, pk, cuda, times[False] if cl else None)
            cl = min(times, key=times.get)
            best[(method, precision)] = (cl, times[cl])
    return best


def compile_section(args: argparse.Namespace, pk: dict[str, float],
                    best: dict[tuple[str, str], tuple[bool, float]]) -> None:
    """``torch.compile`` (and CUDA graphs) on the faster layout of each method x precision, the
    paper's CMEDL step first; variants left when ``--budget`` is spent are listed as skipped."""
    if not args.compile_modes:
        return
    cuda = args.device.startswith("cuda")
    print("\n== torch.compile on the faster layout (speed-up against it)")
    for method in args.methods:
        for precision in sorted(args.precisions, key=lambda p: p != "bf16"):  # bf16 first: the fastest
            cl, base = best[(method, precision)]
            for mode in args.compile_modes:
                label = f"cl={cl} compile {mode}" + (" (CUDA graphs)" if mode == "reduce-overhead" else "")
                if elapsed() > args.budget:
                    print(f"  {method:7} {precision:4} {label}: skipped (--budget {args.budget:.0f} s spent)")
                    continue
                try:
                    r = time_step(method, precision, cl, args.device, args.iters, args.quick, mode)
                    _show(method, precision, label, r, pk, cuda, None if math.isnan(base) else base)
                except Exception as exc:  # noqa: BLE001 - report and go on: an option that fails is dropped
                    print(f"  {method:7} {precision:4} {label}: failed "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)


# ---------------------------------------------------------------------------------------------- scaling
def _scaling_worker(rank: int, world: int, port: int, device: str, quick: bool, iters: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    if not device.startswith("cuda"):
        torch.set_num_threads(1)
    from cmedl.training import distributed as ddp

    kind = "cuda" if device.startswith("cuda") else "cpu"
    dev, owned = ddp.init_from_env(kind)
    dev = dev if dev is not None else torch.device("cuda", 0) if kind == "cuda" else torch.device("cpu")
    try:
        for method in ("ct-only", "cmedl"):
            cfg = _config(method, "bf16" if kind == "cuda" else "fp32", False, kind, quick)
            torch.manual_seed(0)
            m = build_method(cfg, dev)
            batch = make_batch(method, cfg.training.batch_size, cfg.data.patch_size, seed=rank)
            with ddp.gradient_sync(m):
                for _ in range(2):
                    m.training_step(batch)
                ddp.barrier()
                sync(dev)
                t = time.perf_counter()
                for _ in range(iters):
                    m.training_step(batch)
                sync(dev)
                ddp.barrier()
                dt = (time.perf_counter() - t) / iters
            if rank == 0:
                out[(method, world)] = dt
    finally:
        ddp.shutdown(owned)


def scaling_section(args: argparse.Namespace) -> None:
    import torch.multiprocessing as mp  # lazy: only this section starts processes

    cuda = args.device.startswith("cuda")
    n = torch.cuda.device_count() if cuda else (2 if args.quick else 1)
    print(f"\n== data-parallel scaling (per-process batch = the paper batch; {'NCCL' if cuda else 'gloo, CPU'})")
    if n < 2:
        print("  one device only: multi-GPU scaling not measured")
        return
    worlds = [w for w in (1, 2, 4, 8) if w <= n]
    manager = mp.Manager()
    out = manager.dict()
    for world in worlds:
        if elapsed() > args.budget:
            print(f"  world {world}: skipped (--budget spent)")
            continue
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_scaling_worker, args=(world, port, args.device, args.quick, args.iters, out),
                           nprocs=world, start_method="spawn")
    for method in ("ct-only", "cmedl"):
        one = out.get((method, 1))
        for world in worlds:
            dt = out.get((method, world))
            if dt is None:
                continue
            steps = args.epoch_samples // (2 * world)  # global batch 2 x world
            eff = one / dt if one else float("nan")
            print(f"  {method:8} {world} process(es): {dt * 1e3:8.1f} ms/step, epoch of {args.epoch_samples} samples "
                  f"{steps * dt:7.1f} s, weak-scaling efficiency (step time at 1 / at W) {eff:6.1%}", flush=True)


# ---------------------------------------------------------------------------------------------- segment
def segment_section(args: argparse.Namespace, pk: dict[str, float]) -> None:
    slices, size = (6, 128) if args.quick else (args.slices, 512)
    width = 8 if args.quick else 64
    print(f"\n== segment_volume {size}x{size}x{slices} CT, U-Net width {width} (as `cmedl segment`: one "
          "inference copy of the network, BN folded, reused for every volume)")
    torch.manual_seed(0)
    vol = synthetic_ct(slices, size)
    dev = torch.device(args.device)
    cpu_net = UNet2D(base_width=width).eval()
    net = inference_copy(cpu_net, dev)
    t_pre = []
    for _ in range(3):
        t = time.perf_counter()
        prepared = prepare_volume(vol, PreprocessConfig("ct"))
        t_pre.append(time.perf_counter() - t)
    z, rows, cols = prepared.shape
    f = flops_per_slice(cpu_net, rows, cols) * z  # counted on the CPU twin (same layers)
    for precision in ("fp32", "bf16"):
        peak, _ = _peak_of(precision, pk, dev.type == "cuda")
        for bs in args.seg_batches:
            kw = dict(device=dev, amp_bf16=precision == "bf16", batch_size=bs)
            segment_volume(vol, net, PreprocessConfig("ct"), **kw)  # warm-up (cuDNN algorithm search)
            times, t_net = [], []
            for _ in range(3):
                sync(dev)
                t = time.perf_counter()
                segment_volume(vol, net, PreprocessConfig("ct"), **kw)
                sync(dev)
                times.append(time.perf_counter() - t)
                t = time.perf_counter()
                predict_slices(net, prepared.image, pad_value=prepared.pad_value, **kw)
                sync(dev)
                t_net.append(time.perf_counter() - t)
            dt, dn = statistics.median(times), statistics.median(t_net)
            print(f"  {precision} batch {bs:3}: {dt:6.2f} s/volume = preprocessing {min(t_pre):.2f} s (CPU) + "
                  f"network pass {dn:.2f} s ({f / 1e9:.0f} GFLOP, {f / dn / 1e9 / peak:6.1%} of the {precision} "
                  f"peak) + restore and threshold", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test of every section)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per configuration (default 10; quick 2)")
    ap.add_argument("--methods", nargs="+", default=["cmedl", "ct-only"], choices=["cmedl", "ct-only"],
                    help="training steps to time (and compile), in this order")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--compile-modes", nargs="*", default=None,
                    help="torch.compile modes to try (default: default reduce-overhead on CUDA, none on CPU)")
    ap.add_argument("--sections", nargs="+", default=["step", "segment", "scaling", "compile"],
                    choices=["step", "segment", "scaling", "compile"])
    ap.add_argument("--slices", type=int, default=134)
    ap.add_argument("--seg-batches", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--epoch-samples", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which optional variants are skipped")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if args.iters is None:
        args.iters = 2 if args.quick else 10
    if args.compile_modes is None:
        args.compile_modes = ["default", "reduce-overhead"] if cuda else []
    if args.quick and not cuda:
        torch.set_num_threads(1)
    if not cuda:
        args.precisions = [p for p in args.precisions if p == "fp32"] or ["fp32"]
    pk = peaks(args.device)
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; matmul peaks (GFLOP/s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in pk.items()), flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # cheap, always-wanted figures first; compiling last
        best = (step_section(args, pk) if "step" in args.sections else  # compile alone: no baseline
                {(m, p): (False, math.nan) for m in args.methods for p in args.precisions})
        if "segment" in args.sections:
            segment_section(args, pk)
        if "scaling" in args.sections:
            scaling_section(args)
        if "compile" in args.sections:
            compile_section(args, pk, best)
    pk2 = peaks(args.device)
    print("\nmatmul peaks again at the end (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in pk2.items())
          + f"; total {elapsed():.0f} s")


if __name__ == "__main__":
    main()
