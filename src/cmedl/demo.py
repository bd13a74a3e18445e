"""``cmedl demo``: the whole CMEDL study on the built-in phantom cohort, in minutes on a CPU.

Steps (each writes under ``out_dir``):

1. ``phantom/``      an unpaired cohort: CT patients and *other* MRI patients, split by patient.
2. ``ct-only/``      the CT-only baseline (the student trained alone) with the ``cpu-demo`` preset.
3. ``cmedl/``        CMEDL (CycleGAN + contextual loss, MRI teacher, CT student, hint loss), same preset
                     (``methods`` may name other registered methods; the first is the baseline).
4. ``<method>/pred`` each method's test-time model segments the test-split CTs (masks on the CT grid).
5. ``<method>.csv``  per-case DSC, surface DSC (tau from the config), HD95 ... against the expert masks.
6. ``comparison.csv`` + printed table: mean ± SD per method and the paired Wilcoxon p-value.
7. ``demo_slices.png`` test slices: CT, pMRI, expert contour and both methods' contours.

The test split is used only in steps 4-7; training uses train (and val for early stopping).

Everything that can be checked is checked before step 1: the method names, the configuration of every
method (preset, overrides, ``--arch``) and the output folder (:func:`cmedl.io.outputs.check_output_folder`:
not a file, writable). A folder whose earlier demo stopped before producing anything (no phantom
manifest, no run) takes the new parameters; one with results refuses other parameters (stale results).
A failed write (disk full) is one error line naming the file.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmedl.config import TrainConfig
from cmedl.data.manifest import Case, Manifest
from cmedl.data.phantom import generate_cohort
from cmedl.errors import InputError
from cmedl.evaluation.compare import Comparison, compare_results
from cmedl.evaluation.evaluate import evaluate_folders, format_text_table, write_results_csv
from cmedl.inference.segment import segment_files
from cmedl.inference.translate import translate_volume
from cmedl.io import atomic_path, read_volume
from cmedl.io.outputs import check_output_folder, writing
from cmedl.methods import build_generator_from_checkpoint, get_method, load_config
from cmedl.training import load_checkpoint, train

#: the papers' comparison: the CT-only baseline first (p-values are against it), then CMEDL
DEMO_METHODS = ("ct-only", "cmedl")


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
    methods: Sequence[str] = DEMO_METHODS,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo study and return the comparison table (also printed through ``log``).

    Args:
        out_dir: everything is written here; an existing demo folder is reused step by step
            (phantom kept, finished runs resumed/kept), so an interrupted demo continues.
        config: training preset name or YAML file (every method uses it).
        n_ct, n_mr: phantom patients (CT and, separately, MRI).
        shape: phantom voxels (z, y, x).
        seed: seeds the phantom, the splits and the training.
        overrides: extra ``key=value`` config overrides (e.g. ``training.max_epochs=2``).
        arch: segmentation architecture for teacher and student (``unet``, ``densefcn57``, ``mrrn``).
        methods: registered methods to compare, the baseline first (p-values are against it).
    """
    for name in methods:
        get_method(name, key="demo method")
    if len(methods) < 2:
        raise InputError(f"the demo compares at least two methods, got {list(methods)}")
    t0 = time.perf_counter()
    base = [f"training.seed={seed}", *(overrides or []), *([f"model.arch={arch}"] if arch else [])]
    configs = {m: load_config(config, [*base, f"training.method={m}"]) for m in methods}  # all before any work
    out = check_output_folder(out_dir, inputs=[config] if Path(config).is_file() else [])
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    _check_demo_parameters(out / "demo.json", {
        "config": str(config), "n_ct": n_ct, "n_mr": n_mr, "shape_zyx": list(shape), "seed": seed,
        "overrides": list(overrides or []), "arch": arch, **({} if tuple(methods) == DEMO_METHODS else
                                                            {"methods": list(methods)}),
    })
    steps = len(methods) + 3
    manifest, test_cases = _phantom_cohort(out, n_ct, n_mr, shape, seed, progress, steps, log)
    checkpoints, tau = _train_methods(out, manifest, config, configs, log)
    log(f"[{steps - 1}/{steps}] segmenting {len(test_cases)} test CTs with each method and evaluating "
        f"(tau = {tau} mm)")
    comparison = _segment_and_compare(out, manifest, test_cases, checkpoints, tau)
    table = format_text_table(comparison.headers(), comparison.rows())
    p = comparison.p_values.get(methods[-1], float("nan"))
    log(f"[{steps}/{steps}] figure of test slices")
    figure: Path | None = out / "demo_slices.png"
    try:
        save_demo_figure(manifest, test_cases, out, checkpoints, figure)
    except Exception as exc:  # the figure is a convenience: never lose the numbers for it
        log(f"      (figure skipped: {exc})")
        figure = None
    seconds = time.perf_counter() - t0
    log("")
    log(table)
    log(f"\nWilcoxon signed-rank (DSC, {methods[-1]} vs {methods[0]}, {len(comparison.cases)} test cases): p = {p:.3g}")
    log(f"demo finished in {seconds / 60:.1f} min; results in {out}")
    summaries = {m: {k: float(v.mean) for k, v in comparison.summaries.get(m, {}).items()} for m in comparison.methods}
    return DemoResult(out, table, p, summaries, seconds, figure)


