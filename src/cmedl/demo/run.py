"""``cmedl demo``: the whole CMEDL study on the built-in phantom cohort, in minutes on a CPU.

Steps (each writes under ``out_dir``):

1. ``phantom/``      an unpaired cohort (:mod:`cmedl.data.phantom`): CT (or CBCT) patients and *other*
                     MRI patients, split by patient; by default the *cue cohort* (one 20-50 mm tumour per
                     patient, balanced lung / mediastinal / chest-wall kinds, a weak consistent +20-30 HU
                     CT cue), or the negative *control* (random-sign 0-12 HU, ``cohort="control"``).
2. ``ct-only/``      the CT-only baseline (the student trained alone) with the demo preset.
3. ``cmedl/``        CMEDL (CycleGAN + contextual loss, MRI teacher, CT student, hint loss), same preset
                     and the same number of steps (``methods`` may name other registered methods; the
                     first is the baseline).
4. ``<method>/pred`` each method's test-time model segments the test split (masks on the input grid).
5. ``<method>.csv``  per-case DSC, surface DSC (tau from the config), HD95, lesion-wise F1 ... and kind.
6. tables            overall and per tumour kind (:mod:`.report`), ``comparison*.csv``.
7. diagnostics       tumour-vs-neighbour AUC on CT and on pMRI, the teacher's Dice (:mod:`.diagnostics`).
8. ``demo_slices.png`` test slices: CT, pMRI, expert contour and every method's contour.
9. ``raters/``       three simulated raters of the test cases (:mod:`cmedl.data.phantom.raters`), and
   ``report/``       the HTML report of everything above (:func:`cmedl.report.build_report`).

The test split is used only in steps 4-8; training uses train (and val for the best epoch).

Everything that can be checked is checked before step 1: the method names, the configuration of every
method (preset, overrides, ``--arch``) and the output folder (:func:`cmedl.io.outputs.check_output_folder`:
not a file, writable). A folder whose earlier demo stopped before producing anything (no phantom
manifest, no run) takes the new parameters; one with results refuses other parameters (stale results).
A failed write (disk full) is one error line naming the file.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmedl.config import TrainConfig
from cmedl.data.manifest import Case, Manifest
from cmedl.data.phantom import PhantomOptions, generate_cohort
from cmedl.data.phantom.raters import write_rater_masks
from cmedl.demo.diagnostics import Diagnostics, mechanism_diagnostics
from cmedl.demo.figure import save_demo_figure
from cmedl.demo.report import DemoTables, demo_tables
from cmedl.errors import CmedlError, InputError, did_you_mean
from cmedl.evaluation.evaluate import evaluate_folders, write_results_csv
from cmedl.inference.segment import segment_files
from cmedl.io import atomic_path
from cmedl.io.outputs import check_output_folder, writing
from cmedl.methods import get_method, load_config
from cmedl.report import build_report
from cmedl.training import train

try:
    import resource
except ImportError:  # Windows has no resource module
    resource = None

#: the papers' comparison: the CT-only baseline first (p-values are against it), then CMEDL
DEMO_METHODS = ("ct-only", "cmedl")
#: training preset per student modality
DEMO_PRESETS = {"ct": "cpu-demo", "cbct": "cpu-demo-cbct"}
COHORTS = ("cue", "control")
#: train / val / test patient fractions: 72 patients -> 30 / 12 / 30
DEMO_FRACTIONS = (0.42, 0.16, 0.42)
#: simulated raters of the test cases (the report's inter-rater section)
DEMO_RATERS = 3


@dataclass
class DemoResult:
    out_dir: Path
    table: str
    p_value: float
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    figure: Path | None = None
    tables: DemoTables | None = None
    diagnostics: Diagnostics | None = None
    report: Path | None = None


def run_demo(
    out_dir: str | Path = "cmedl-demo",
    *,
    config: str | None = None,
    modality: str = "ct",
    cohort: str = "cue",
    n_ct: int = 72,
    n_mr: int = 20,
    shape: tuple[int, int, int] = (32, 112, 112),
    seed: int = 0,
    overrides: list[str] | None = None,
    arch: str | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    largest_component: bool = False,
    min_component_ml: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo study and return the comparison (also printed through ``log``).

    Args:
        out_dir: everything is written here; an existing demo folder is reused step by step
            (phantom kept, finished runs resumed/kept), so an interrupted demo continues.
        config: training preset name or YAML file (every method uses it; default by modality:
            ``cpu-demo`` for CT, ``cpu-demo-cbct`` for CBCT).
        modality: the student modality, ``ct`` or ``cbct`` (the CBCT paper's setting).
        cohort: ``cue`` (default) or ``control`` (:class:`~cmedl.data.phantom.PhantomOptions`).
        n_ct, n_mr: phantom patients of the student modality and, separately, MRI.
        shape: phantom voxels (z, y, x).
        seed: seeds the phantom, the splits and the training.
        overrides: extra ``key=value`` config overrides (e.g. ``training.max_epochs=2``).
        arch: segmentation architecture for teacher and student (``unet``, ``densefcn57``, ``mrrn``).
        methods: registered methods to compare, the baseline first (p-values are against it).
        largest_component: keep only the largest 3D component of each predicted mask.
        min_component_ml: drop predicted components smaller than this (ml); None: the preset's
            ``evaluation.min_component_ml`` (``cpu-demo``: 1.5, chosen on the validation split of a development
            phantom cohort, seed 123, never the demo's test split).
    """
    for name in methods:
        get_method(name, key="demo method")
    if len(methods) < 2:
        raise InputError(f"the demo compares at least two methods, got {list(methods)}")
    if modality not in DEMO_PRESETS:
        raise InputError(did_you_mean(modality, DEMO_PRESETS, "demo modality"))
    if cohort not in COHORTS:
        raise InputError(did_you_mean(cohort, COHORTS, "demo cohort"))
    config = config or DEMO_PRESETS[modality]
    t0 = time.perf_counter()
    base = [f"training.seed={seed}", f"data.modality={modality}", *(overrides or []),
            *([f"model.arch={arch}"] if arch else [])]
    configs = {m: load_config(config, [*base, f"training.method={m}"]) for m in methods}  # all before any work
    if min_component_ml is None:
        min_component_ml = configs[methods[0]].evaluation.min_component_ml
    out = check_output_folder(out_dir, inputs=[config] if Path(config).is_file() else [])
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    options = PhantomOptions() if cohort == "cue" else PhantomOptions.control()
    _check_demo_parameters(out / "demo.json", {
        "config": str(config), "modality": modality, "cohort": cohort, "n_ct": n_ct, "n_mr": n_mr,
        "shape_zyx": list(shape), "seed": seed, "overrides": list(overrides or []), "arch": arch,
        "largest_component": largest_component, "min_component_ml": min_component_ml,
        **({} if tuple(methods) == DEMO_METHODS else {"methods": list(methods)}),
    })
    steps = len(methods) + 4
    manifest, test_cases = _phantom_cohort(out, modality, n_ct, n_mr, shape, seed, options, progress, steps, log)
    checkpoints, tau = _train_methods(out, manifest, config, configs, log)
    log(f"[{steps - 2}/{steps}] segmenting {len(test_cases)} test {modality.upper()}s with each method and "
        f"evaluating (tau = {tau} mm)")
    tables = _segment_and_compare(out, manifest, test_cases, checkpoints, tau, largest_component, min_component_ml)
    diagnostics = None
    translating = [m for m in checkpoints if "ct2mr" in get_method(m).translators]
    if translating:
        log(f"[{steps - 1}/{steps}] mechanism diagnostics ({translating[0]}'s generator and teacher)")
        try:
            diagnostics = mechanism_diagnostics(checkpoints[translating[0]], manifest, test_cases, options, seed,
                                                shape)
        except CmedlError as exc:  # e.g. a translating method without an MRI teacher
            log(f"      (diagnostics skipped: {exc})")
    log(f"[{steps}/{steps}] figure of test slices")
    figure: Path | None = out / "demo_slices.png"
    try:
        save_demo_figure(manifest, test_cases, out, checkpoints, figure)
    except Exception as exc:  # the figure is a convenience: never lose the numbers for it
        log(f"      (figure skipped: {exc})")
        figure = None
    report = _write_report(out, manifest, test_cases, seed, log)
    seconds = time.perf_counter() - t0
    log("")
    log(f"{options.describe()}; {modality.upper()} students")
    log(tables.text)
    if diagnostics is not None:
        log("\n" + "\n".join(diagnostics.lines()))
    rss = peak_rss_gb()
    log(f"\ndemo finished in {seconds / 60:.1f} min" + (f", peak RSS {rss:.2f} GB" if rss else "")
        + f"; results in {out}")
    if report is not None:
        log(f"report: {report}")
    comp = tables.overall
    p = comp.p_values.get(methods[-1], float("nan"))
    summaries = {m: {k: float(v.mean) for k, v in comp.summaries.get(m, {}).items()} for m in comp.methods}
    return DemoResult(out, comp.to_text(), p, summaries, seconds, figure, tables, diagnostics, report)


