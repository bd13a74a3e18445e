"""How long must a method train? Per-epoch whole-volume validation Dice of several methods and seeds.

Builds (or reuses) a *development* phantom cohort that has no test split (train 70 % / val 30 %), trains
every ``method x seed`` with a preset for ``--epochs`` epochs without early stopping (patience =
epochs), several runs at once, and prints the validation curve of each run (``val_dice`` of
``log.csv``: the student segments every validation scan whole after each epoch) plus a summary: best
epoch, best and last Dice, and the mean of the last five epochs (the least noisy figure). Decisions
about presets are made on this cohort, never on a test split.

    python benchmarks/compare_training_length.py --out /tmp/length --epochs 60 \\
        --methods ct-only cmedl --seeds 0 1 --device cuda --jobs 4 --set data.num_workers=3

On 2 CPU cores a 60-epoch cmedl run takes ~35 min; on one GPU all four runs above take minutes.
Runs that are cut short (``--timeout``) are reported up to their last finished epoch.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path


def make_cohort(root: Path, n_ct: int, n_mr: int, seed: int, size: str, control: bool = False,
                paired_oracle: bool = False) -> Path:
    """The development cohort (reused if ``root/cohort`` holds one); ``paired_oracle`` also renders each CT
    patient's own MRI on the CT grid (needed by ``cmedl-oracle``)."""
    from cmedl.data.phantom import PhantomOptions, generate_cohort

    manifest = root / "cohort" / "manifest.json"
    if manifest.is_file():
        return manifest
    nx, ny, nz = (int(v) for v in size.split("x"))
    return generate_cohort(root / "cohort", n_ct=n_ct, n_cbct=0, n_mr=n_mr, seed=seed, shape=(nz, ny, nx),
                           fractions=(0.7, 0.3, 0.0), workers=4,
                           options=(PhantomOptions.control if control else PhantomOptions)(paired_oracle=paired_oracle))


def read_curve(run: Path) -> list[float]:
    log = run / "log.csv"
    if not log.is_file():
        return []
    with log.open() as f:
        return [float(row["val_dice"]) for row in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="cpu-demo")
    ap.add_argument("--methods", nargs="+", default=["ct-only", "cmedl"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before unfinished runs are stopped")
    ap.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--cohort-seed", type=int, default=123)
    ap.add_argument("--ct", type=int, default=30)
    ap.add_argument("--mr", type=int, default=12)
    ap.add_argument("--size", default="112x112x32", help="X x Y x Z voxels")
    ap.add_argument("--control", action="store_true",
                    help="the negative-control cohort (random-sign 0-12 HU) instead of the cue cohort")
    args = ap.parse_args()

    t0 = time.time()
    manifest = make_cohort(args.out, args.ct, args.mr, args.cohort_seed, args.size, args.control,
                           paired_oracle="cmedl-oracle" in args.methods)
    print(f"cohort {manifest} ready after {time.time() - t0:.0f} s", flush=True)
    runs = [(m, s, args.out / "runs" / f"{m}_seed{s}") for m in args.methods for s in args.seeds]
    pending = list(runs)
    active: list[tuple[subprocess.Popen, Path]] = []
    deadline = None if args.timeout is None else t0 + args.timeout
    while pending or active:
        while pending and len(active) < args.jobs:
            method, seed, run = pending.pop(0)
            cmd = [sys.executable, "-m", "cmedl", "train", "--config", args.config, "--data", str(manifest),
                   "--method", method, "--seed", str(seed), "--out", str(run), "--device", args.device, "-q",
                   "--set", f"training.max_epochs={args.epochs}", "--set", f"training.patience={args.epochs}"]
            for s in args.set:
                cmd += ["--set", s]
            resume = (run / "last.pt").is_file()
            run.mkdir(parents=True, exist_ok=True)
            log = (run / "stdout.txt").open("a")
            active.append((subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=log,
                                            stderr=subprocess.STDOUT), run))
        time.sleep(5)
        for proc, run in list(active):
            if proc.poll() is not None:
                active.remove((proc, run))
                print(f"{run.name}: exit {proc.returncode}, {len(read_curve(run))} epochs, "
                      f"{time.time() - t0:.0f} s", flush=True)
        if deadline is not None and time.time() > deadline:
            for proc, run in active:
                proc.terminate()
                print(f"{run.name}: stopped at the time limit after {len(read_curve(run))} epochs", flush=True)
            for proc, _ in active:
                proc.wait()
            break

    curves = {run.name: read_curve(run) for _, _, run in runs}
    n = max((len(c) for c in curves.values()), default=0)
    print("\nvalidation Dice per epoch (mean over the validation scans)")
    print("epoch " + " ".join(f"{k:>18s}" for k in curves))
    for e in range(n):
        print(f"{e + 1:5d} " + " ".join(f"{c[e]:18.3f}" if e < len(c) else f"{'':18s}" for c in curves.values()))
    print(f"\n{'run':24s} {'epochs':>6s} {'best':>6s} {'@epoch':>6s} {'last':>6s} {'last-5 mean':>11s}")
    for k, c in curves.items():
        if c:
            best = max(range(len(c)), key=c.__getitem__)
            print(f"{k:24s} {len(c):6d} {c[best]:6.3f} {best + 1:6d} {c[-1]:6.3f} {statistics.mean(c[-5:]):11.3f}")
    # per method, mean over seeds at each epoch they all reached
    for method in args.methods:
        cs = [curves[run.name] for m, _, run in runs if m == method and curves[run.name]]
        if cs:
            k = min(len(c) for c in cs)
            means = [statistics.mean(c[e] for c in cs) for e in range(k)]
            marks = [e for e in (10, 14, 20, 30, 40, 50, 60, 80, 100) if e <= k]
            print(f"{method:10s} mean over {len(cs)} seed(s): " +
                  ", ".join(f"epoch {e}: {statistics.mean(means[max(0, e - 3):e]):.3f}" for e in marks)
                  + " (each the mean of that epoch and the two before)")


if __name__ == "__main__":
    main()
