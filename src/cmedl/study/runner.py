"""``cmedl study``: train every run of a study, segment and score the test split once per run, and
write the papers' tables (:mod:`cmedl.study.tables`).

Each run is an ordinary training run folder (``<out>/runs/<family>/<run>/seed<k>``: config.yaml,
checkpoints, logs) and goes through three stages, each recorded so that a rerun skips what is done:

1. train (resumed from ``last.pt`` when interrupted; ``DONE`` when finished);
2. segment the test split with the run's test-time recipe (``pred/``; ``pred/DONE``);
3. score it against the expert masks (``results.csv``, written atomically, so it exists only whole).

A run whose configuration equals an earlier run's (of this study, or a finished run of the study
folders given as ``reuse``) is not trained again but shared (:mod:`cmedl.study.sharing`).

On one device with ``runs_per_device=1`` the runs go one after another. Otherwise (several devices,
``devices=["cuda:0", "cuda:1"]``, or several runs at once on one GPU) the runs are dealt round-robin to
``runs_per_device`` worker processes per device. The study's description (runs and
their overrides) is recorded in ``study.json``; a folder made by another study is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

from cmedl.config import TrainConfig
from cmedl.data.manifest import Case, Manifest
from cmedl.errors import CmedlError, InputError
from cmedl.evaluation.evaluate import evaluate_folders
from cmedl.evaluation.results_csv import write_results_csv
from cmedl.inference.segment import segment_files
from cmedl.io import atomic_path
from cmedl.io.outputs import check_output_folder, writing
from cmedl.study.sharing import SHARED_FROM, config_signature, finished_runs, share, source_of, twins
from cmedl.study.spec import RunSpec, StudySpec
from cmedl.training import train


@dataclass
class RunOutcome:
    key: str
    results: Path | None  #: the run's per-case CSV (None when it failed)
    trained: bool  #: trained (or resumed) now, rather than found finished
    error: str | None = None
    shared_from: Path | None = None  #: the run folder whose results this run shares (not trained again)


def _done(path: Path, text: str) -> None:
    with writing(path), atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def run_one(run: RunSpec, config: TrainConfig, data: Path, mr_data: Path | None, run_dir: Path,
            device: str, log: Callable[[str], None] = print) -> RunOutcome:
    """Train, segment and score one run (each stage skipped when already done)."""
    config.training.device = device
    trained = False
    if not ((run_dir / "DONE").exists() and (run_dir / "best.pt").exists()):
        resume = (run_dir / "last.pt").exists()
        log(f"  {run.key}: {'resuming' if resume else 'training'} {run.method} on {device}")
        result = train(config, data, mr_data, run_dir, resume=resume)
        _done(run_dir / "DONE", f"best epoch {result.best_epoch}, {result.seconds:.0f} s")
        trained = True
    results = run_dir / "results.csv"
    if not results.exists():
        manifest = Manifest.load(data)
        tests = _test_cases(manifest, config.data.modality, data)
        pred = run_dir / "pred"
        if not (pred / "DONE").exists():
            log(f"  {run.key}: segmenting {len(tests)} test cases")
            segment_files(run_dir / "best.pt", [manifest.image_path(c) for c in tests], pred, device=device,
                          min_component_ml=config.evaluation.min_component_ml, progress=False)
            _done(pred / "DONE", f"{len(tests)} cases")
        ref = run_dir / "test_cases.json"  # the references, with absolute paths
        with writing(ref):
            Manifest([replace(c, image=str(manifest.image_path(c)), label=str(manifest.label_path(c)),
                              paired_mr=None) for c in tests], name="test").save(ref)
        rows = evaluate_folders(pred, ref, tolerance_mm=config.evaluation.surface_tolerance_mm)
        kinds = {c.id: c.tumour_kind for c in tests}
        for row in rows:
            row["tumour_kind"] = kinds.get(str(row["case_id"])) or ""
        with writing(results):
            write_results_csv(rows, results)
    return RunOutcome(run.key, results, trained)


def _test_cases(manifest: Manifest, modality: str, source: Path) -> list[Case]:
    tests = manifest.select(split="test", modality=modality, labelled=True)
    if not tests:
        raise InputError(f"no labelled {modality} cases in the test split", source)
    return tests


def _worker(jobs: list[tuple[RunSpec, TrainConfig, Path, Path | None, Path]], device: str) -> list[RunOutcome]:
    """One device's share of the runs, one after another; a failed run is reported, the rest go on."""
    out = []
    for run, config, data, mr, run_dir in jobs:
        try:
            out.append(run_one(run, config, data, mr, run_dir, device))
        except CmedlError as exc:
            out.append(RunOutcome(run.key, None, False, str(exc)))
    return out