def peak_rss_gb() -> float | None:
    """Peak resident memory of this process and its finished children (GB), None where unknown."""
    if resource is None:
        return None
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)  # bytes on macOS, KiB on Linux


def _write_report(out: Path, manifest: Manifest, test_cases: list[Case], seed: int,
                  log: Callable[[str], None]) -> Path | None:
    """Simulated raters of the test cases (``raters/``, for the inter-rater section), then the HTML report
    (``report/index.html``); a failure is logged, never fatal (the tables are already written)."""
    log("      simulated raters and the HTML report")
    try:
        write_rater_masks({c.id: manifest.label_path(c) for c in test_cases}, out / "raters",  # type: ignore[misc]
                          n_raters=DEMO_RATERS, seed=seed)
        return build_report([out], out / "report", title="cmedl demo report", log=lambda msg: log("      " + msg)).index
    except CmedlError as exc:
        log(f"      (report skipped: {exc})")
        return None


def _phantom_cohort(out: Path, modality: str, n: int, n_mr: int, shape: tuple[int, int, int], seed: int,
                    options: PhantomOptions, progress: bool, steps: int,
                    log: Callable[[str], None]) -> tuple[Manifest, list[Case]]:
    """Step 1: the unpaired phantom cohort (reused when present) and its labelled test cases."""
    manifest_path = out / "phantom" / "manifest.json"
    if manifest_path.exists():
        log(f"[1/{steps}] phantom cohort: reusing {manifest_path}")
    else:
        log(f"[1/{steps}] phantom cohort: {n} {modality.upper()} + {n_mr} MRI patients (unpaired), "
            f"{shape[2]}x{shape[1]}x{shape[0]} voxels (XxYxZ); {options.describe()}")
        generate_cohort(out / "phantom", n_ct=n if modality == "ct" else 0, n_cbct=n if modality == "cbct" else 0,
                        n_mr=n_mr, seed=seed, shape=shape, fractions=DEMO_FRACTIONS, progress=progress,
                        options=options)
    manifest = Manifest.load(manifest_path)
    test_cases = manifest.select(split="test", modality=modality, labelled=True)
    if not test_cases:
        raise InputError(f"the phantom manifest has no labelled {modality} test cases", manifest_path)
    return manifest, test_cases


