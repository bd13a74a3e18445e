"""``cmedl demo``: the whole CMEDL study on the built-in phantom cohort, in minutes on a CPU.

Steps (each writes under ``out_dir``):

1. ``phantom/``      an unpaired cohort: CT patients and *other* MRI patients, split by patient.
2. ``ct-only/``      the CT-only baseline (the student trained alone) with the ``cpu-demo`` preset.
3. ``cmedl/``        CMEDL (CycleGAN + contextual loss, MRI teacher, CT student, hint loss), same preset.
4. ``<method>/pred`` the student of each run segments the test-split CTs (masks on the CT grid).
5. ``<method>.csv``  per-case DSC, surface DSC (tau from the config), HD95 ... against the expert masks.
6. ``comparison.csv`` + printed table: mean ± SD per method and the paired Wilcoxon p-value.
7. ``demo_slices.png`` test slices: CT, pMRI, expert contour and both methods' contours.

The test split is used only in steps 4-7; training uses train (and val for early stopping).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmedl.data.manifest import Manifest
from cmedl.errors import InputError
from cmedl.io import atomic_path

METHODS = ("ct-only", "cmedl")


@dataclass
class DemoResult:
    out_dir: Path
    table: str
    p_value: float
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    figure: Path | None = None


def run_demo(
    out_dir: str | Path = "cmedl-demo",
    *,
    config: str = "cpu-demo",
    n_ct: int = 30,
    n_mr: int = 12,
    shape: tuple[int, int, int] = (32, 112, 112),
    seed: int = 0,
    overrides: list[str] | None = None,
    arch: str | None = None,
    progress: bool = True,
    log=print,
) -> DemoResult:
    """Run the demo study and return the comparison table (also printed through ``log``).

    Args:
        out_dir: everything is written here; an existing demo folder is reused step by step
            (phantom kept, finished runs resumed/kept), so an interrupted demo continues.
        config: training preset name or YAML file (both methods use it).
        n_ct, n_mr: phantom patients (CT and, separately, MRI).
        shape: phantom voxels (z, y, x).
        seed: seeds the phantom, the splits and the training.
        overrides: extra ``key=value`` config overrides (e.g. ``training.max_epochs=2``).
        arch: segmentation architecture for teacher and student (``unet``, ``densefcn57``, ``mrrn``).
    """
    from cmedl.data.phantom import generate_cohort
    from cmedl.evaluation.compare import compare_results
    from cmedl.evaluation.evaluate import evaluate_folders, write_results_csv
    from cmedl.inference.segment import segment_files
    from cmedl.training.config import load_config
    from cmedl.training.trainer import train

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    _check_demo_parameters(out / "demo.json", {
        "config": str(config), "n_ct": n_ct, "n_mr": n_mr, "shape_zyx": list(shape), "seed": seed,
        "overrides": list(overrides or []), "arch": arch,
    })

    # 1. phantom cohort -------------------------------------------------------------------
    manifest_path = out / "phantom" / "manifest.json"
    if manifest_path.exists():
        log(f"[1/5] phantom cohort: reusing {manifest_path}")
    else:
        log(f"[1/5] phantom cohort: {n_ct} CT + {n_mr} MRI patients (unpaired), {shape[2]}x{shape[1]}x{shape[0]} voxels (XxYxZ)")
        generate_cohort(out / "phantom", n_ct=n_ct, n_cbct=0, n_mr=n_mr, seed=seed, shape=shape, progress=progress)
    manifest = Manifest.load(manifest_path)
    test_cases = manifest.select(split="test", modality="ct", labelled=True)
    if not test_cases:
        raise InputError("the phantom manifest has no labelled CT test cases", manifest_path)

    # 2-3. training -----------------------------------------------------------------------
    base_overrides = [f"training.seed={seed}", *(overrides or [])]
    if arch:
        base_overrides.append(f"model.arch={arch}")
    checkpoints: dict[str, Path] = {}
    tau = 2.0
    for k, method in enumerate(METHODS, start=2):
        cfg = load_config(config, [*base_overrides, f"training.method={method}"])
        tau = cfg.evaluation.surface_tolerance_mm
        run_dir = out / method
        done = run_dir / "best.pt"
        if (run_dir / "DONE").exists() and done.exists():
            log(f"[{k}/5] {method}: reusing finished run {run_dir}")
        else:
            resume = (run_dir / "last.pt").exists()
            log(f"[{k}/5] training {method} ({config}){' - resuming' if resume else ''}")
            result = train(cfg, manifest_path, None, run_dir, resume=resume)
            with atomic_path(run_dir / "DONE") as tmp:
                tmp.write_text(f"best epoch {result.best_epoch}, {result.seconds:.0f} s\n")
            log(f"      {method}: {result.epochs} epochs in {result.seconds:.0f} s, best val Dice {result.best_val_dice:.3f}")
        checkpoints[method] = done

    # 4-5. segment the test split and evaluate -----------------------------------------------
    log(f"[4/5] segmenting {len(test_cases)} test CTs with each student and evaluating (tau = {tau} mm)")
    csvs = []
    inputs = [manifest.image_path(c) for c in test_cases]
    # references: the labelled CT test cases only (the manifest also lists the MRI cohort)
    ref_manifest = Manifest(test_cases, name="phantom-ct-test", seed=manifest.seed).save(out / "phantom" / "test_ct.json")
    for method in METHODS:
        pred_dir = out / method / "pred"
        segment_files(checkpoints[method], inputs, pred_dir, largest_component=False, progress=False)
        rows = evaluate_folders(pred_dir, ref_manifest, tolerance_mm=tau)
        csvs.append(write_results_csv(rows, out / f"{method}.csv"))

    # 6. comparison table ----------------------------------------------------------------------
    comparison = compare_results(csvs, metric="dsc", names=list(METHODS))
    comparison_csv = out / "comparison.csv"
    _write_comparison(comparison, comparison_csv)
    table = _format_comparison(comparison)
    p = comparison.p_values.get("cmedl", float("nan"))

    # 7. figure ----------------------------------------------------------------------------------
    log("[5/5] figure of test slices")
    figure = out / "demo_slices.png"
    try:
        save_demo_figure(manifest, test_cases, out, checkpoints["cmedl"], figure)
    except Exception as exc:  # the figure is a convenience: never lose the numbers for it
        log(f"      (figure skipped: {exc})")
        figure = None

    seconds = time.perf_counter() - t0
    log("")
    log(table)
    log(f"\nWilcoxon signed-rank (DSC, CMEDL vs CT-only, {len(comparison.cases)} test cases): p = {p:.3g}")
    log(f"demo finished in {seconds / 60:.1f} min; results in {out}")
    summaries = {
        m: {k: float(s.mean) for k, s in comparison.summaries.get(m, {}).items()} for m in comparison.methods
    }
    return DemoResult(out, table, p, summaries, seconds, figure)


def _check_demo_parameters(path: Path, params: dict) -> None:
    """Record the demo's parameters; refuse to reuse a folder made with other ones (stale results)."""
    import json

    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != params:
            changed = sorted(k for k in params if old is None or old.get(k) != params[k])
            raise InputError(
                f"this demo folder was made with other parameters ({', '.join(changed)}); "
                "use a new --out folder or delete this one", path.parent,
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(params, indent=2) + "\n")


