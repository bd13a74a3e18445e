"""GPU efficiency of training and segmentation, as fractions of matmul peaks measured in the same run.

Sections (each prints as it goes; ``--budget`` seconds skips the optional variants once spent):

1. **peaks**: fp32 (TF32 off), TF32 and bf16 ``torch.mm`` at n = 8192 (CPU: n = 3072, fp32 only).
2. **CMEDL step** at the papers' size (``paper-ct``: 256x256 patches, batch 2, full widths: U-Net 64,
   ResNet generator 64 x 9 blocks, PatchGAN 64, VGG19 to conv4_1) and the ct-only step: seconds per
   step (median), FLOPs per step (``FlopCounterMode``, plain convolutions), and the fraction of the
   peak of its precision (fp32 runs with TF32 allowed -> TF32 peak; bf16 -> bf16 peak), for
   fp32 and bf16, each with ``training.channels_last`` false and true; then, on the faster layout of
   each precision, ``torch.compile`` of every network (default mode) and with CUDA graphs (mode
   ``reduce-overhead``). Each option is listed as kept or dropped by whether it beat its baseline.
3. **scaling**: steps per second of the ct-only and cmedl steps over 1, 2, ... processes (one per GPU,
   NCCL; gradients averaged before every optimiser step as in ``torchrun -m cmedl train``,
   :mod:`cmedl.training.distributed`), per-process batch = the paper batch, and the epoch time of
   ``--epoch-samples`` samples from that. Needs 2+ GPUs (else says so); ``--quick`` runs 2 CPU
   processes over gloo instead, to check the code path.
4. **segment**: ``segment_volume`` of a synthetic 512x512x``--slices`` CT with the paper U-Net
   (fp32 and bf16, batch sizes ``--seg-batches``): seconds per volume (target <= 1 s on an H100/H200;
   1.9 s measured on an H100 on 2026-11-25), split into preprocessing + restore and network time.

Usage (about 10 minutes on one H200; ``--quick`` runs tiny sizes on the CPU in about a minute)::

    python benchmarks/gpu_efficiency.py                      # cuda
    python benchmarks/gpu_efficiency.py --quick --device cpu # smoke test of every section
"""

from __future__ import annotations

import argparse
import contextlib
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


def step_section(args: argparse.Namespace, pk: dict[str, float]) -> None:
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 training runs TF32 matmuls and convolutions
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    for method in ("cmedl", "ct-only"):
        print(f"\n== {method} training step ({'quick, tiny' if args.quick else 'paper-ct 256x256, batch 2'})")
        for precision in args.precisions:
            peak = pk.get("tf32" if precision == "fp32" and cuda else precision, pk["fp32"])
            peak_name = "TF32" if precision == "fp32" and cuda else precision
            results: dict[str, dict[str, float]] = {}

            def show(label: str, r: dict[str, float], base: float | None) -> None:
                frac = r["flops"] / r["s"] / 1e9 / peak
                verdict = "" if base is None else ("  kept" if r["s"] < base * 0.97 else "  dropped (no gain)")
                print(f"  {precision:4} {label:28} {r['s'] * 1e3:8.1f} ms/step  {r['flops'] / 1e9:7.1f} GFLOP  "
                      f"{frac:6.1%} of {peak_name} peak  warm-up {r['warmup_s']:5.1f} s  {r['gib']:5.2f} GiB"
                      + verdict, flush=True)

            for cl in (False, True):
                label = f"channels_last={cl}"
                results[label] = time_step(method, precision, cl, args.device, args.iters, args.quick)
                show(label, results[label], None if not cl else results["channels_last=False"]["s"])
            best_cl = min((False, True), key=lambda c: results[f"channels_last={c}"]["s"])
            base = results[f"channels_last={best_cl}"]["s"]
            for mode in args.compile_modes:
                if elapsed() > args.budget:
                    print(f"  {precision:4} compile {mode}: skipped (--budget {args.budget:.0f} s spent)")
                    continue
                label = f"cl={best_cl} compile {mode}" + (" (CUDA graphs)" if mode == "reduce-overhead" else "")
                try:
                    show(label, time_step(method, precision, best_cl, args.device, args.iters, args.quick, mode), base)
                except Exception as exc:  # noqa: BLE001 - report and go on: an option that fails is dropped
                    print(f"  {precision:4} {label}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")


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
    print(f"\n== segment_volume {size}x{size}x{slices} CT, U-Net width {width}")
    torch.manual_seed(0)
    vol = synthetic_ct(slices, size)
    net = UNet2D(base_width=width).eval()
    t = time.perf_counter()
    prepared = prepare_volume(vol, PreprocessConfig("ct"))
    t_pre = time.perf_counter() - t
    z, rows, cols = prepared.shape
    f = flops_per_slice(net, rows, cols) * z
    for precision in ("fp32", "bf16"):
        for bs in args.seg_batches:
            kw = dict(device=args.device, amp_bf16=precision == "bf16", batch_size=bs)
            segment_volume(synthetic_ct(4, size), net, PreprocessConfig("ct"), **kw)  # warm-up
            times = []
            for _ in range(2):
                sync(args.device)
                t = time.perf_counter()
                segment_volume(vol, net, PreprocessConfig("ct"), **kw)
                sync(args.device)
                times.append(time.perf_counter() - t)
            dt = min(times)
            peak = pk.get(precision if precision == "bf16" else "tf32", pk["fp32"])
            print(f"  {precision} batch {bs:3}: {dt:6.2f} s/volume (preprocessing alone {t_pre:.2f} s), "
                  f"network {f / 1e9:7.1f} GFLOP, {f / dt / 1e9 / peak:6.1%} of the {precision} peak "
                  f"over the whole call", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test of every section)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per configuration (default 10; quick 2)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--compile-modes", nargs="*", default=None,
                    help="torch.compile modes to try (default: default reduce-overhead on CUDA, none on CPU)")
    ap.add_argument("--sections", nargs="+", default=["step", "scaling", "segment"],
                    choices=["step", "scaling", "segment"])
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
    with contextlib.suppress(KeyboardInterrupt):
        if "step" in args.sections:
            step_section(args, pk)
        if "scaling" in args.sections:
            scaling_section(args)
        if "segment" in args.sections:
            segment_section(args, pk)
    pk2 = peaks(args.device)
    print("\nmatmul peaks again at the end (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in pk2.items())
          + f"; total {elapsed():.0f} s")


if __name__ == "__main__":
    main()