def _phantom_cohort(out: Path, n_ct: int, n_mr: int, shape: tuple[int, int, int], seed: int, progress: bool,
                    steps: int, log: Callable[[str], None]) -> tuple[Manifest, list[Case]]:
    """Step 1: the unpaired phantom cohort (reused when present) and its labelled CT test cases."""
    manifest_path = out / "phantom" / "manifest.json"
    if manifest_path.exists():
        log(f"[1/{steps}] phantom cohort: reusing {manifest_path}")
    else:
        log(f"[1/{steps}] phantom cohort: {n_ct} CT + {n_mr} MRI patients (unpaired), {shape[2]}x{shape[1]}x{shape[0]} "
            "voxels (XxYxZ)")
        generate_cohort(out / "phantom", n_ct=n_ct, n_cbct=0, n_mr=n_mr, seed=seed, shape=shape, progress=progress)
    manifest = Manifest.load(manifest_path)
    test_cases = manifest.select(split="test", modality="ct", labelled=True)
    if not test_cases:
        raise InputError("the phantom manifest has no labelled CT test cases", manifest_path)
    return manifest, test_cases


def _train_methods(out: Path, manifest: Manifest, config: str, configs: dict[str, TrainConfig],
                   log: Callable[[str], None]) -> tuple[dict[str, Path], float]:
    """Steps 2..: train (or resume, or reuse) each method with its (validated) config; returns best
    checkpoints and the surface tolerance."""
    checkpoints: dict[str, Path] = {}
    tau = 2.0
    steps = len(configs) + 3
    for k, (method, cfg) in enumerate(configs.items(), start=2):
        tau = cfg.evaluation.surface_tolerance_mm
        run_dir = out / method
        done = run_dir / "best.pt"
        if (run_dir / "DONE").exists() and done.exists():
            log(f"[{k}/{steps}] {method}: reusing finished run {run_dir}")
        else:
            resume = (run_dir / "last.pt").exists()
            log(f"[{k}/{steps}] training {method} ({config}){' - resuming' if resume else ''}")
            result = train(cfg, manifest, None, run_dir, resume=resume)
            with writing(run_dir / "DONE"), atomic_path(run_dir / "DONE") as tmp:
                tmp.write_text(f"best epoch {result.best_epoch}, {result.seconds:.0f} s\n")
            log(f"      {method}: {result.epochs} epochs in {result.seconds:.0f} s, best val Dice "
                f"{result.best_val_dice:.3f}")
        checkpoints[method] = done
    return checkpoints, tau


