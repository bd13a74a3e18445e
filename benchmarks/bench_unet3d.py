"""Benchmark of the 3D U-Net baseline (``ct-only-3d``): CPU training step and sliding-window inference.

Prints, for the paper setting (width 32, 32x128x128 patches, batch 2) and the small CPU setting
(width 8, 16x64x64, batch 2): parameters, forward+backward time per batch and voxels/s; then the
whole-volume sliding-window inference time (``cmedl.nets.predict.predict_volume_3d``: 25 %
overlap, Gaussian blending, BN folded) of a 64x256x256 working volume. Median of ``--repeats``
after one warm-up. Run: ``python benchmarks/bench_unet3d.py [--threads 1] [--repeats 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from _common import median_time

from cmedl.nets import build_segmentation_net, count_parameters
from cmedl.nets.predict import predict_volume_3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small setting only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {load:.1f} (other processes)\n")
    settings = [("cpu 16x64x64 b2", 8, (16, 64, 64))]
    if not args.quick:
        settings.insert(0, ("paper 32x128x128 b2", 32, (32, 128, 128)))
    print(f"{'setting':<22}{'width':>6}{'params':>12}{'s/step':>9}{'Mvox/s':>8}{'infer 64x256x256 s':>20}")
    for label, width, patch in settings:
        net = build_segmentation_net("unet3d", base_width=width).train()
        x = torch.randn(2, 1, *patch)

        def step(net: torch.nn.Module = net, x: torch.Tensor = x) -> None:
            net.zero_grad(set_to_none=True)
            net(x).square().mean().backward()

        sec = median_time(step, args.repeats)
        volume = np.random.default_rng(0).uniform(-1, 1, (64, 256, 256)).astype(np.float32)
        net.eval()
        infer = median_time(lambda n=net, v=volume, p=patch: predict_volume_3d(n, v, p), max(1, args.repeats - 1))
        print(f"{label:<22}{width:>6}{count_parameters(net):>12,}{sec:>9.3f}{2 * np.prod(patch) / sec / 1e6:>8.2f}"
              f"{infer:>20.2f}")


if __name__ == "__main__":
    main()
