"""Time and peak memory of the contextual loss (forward + backward) at the papers' feature sizes.

The papers compute it on VGG19 conv3_3 / conv3_4 (64x64x256) and conv4_1 (32x32x512) of 256 px
images, batch 2. For each size this prints the time per forward+backward, the peak memory above the
inputs, that peak as a multiple of one ``B x N x M`` float32 affinity matrix, and the same with
``max_positions`` sampling. CPU peak memory is the process's peak RSS growth, measured in a fresh
subprocess per case (so cases do not see each other's peaks); on CUDA it is
``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_contextual.py [--device cpu|cuda] [--repeats 3] [--threads N]

``s/iter`` is wall time (best of the repeats); ``cpu s`` is process CPU time, a steadier figure on a
shared machine (with ``--threads 1`` it is the work itself, without thread-pool spinning).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from cmedl.losses import contextual_loss
from cmedl.losses.contextual import reference_contextual_similarity

# (label, channels, height, width, max_positions, plain-autograd reference instead of cmedl's)
CASES: list[tuple[str, int, int, int, int | None, bool]] = [
    ("conv3_x 64x64x256 exact", 256, 64, 64, None, False),
    ("conv4_1 32x32x512 exact", 512, 32, 32, None, False),
    ("conv3_x 64x64x256 plain autograd", 256, 64, 64, None, True),
    ("conv4_1 32x32x512 plain autograd", 512, 32, 32, None, True),
    ("conv3_x 64x64x256 sampled 1024", 256, 64, 64, 1024, False),
    ("128x128x256 sampled 4096 (default cap)", 256, 128, 128, 4096, False),
]
BATCH = 2
MiB = 2.0**20


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def run_case(index: int, device: str, repeats: int) -> dict[str, float]:
    """One case in this process: returns seconds per fwd+bwd and peak bytes above the inputs."""
    _, c, h, w, max_pos, reference = CASES[index]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, c, h, w, generator=gen).to(device).requires_grad_(True)
    y = torch.randn(BATCH, c, h, w, generator=gen).to(device)
    sample_gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x.grad = None
        if reference:
            (-torch.log(reference_contextual_similarity(x, y, 0.5))).mean().backward()
        else:
            contextual_loss(x, y, 0.5, max_positions=max_pos, generator=sample_gen).backward()

    step()  # warm-up (allocator, kernels); also sets x.grad so it is in the baseline
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_now_bytes()
    times, cpu_times = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"seconds": min(times), "cpu_seconds": min(cpu_times), "peak_bytes": float(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.device, args.repeats)))
        return

    threads = torch.get_num_threads()
    print(f"contextual loss fwd+bwd, batch {BATCH}, device {args.device}, torch threads {threads}")
    print(
        f"{'case':40s} {'N':>6s} {'s/iter':>8s} {'cpu s':>8s} {'peak MiB':>9s} {'matrix MiB':>10s} "
        f"{'peak/matrix':>11s}"
    )
    results = {}
    for i, (label, _c, h, w, max_pos, _ref) in enumerate(CASES):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--case",
                str(i),
                "--device",
                args.device,
                "--repeats",
                str(args.repeats),
                "--threads",
                str(threads),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        n = h * w if max_pos is None else min(h * w, max_pos)
        matrix = BATCH * n * n * 4
        results[label] = res
        print(
            f"{label:40s} {n:6d} {res['seconds']:8.3f} {res['cpu_seconds']:8.3f} "
            f"{res['peak_bytes'] / MiB:9.0f} "
            f"{matrix / MiB:10.0f} {res['peak_bytes'] / matrix:11.2f}"
        )
    paper = ("conv3_x 64x64x256 exact", "conv3_x 64x64x256 exact", "conv4_1 32x32x512 exact")
    total_s = sum(results[k]["seconds"] for k in paper)
    print(
        f"papers' three layers (conv3_3 + conv3_4 + conv4_1), batch {BATCH}: {total_s:.3f} s/iter"
    )
    for size in ("conv3_x 64x64x256", "conv4_1 32x32x512"):
        ours, ref = results[f"{size} exact"], results[f"{size} plain autograd"]
        print(
            f"{size}: hand-written backward vs plain autograd: "
            f"{ref['seconds'] / ours['seconds']:.1f}x faster, "
            f"{ref['peak_bytes'] / max(ours['peak_bytes'], 1.0):.1f}x less peak memory"
        )
    exact, sampled = results[paper[0]], results["conv3_x 64x64x256 sampled 1024"]
    print(
        f"sampling 4096 -> 1024 positions on 64x64: {exact['seconds'] / sampled['seconds']:.1f}x faster, "
        f"{exact['peak_bytes'] / max(sampled['peak_bytes'], 1.0):.1f}x less peak memory"
    )


if __name__ == "__main__":
    main()