def _segment_and_compare(out: Path, manifest: Manifest, test_cases: list[Case], checkpoints: dict[str, Path],
                         tau: float) -> Comparison:
    """Segment the test CTs with every method, score them, and compare (Wilcoxon vs the first method)."""
    csvs = []
    inputs = [manifest.image_path(c) for c in test_cases]
    # references: the labelled CT test cases only (the manifest also lists the MRI cohort)
    with writing(out / "phantom" / "test_ct.json"):
        ref_manifest = Manifest(test_cases, name="phantom-ct-test", seed=manifest.seed).save(
            out / "phantom" / "test_ct.json")
    for method, ckpt in checkpoints.items():
        pred_dir = out / method / "pred"
        segment_files(ckpt, inputs, pred_dir, largest_component=False, progress=False)
        rows = evaluate_folders(pred_dir, ref_manifest, tolerance_mm=tau)
        with writing(out / f"{method}.csv"):
            csvs.append(write_results_csv(rows, out / f"{method}.csv"))
    comparison = compare_results(csvs, metric="dsc", names=list(checkpoints))
    with writing(out / "comparison.csv"):
        _write_comparison(comparison, out / "comparison.csv")
    return comparison


def _has_results(out: Path) -> bool:
    """Whether an earlier demo in ``out`` produced anything that other parameters would make stale."""
    return (out / "phantom" / "manifest.json").exists() or any(
        (d / "last.pt").exists() or (d / "best.pt").exists() for d in out.iterdir() if d.is_dir())


def _check_demo_parameters(path: Path, params: dict) -> None:
    """Record the demo's parameters; refuse to reuse a folder made with other ones (stale results), unless
    the earlier demo stopped before producing anything."""
    if path.exists() and _has_results(path.parent):
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
    with writing(path), atomic_path(path) as tmp:
        tmp.write_text(json.dumps(params, indent=2) + "\n")


def _write_comparison(comparison: Comparison, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(comparison.headers())
        writer.writerows(comparison.rows())


def save_demo_figure(manifest: Manifest, cases: list[Case], out: Path, checkpoints: dict[str, Path], path: Path,
                     n: int = 4) -> Path:
    """Test slices (largest tumour area): CT, the pMRI of the first method with a CT->MRI translator,
    and the expert (green) and each method's contours."""
    import matplotlib  # lazy: matplotlib (~0.5 s) only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    translating = [m for m, ck in checkpoints.items() if "ct2mr" in get_method(m).translators]
    gen = None
    if translating:
        ckpt = checkpoints[translating[0]]
        gen, pre = build_generator_from_checkpoint(load_checkpoint(ckpt), "ct2mr", source=ckpt)
    colours = ["deepskyblue", "red", "orange", "magenta", "yellow", "cyan"]
    cases = list(cases)[:n]
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        ct = read_volume(manifest.image_path(case))
        ref = read_volume(manifest.label_path(case)).array > 0
        k = int(np.argmax(ref.sum(axis=(1, 2))))
        row[0].imshow(ct.array[k], cmap="gray", vmin=-1000, vmax=400)
        row[0].set_title(f"{case.id} CT (slice {k})", fontsize=8)
        if gen is not None:
            row[1].imshow(translate_volume(ct, gen, pre).array[k], cmap="gray")
            row[1].set_title(f"pMRI ({translating[0]} generator)", fontsize=8)
        row[2].imshow(ct.array[k], cmap="gray", vmin=-160, vmax=240)
        row[2].set_title("mediastinal window: expert / " + " / ".join(checkpoints), fontsize=8)
        masks = [(ref[k], "lime")] + [(read_volume(out / m / "pred" / f"{case.id}.nii.gz").array[k] > 0, colour)
                                      for m, colour in zip(checkpoints, colours)]
        for mask, colour in masks:
            if mask.any():
                row[2].contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
