"""The powered phantom study (issue 14): does CMEDL beat CT-only where the CT cue is weak, and not where
there is none?

Cohorts (each its own phantom, never the demo's): the *cue* cohort (one 20-50 mm tumour per patient,
balanced lung / mediastinal / chest-wall kinds, tumour +20-30 HU above the soft tissue it abuts) and
the *control* (random-sign 0-12 HU: no consistent CT cue). Arms: ct-only, cmedl and, when registered,
``cmedl-oracle`` (CMEDL whose teacher sees the patient's own MRI on the CT grid instead of pMRI: an upper
bound). Every arm runs with the same preset and steps for every seed; each (cohort, arm, seed) is one run
of ``cmedl study``, so an interrupted study continues where it stopped.

Prints, per cohort and tumour kind, mean DSC with a 95 % bootstrap CI and the paired differences against
ct-only (CI and Wilcoxon p), from each case's DSC averaged over the seeds.

    python benchmarks/phantom_study.py --out /tmp/powered                       # CPU: hours (see README)
    python benchmarks/phantom_study.py --out /tmp/powered --devices cuda:0 --runs-per-device 6   # one GPU

Expected if the implementation is faithful: cmedl > ct-only on mediastinal (and chest-wall) tumours of
the cue cohort, no difference on the control, and the oracle arm >= cmedl.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    from cmedl.data.phantom import PhantomOptions, generate_cohort
    from cmedl.demo.run import DEMO_FRACTIONS, DEMO_PRESETS
    from cmedl.evaluation.results_csv import read_results_csv
    from cmedl.evaluation.stats import bootstrap_mean_ci
    from cmedl.methods import method_names
    from cmedl.study import parse_study, run_study, write_tables

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cohorts", nargs="+", default=["cue", "control"], choices=["cue", "control"])
    ap.add_argument("--modality", default="ct", choices=["ct", "cbct"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-ct", type=int, default=72, help="patients of the student modality (42 %% test)")
    ap.add_argument("--n-mr", type=int, default=20)
    ap.add_argument("--size", default="112x112x32", help="X x Y x Z voxels")
    ap.add_argument("--cohort-seed", type=int, default=7)
    ap.add_argument("--config", default=None, help="training preset (default: the demo's for the modality)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (repeatable)")
    ap.add_argument("--devices", default="cpu", help="cpu or cuda:0[,cuda:1...]")
    ap.add_argument("--runs-per-device", type=int, default=1)
    args = ap.parse_args()

    t0 = time.time()
    nx, ny, nz = (int(v) for v in args.size.split("x"))
    arms = {"ct-only": "ct-only", "cmedl": "cmedl"}
    if "cmedl-oracle" in method_names():
        arms["cmedl-oracle"] = "cmedl-oracle"
    else:
        print("(cmedl-oracle is not registered: the oracle arm is left out)")
    config = args.config or DEMO_PRESETS[args.modality]
    spec = parse_study({
        "name": "phantom-powered", "config": config, "seeds": args.seeds,
        "set": {"data.modality": args.modality},
        "families": {"arms": {"reference": "ct-only", "runs": {k: {"method": m} for k, m in arms.items()}}},
    })
    summary = []
    for cohort in args.cohorts:
        options = PhantomOptions(paired_oracle=True) if cohort == "cue" else PhantomOptions.control(paired_oracle=True)
        data = args.out / cohort / "phantom" / "manifest.json"
        if not data.exists():
            counts = {"n_ct": args.n_ct, "n_cbct": 0} if args.modality == "ct" else {"n_ct": 0, "n_cbct": args.n_ct}
            generate_cohort(data.parent, n_mr=args.n_mr, seed=args.cohort_seed, shape=(nz, ny, nx),
                            fractions=DEMO_FRACTIONS, options=options, **counts)
        devices = [d.strip() for d in args.devices.split(",")]
        run_study(spec, data, args.out / cohort, devices=devices, runs_per_device=args.runs_per_device,
                  overrides=args.set)
        print(write_tables(spec, args.out / cohort, data))
        per_arm = {a: read_results_csv(args.out / cohort / "tables" / "arms" / f"{a}.csv") for a in arms}
        kinds = sorted({str(r["tumour_kind"]) for r in per_arm["ct-only"]})
        for kind in [*kinds, "all"]:
            cells = []
            for arm, rows in per_arm.items():
                dsc = [float(r["dsc"]) for r in rows if kind == "all" or r["tumour_kind"] == kind]
                ci = bootstrap_mean_ci(dsc)
                cells.append(f"{arm} {ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
            summary.append(f"{cohort:8s} {kind:12s} " + "   ".join(cells))
    print("\nmean DSC per arm [95 % bootstrap CI over cases; each case averaged over seeds "
          f"{args.seeds}]:")
    print("\n".join(summary))
    print(f"\nstudy wall time {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
