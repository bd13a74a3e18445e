"""Benchmark of :mod:`cmedl.nets.conv3d`: single-volume 3D convolutions on the CPU, split vs plain.

ATen runs a batch-1 float32 3D convolution with ``N * C * D * H <= 20480`` on its slow im2col path;
:func:`cmedl.nets.conv3d.conv3d` splits the volume into a batch of two halves (with halos) that oneDNN
takes. Prints, for single layers (3x3x3, forward + backward) and for whole training steps and forward
passes of the 3D networks at batch 1 (the teacher-student presets and the 3D U-Net): milliseconds
plain and split, the speed-up, and the split's achieved GFLOP/s as a share of this machine's fp32
matmul peak (FLOPs by ``torch.utils.flop_counter``; the split's halo work is not counted).

    python benchmarks/bench_conv3d.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from _common import matmul_peak, median_time
from torch.utils.flop_counter import FlopCounterMode

from cmedl.nets.conv3d import conv3d
from cmedl.nets.fastconv import fast_path_disabled
from cmedl.nets.ts_unet3d import build_ts_unet3d
from cmedl.nets.unet3d import UNet3D


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def row(label: str, fn, repeats: int, peak: float) -> None:
    with fast_path_disabled():
        plain = median_time(fn, repeats)
        work = flops(fn)
    split = median_time(fn, repeats)
    print(f"{label:<40}{1e3 * plain:>10.1f}{1e3 * split:>10.1f}{plain / split:>8.2f}x"
          f"{work / split / 1e9:>9.1f}{100 * work / split / 1e9 / peak:>7.1f}%")


def layer(c: int, shape: tuple[int, int, int], stride: int = 1):
    x = torch.randn(1, c, *shape, requires_grad=True)
    w = torch.randn(c * stride, c, 3, 3, 3, requires_grad=True)

    def fn() -> None:
        conv3d(x, w, None, stride, 1).sum().backward()

    return fn


def net_step(net: torch.nn.Module, x: torch.Tensor, train: bool):
    net.train(train)

    def fn() -> None:
        if train:
            out = net(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            out.square().mean().backward()
        else:
            with torch.no_grad():
                net(x)

    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {load:.1f}, "
          f"fp32 matmul peak {peak:.0f} GFLOP/s\n")
    print(f"{'':<40}{'plain ms':>10}{'split ms':>10}{'speed-up':>9}{'GFLOP/s':>9}{'peak':>8}")
    for c, shape, stride in [(8, (32, 64, 64), 1), (8, (32, 64, 64), 2), (16, (16, 32, 32), 1), (32, (8, 16, 16), 1),
                             (64, (4, 8, 8), 1)]:
        row(f"conv 3x3x3 s{stride} {c}ch {'x'.join(map(str, shape))} fwd+bwd", layer(c, shape, stride),
            args.repeats, peak)
    nets = [("ts student w8 32x64x64 (cpu-ts)", build_ts_unet3d(1, base_width=8, levels=4), (1, 1, 32, 64, 64)),
            ("ts-student-do w8 32x64x64", build_ts_unet3d(1, base_width=8, levels=4, dual_output=True),
             (1, 1, 32, 64, 64)),
            ("box teacher w8 24x48x48 (cpu-ts-teacher)", build_ts_unet3d(2, base_width=8, levels=3), (1, 2, 24, 48, 48)),
            ("unet3d w8 16x64x64", UNet3D(1, 1, base_width=8), (1, 1, 16, 64, 64))]
    for label, net, shape in nets:
        x = torch.randn(*shape)
        row(f"{label} step", net_step(net, x, True), args.repeats, peak)
        row(f"{label} forward", net_step(net, x, False), args.repeats, peak)
    # a sanity line: the split equals the plain convolution
    x, w = torch.randn(1, 8, 32, 64, 64), torch.randn(8, 8, 3, 3, 3)
    err = (conv3d(x, w, None, 1, 1) - F.conv3d(x, w, None, 1, 1)).abs().max().item()
    print(f"\nmax |split - plain| on a [1, 8, 32, 64, 64] layer: {err:.1e}")


if __name__ == "__main__":
    main()