def check_study_folder(out: Path, spec: StudySpec, extra: Sequence[str], record_study: bool = True) -> None:
    """Record the study in ``study.json``; refuse a folder holding another study's runs. With
    ``record_study=False`` (rewriting tables only) nothing is written and a folder without a study is
    refused too."""
    record = {"name": spec.name, "config": spec.config, "extra_overrides": list(extra),
              "runs": {r.key: [r.method, *r.overrides] for r in spec.runs()}}
    path = Path(out) / "study.json"
    if not record_study and not path.exists():
        raise InputError(f"no study here (no study.json): run `cmedl study {spec.name}` on this folder first", out)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if not isinstance(old, dict) or old.get("name") != spec.name or old.get("config") != spec.config \
                or old.get("extra_overrides") != list(extra):
            raise InputError("this folder holds another study (or the same one with other overrides); "
                             "use a new --out folder", path)
        clash = [k for k, v in record["runs"].items() if k in old.get("runs", {}) and old["runs"][k] != v]
        if clash:
            raise InputError(f"run {clash[0]} was made with other settings; use a new --out folder", path)
        record["runs"] = {**old.get("runs", {}), **record["runs"]}
    if not record_study:
        return
    with writing(path), atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def run_study(
    spec: StudySpec,
    data: str | Path,
    out: str | Path,
    *,
    mr_data: str | Path | None = None,
    devices: Sequence[str] = ("cpu",),
    runs_per_device: int = 1,
    overrides: Sequence[str] = (),
    reuse: Sequence[str | Path] = (),
    log: Callable[[str], None] = print,
) -> dict[str, RunOutcome]:
    """Run (or continue) every run of ``spec`` on ``data`` (manifest with train/val/test splits); returns
    the outcome per run key. ``runs_per_device`` > 1 trains several runs at once on each device (small
    runs that leave a GPU idle). ``reuse``: other study folders whose finished runs are shared by runs
    with the same configuration instead of training them again. Tables:
    :func:`cmedl.study.tables.write_tables` on the same folder."""
    data = Path(data)
    mr = Path(mr_data) if mr_data is not None else None
    configs = spec.configs(overrides)  # every run validated before any work
    inputs = [p for p in (data, mr, spec.source) if p is not None]
    out = check_output_folder(out, inputs=inputs)
    if not devices:
        raise InputError("no devices given")
    if int(runs_per_device) < 1:
        raise InputError(f"runs per device must be >= 1, got {runs_per_device}")
    Manifest.load(data)  # a readable manifest before any work
    elsewhere = finished_runs(Path(f) for f in reuse)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    check_study_folder(out, spec, overrides)
    runs = spec.runs()
    same = twins([(r.key, configs[r.key]) for r in runs])
    log(f"study {spec.name}: {len(runs)} runs ({len(spec.families)} families x runs x {len(spec.seeds)} seed(s)) "
        f"on {', '.join(devices)}" + (f"; {len(same)} repeat(s) an earlier run and will share it" if same else ""))
    outcomes: dict[str, RunOutcome] = {}
    jobs = []
    for r in runs:
        run_dir = out / "runs" / r.key
        source = elsewhere.get(config_signature(configs[r.key]))
        if (run_dir / "results.csv").exists():  # finished: run_one skips it, a shared one is kept as it is
            if (run_dir / SHARED_FROM).exists():
                outcomes[r.key] = RunOutcome(r.key, run_dir / "results.csv", False, shared_from=source_of(run_dir))
            else:
                jobs.append((r, configs[r.key], data, mr, run_dir))
        elif source is not None:
            outcomes[r.key] = RunOutcome(r.key, share(source, run_dir), False, shared_from=source)
            log(f"  {r.key}: shares {source} (same configuration, finished)")
        elif r.key not in same:  # a repeat is shared once its twin has finished, below
            jobs.append((r, configs[r.key], data, mr, run_dir))
    slots = [d for d in devices for _ in range(int(runs_per_device))]
    if len(slots) == 1:
        for k, job in enumerate(jobs, start=1):
            log(f"[{k}/{len(jobs)}] {job[0].key}")
            try:
                outcomes[job[0].key] = run_one(*job, device=devices[0], log=log)
            except CmedlError as exc:
                log(f"error: {job[0].key}: {exc}")
                outcomes[job[0].key] = RunOutcome(job[0].key, None, False, str(exc))
    else:
        shares = [jobs[i::len(slots)] for i in range(len(slots))]
        with ProcessPoolExecutor(len(slots), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_worker, part, dev) for part, dev in zip(shares, slots) if part]
            for fut in futures:
                for outcome in fut.result():
                    outcomes[outcome.key] = outcome
                    log(f"{outcome.key}: {'failed: ' + outcome.error if outcome.error else 'done'}")
    for key, first in same.items():
        if key in outcomes:
            continue
        done = outcomes.get(first)
        source = done.shared_from if done is not None and done.shared_from is not None else out / "runs" / first
        if done is None or done.results is None:
            why = done.error if done is not None and done.error else "it did not finish"
            outcomes[key] = RunOutcome(key, None, False, f"same configuration as {first}, which failed: {why}")
            continue
        outcomes[key] = RunOutcome(key, share(source, out / "runs" / key), False, shared_from=source)
        log(f"  {key}: shares {first} (same configuration)")
    return outcomes
