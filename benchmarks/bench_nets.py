"""Benchmark of cmedl.nets: parameters, FLOPs and CPU forward+backward time of every network.

Prints one table row per (network, setting): parameter count, GFLOP of one forward+backward
(counted with ``torch.utils.flop_counter``), median wall time over ``--repeats`` runs after a
warm-up, and the achieved GFLOP/s as a fraction of this machine's fp32 matmul rate measured in
the same run (a 2048^3 matmul). Settings: the papers' size (256x256, batch 2, paper widths) and
the CPU demo size (64x64, batch 8, width 16; see ``DEMO_WIDTH`` for DenseFCN57). Run: ``python benchmarks/bench_nets.py [--repeats 3] [--threads 1,2] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import matmul_peak, median_time

from cmedl.nets import PatchDiscriminator, ResnetGenerator, build_segmentation_net, count_parameters

#: demo widths: 16 = 1/4 of the papers' 64. DenseFCN57's base_width is its growth rate (paper 12),
#: so the same 1/4 scaling gives growth 3; we use 4 (base_width 16 would be 1.3x the paper's net).
DEMO_WIDTH = {"unet": 16, "densefcn57": 4, "mrrn": 16, "generator": 16, "discriminator": 16}
NETS_2D = ("unet", "densefcn57", "mrrn")


def build(name: str, width: int | None) -> torch.nn.Module:
    if name == "generator":
        return ResnetGenerator(base_width=width or 64)
    if name == "discriminator":
        return PatchDiscriminator(base_width=width or 64)
    return build_segmentation_net(name, base_width=width)


def step_fn(net: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        net.zero_grad(set_to_none=True)
        out = net(x)
        out.float().square().mean().backward()

    return step


def count_gflop(step: Callable[[], None]) -> float:
    with FlopCounterMode(display=False) as fc:
        step()
    return fc.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        default=str(torch.get_num_threads()),
        help="comma-separated intra-op thread counts to run, e.g. 1,2",
    )
    parser.add_argument("--quick", action="store_true", help="demo setting only")
    args = parser.parse_args()
    for threads in (int(t) for t in args.threads.split(",")):
        run(threads, args.repeats, args.quick)


def run(threads: int, repeats: int, quick: bool) -> None:
    """Print the table for one thread count."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    peak = matmul_peak(n=2048, reps=3)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {threads} thread(s), load average {load:.1f} (other processes)"
    )
    print(f"fp32 matmul rate: {peak:.1f} GFLOP/s (2048^3)\n")
    settings = [("demo 64x64 b8", 64, 8, True)]
    if not quick:
        settings.insert(0, ("paper 256x256 b2", 256, 2, False))
    header = f"{'network':<14}{'setting':<18}{'width':>6}{'params':>13}{'GFLOP':>9}{'s/step':>9}{'GFLOP/s':>9}{'% peak':>8}"
    print(header)
    print("-" * len(header))
    for label, size, batch, demo in settings:
        for name in (*NETS_2D, "generator", "discriminator"):
            width = DEMO_WIDTH[name] if demo else None
            net = build(name, width).train()
            shown_width = width if width is not None else getattr(net, "base_width", 64)
            x = torch.randn(batch, 1, size, size)
            step = step_fn(net, x)
            gflop = count_gflop(step)
            sec = median_time(step, repeats)
            rate = gflop / sec
            print(
                f"{name:<14}{label:<18}{shown_width:>6}{count_parameters(net):>13,}{gflop:>9.1f}"
                f"{sec:>9.3f}{rate:>9.1f}{100 * rate / peak:>7.0f}%"
            )
        print()


if __name__ == "__main__":
    main()
