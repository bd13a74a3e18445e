"""Run-to-run spread from dropout draws alone: ct-only with one seed (same initial weights, same batches) and
different dropout streams.

After the first training step the script draws ``k`` numbers from the global torch RNG, so every later dropout
mask differs and nothing else does (the loaders seed their samples from (seed, epoch, index), not from the
global RNG). Stream 0 is the plain run and equals ``cmedl train --seed S`` bit for bit. This is the noise floor
for comparisons such as CMEDL at ``lambda_hint`` 0 against ct-only, whose students differ only in their
dropout draws (``tests/test_training.py::test_cmedl_without_hint_trains_exactly_the_ct_only_student``).

    python benchmarks/compare_training_length.py --out /tmp/dev --methods ct-only --seeds 0   # makes the cohort
    python benchmarks/dropout_noise.py /tmp/dev/cohort/manifest.json /tmp/dev/runs 0:0 0:1 0:2 1:1

Each ``SEED:K`` trains ``cpu-demo`` ct-only for 16 epochs (~90 s on 2 CPU cores) and prints the last-epoch and
last-5-epoch whole-volume validation Dice. Development cohorts only, never a test split.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from cmedl.methods import load_config
from cmedl.training import train
from compare_training_length import read_curve as val_dice  # per-epoch val Dice from a run's log.csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", help="SEED:K (K numbers drawn from the global RNG after step 1)")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--config", default="cpu-demo")
    args = ap.parse_args()
    for spec in args.runs:
        seed, k = (int(v) for v in spec.split(":"))
        run = args.out / f"ct-only_seed{seed}_stream{k}"
        if len(val_dice(run)) < args.epochs:
            cfg = load_config(args.config, [
                "training.method=ct-only", f"training.seed={seed}", f"training.max_epochs={args.epochs}",
                f"training.patience={args.epochs}", "training.device=cpu", "training.progress=false"])
            burned = [False]

            def burn(step: int, losses: dict[str, float]) -> None:
                if not burned[0]:
                    torch.rand(k)
                    burned[0] = True

            train(cfg, args.manifest, out_dir=run, step_callback=burn)
        dice = val_dice(run)
        print(f"seed {seed} stream {k}: last val Dice {dice[-1]:.3f}, last-5 mean {statistics.mean(dice[-5:]):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