def _format_comparison(comparison) -> str:
    from cmedl.evaluation.evaluate import format_text_table

    return format_text_table(comparison.headers(), comparison.rows())


def _write_comparison(comparison, path: Path) -> None:
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(comparison.headers())
        writer.writerows(comparison.rows())


def save_demo_figure(manifest: Manifest, cases, out: Path, cmedl_ckpt: Path, path: Path, n: int = 4) -> Path:
    """Test slices (largest tumour area): CT, pMRI, expert (green), CT-only (blue), CMEDL (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmedl.inference.translate import translate_volume
    from cmedl.io import read_volume
    from cmedl.methods import build_generator_from_checkpoint
    from cmedl.training.checkpoint import load_checkpoint

    gen, pre = build_generator_from_checkpoint(load_checkpoint(cmedl_ckpt), "ct2mr", source=cmedl_ckpt)
    cases = list(cases)[:n]
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        ct = read_volume(manifest.image_path(case))
        ref = read_volume(manifest.label_path(case)).array > 0
        k = int(np.argmax(ref.sum(axis=(1, 2))))
        pmri = translate_volume(ct, gen, pre).array[k]
        preds = {}
        for method in METHODS:
            pred_path = out / method / "pred" / f"{case.id}.nii.gz"
            preds[method] = read_volume(pred_path).array[k] > 0
        row[0].imshow(ct.array[k], cmap="gray", vmin=-1000, vmax=400)
        row[0].set_title(f"{case.id} CT (slice {k})", fontsize=8)
        row[1].imshow(pmri, cmap="gray")
        row[1].set_title("pMRI (CMEDL generator)", fontsize=8)
        row[2].imshow(ct.array[k], cmap="gray", vmin=-160, vmax=240)
        row[2].set_title("mediastinal window: expert / CT-only / CMEDL", fontsize=8)
        for mask, colour in ((ref[k], "lime"), (preds["ct-only"], "deepskyblue"), (preds["cmedl"], "red")):
            if mask.any():
                row[2].contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