def _train_methods(out: Path, manifest: Manifest, config: str, configs: dict[str, TrainConfig],
                   log: Callable[[str], None]) -> tuple[dict[str, Path], float]:
    """Steps 2..: train (or resume, or reuse) each method with its (validated) config; returns best
    checkpoints and the surface tolerance."""
    checkpoints: dict[str, Path] = {}
    tau = 2.0
    steps = len(configs) + 4
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
                         tau: float, largest_component: bool, min_component_ml: float) -> DemoTables:
    """Segment the test cases with every method, score them, and compare (vs the first method)."""
    csvs = {}
    inputs = [manifest.image_path(c) for c in test_cases]
    kinds = {c.id: c.tumour_kind or "" for c in test_cases}
    # references: the labelled test cases of the student modality only (the manifest also lists the MRI)
    ref_path = out / "phantom" / "test_cases.json"
    with writing(ref_path):
        Manifest(test_cases, name="phantom-test", seed=manifest.seed).save(ref_path)
    for method, ckpt in checkpoints.items():
        pred_dir = out / method / "pred"
        segment_files(ckpt, inputs, pred_dir, largest_component=largest_component, min_component_ml=min_component_ml,
                      progress=False)
        rows = evaluate_folders(pred_dir, ref_path, tolerance_mm=tau)
        for row in rows:
            row["tumour_kind"] = kinds.get(str(row["case_id"]), "")
        with writing(out / f"{method}.csv"):
            csvs[method] = write_results_csv(rows, out / f"{method}.csv")
    return demo_tables(csvs, test_cases, out)


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
