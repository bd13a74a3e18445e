"""Benchmark: time to write a phantom cohort (target: 20 CT + 20 CBCT + 10 MRI at 128x128x48 in
<= 60 s on 2 cores, files included).

Usage: ``python benchmarks/bench_phantom.py [--ct 20 --cbct 20 --mr 10 --workers 2]``.
Prints the wall time, seconds per case, and the single-case time per modality in this process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cmedl.data.manifest import Manifest
from cmedl.data.phantom import generate_case, generate_cohort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", type=int, default=20)
    ap.add_argument("--cbct", type=int, default=20)
    ap.add_argument("--mr", type=int, default=10)
    ap.add_argument("--size", default="128x128x48", help="X x Y x Z voxels")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    nx, ny, nz = (int(v) for v in args.size.split("x"))
    shape = (nz, ny, nx)

    for mod in ("ct", "cbct", "mr"):
        generate_case(mod, 0, 0, shape)  # warm-up (imports, caches)
        t = time.perf_counter()
        for k in range(3):
            generate_case(mod, k, 0, shape)
        print(
            f"single {mod:4s} case in-process (no writing): {(time.perf_counter() - t) / 3:.3f} s"
        )

    n = args.ct + args.cbct + args.mr
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = generate_cohort(
            Path(tmp) / "cohort",
            args.ct,
            args.cbct,
            args.mr,
            seed=0,
            shape=shape,
            workers=args.workers,
        )
        dt = time.perf_counter() - t
        m = Manifest.load(path)
        size_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*.nii.gz")) / 1e6
    print(
        f"cohort {args.ct} CT + {args.cbct} CBCT + {args.mr} MR at {nx}x{ny}x{nz}, {args.workers} workers: "
        f"{dt:.1f} s total, {dt / n:.2f} s/case ({len(m.cases)} cases, {size_mb:.1f} MB written); "
        f"target <= 60 s -> {'OK' if dt <= 60 else 'SLOW'} ({dt / 60:.2f} of budget)"
    )


if __name__ == "__main__":
    main()
