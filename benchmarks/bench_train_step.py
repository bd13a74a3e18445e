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

Each size runs CMEDL with each translator of ``--translators`` (default ``cyclegan drit unit``). At
``128`` the ``drit`` and ``unit`` sections keep their paper defaults (width 64; DRIT 6 generator
blocks, 3 + 1 content encoder blocks; UNIT 3 + 1 encoder and 1 + 3 generator blocks). At ``demo`` they
take :data:`DEMO_TRANSLATOR_WIDTHS` (width 16, fewer blocks, like the preset's CycleGAN) unless the
``cpu-demo`` preset has its own section for them. Each line is preceded by the parameter counts of
the translator's networks (shared blocks once).

Options: ``--precision fp32 bf16`` (autocast, reported beside fp32), ``--channels-last auto|true|false``
(``training.channels_last``; auto = the segmentation networks on CPU), ``--no-fast-conv`` (plain
``nn.Conv2d`` for the generators' single-channel 7x7 layers instead of :mod:`cmedl.nets.fastconv`),
``--profile`` (torch.profiler table of the ops that take the time), ``--iters``, ``--threads``,
``--ct-only`` (also time the ct-only step), ``--translators`` (which CMEDL translators), ``--default-malloc`` (without the glibc malloc tuning that
training applies on CPU, :func:`cmedl.devices.keep_freed_host_memory`), ``--device cuda`` (GPU; times with synchronisation, prints
the fraction of the measured fp32 and bf16 matmul peaks and the peak GPU memory). Example::

    python benchmarks/bench_train_step.py --sizes demo 128 --precision fp32 bf16 --iters 3
    python benchmarks/bench_train_step.py --sizes demo --translators drit unit
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

from cmedl.config import read_yaml, resolve_config_path
from cmedl.devices import keep_freed_host_memory
from cmedl.methods import build_method, load_config
from cmedl.methods.translators import TRANSLATORS
from cmedl.nets.fastconv import fast_path_disabled

#: the VAE translators at the demo size when the cpu-demo preset has no section for them: width 16 and
#: fewer residual blocks, as the preset's CycleGAN (16, 3 blocks; PatchGAN 16, 2 layers; lr 2e-4)
DEMO_TRANSLATOR_WIDTHS = {
    "drit": ["drit.gen_base_width=16", "drit.gen_n_blocks=3", "drit.content_private_blocks=1",
             "drit.content_shared_blocks=1", "drit.attr_base_width=16", "drit.disc_base_width=16",
             "drit.disc_n_layers=2", "drit.content_disc_layers=2", "drit.lr=2e-4", "drit.content_disc_lr=8e-5"],
    "unit": ["unit.gen_base_width=16", "unit.enc_private_blocks=1", "unit.enc_shared_blocks=1",
             "unit.gen_shared_blocks=1", "unit.gen_private_blocks=1", "unit.disc_base_width=16",
             "unit.disc_n_layers=2", "unit.lr=2e-4"],
}


def translator_parameters(m) -> str:
    """Parameter counts of the translator's networks (M), generators/encoders and discriminators, each
    parameter once (DRIT's and UNIT's two directions share blocks)."""
    seen: set[int] = set()
    groups = {"G+E": 0, "D": 0}
    for name, net in m.networks.items():
        if name in ("student_ct", "teacher_mr"):
            continue
        for p in net.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                groups["D" if name.startswith("d_") else "G+E"] += p.numel()
    per_net = ", ".join(f"{k} {sum(p.numel() for p in n.parameters()) / 1e6:.3f}" for k, n in m.networks.items()
                        if k not in ("student_ct", "teacher_mr"))
    return (f"translator params (M): generators+encoders {groups['G+E'] / 1e6:.3f}, discriminators "
            f"{groups['D'] / 1e6:.3f} ({per_net})")


def make_batch(method_name: str, b: int, p: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ct = torch.rand(b, 1, p, p, generator=g) * 2 - 1
    lab = (torch.rand(b, 1, p, p, generator=g) > 0.9).float()
    if method_name == "ct-only":
        return {"image": ct, "label": lab}
    return {"ct": ct, "ct_label": lab, "mr": torch.rand(b, 1, p, p, generator=g) * 2 - 1, "mr_label": lab,
            "mr_has_label": torch.ones(b, dtype=torch.bool)}


def bench(size: str, method_name: str, precision: str, channels_last: str, iters: int, profile: bool,
          peak: float, device: str = "cpu", bf16_peak: float = float("nan"), no_fast_conv: bool = False,
          translator: str = "cyclegan") -> float:
    """Time one configuration; returns the (possibly raised) fp32 peak used for the fraction."""
    preset, over = ("cpu-demo", []) if size == "demo" else ("paper-ct", [f"data.patch_size={size}"])
    over += [f"training.method={method_name}", f"training.precision={precision}", f"training.device={device}",
             f"training.channels_last={channels_last}"]
    if method_name == "cmedl":
        over.append(f"cmedl.translator={translator}")
        if size == "demo" and translator not in read_yaml(resolve_config_path(preset)):
            over += DEMO_TRANSLATOR_WIDTHS.get(translator, [])
    cfg = load_config(preset, over)
    torch.manual_seed(0)
    m = build_method(cfg, device)
    if method_name == "cmedl":
        print(f"{size:>5} {translator:8} {translator_parameters(m)}", flush=True)
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
    label = f"cmedl/{translator}" if method_name == "cmedl" else method_name
    print(f"{size:>5} {label:14} {precision:5} cl={channels_last} batch {b} {p}x{p}: "
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
    ap.add_argument("--translators", nargs="+", default=list(TRANSLATORS), choices=list(TRANSLATORS),
                    help="CMEDL translators to time (default: all)")
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
            for translator in args.translators:
                peak = bench(size, "cmedl", prec, args.channels_last, args.iters, args.profile, peak, dev, bf16_peak,
                             args.no_fast_conv, translator)
            if args.ct_only:
                peak = bench(size, "ct-only", prec, args.channels_last, args.iters, False, peak, dev, bf16_peak,
                             args.no_fast_conv)
    print(f"best fp32 matmul peak seen: {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
