"""The tables of a finished (or partly finished) study, like the papers' Tables II, III and V.

Per family (``<out>/tables/``):

- ``<family>.txt`` / ``<family>.csv``: one row per run, the reference first: mean ± SD of DSC, sDSC,
  HD95 and lesion-wise F1 over the test cases, the mean paired DSC difference against the reference
  with a 95 % bootstrap CI, and the Wilcoxon signed-rank p (raw and Holm-adjusted over the family);
  with several seeds each case's metrics are first averaged over the seeds, and the per-seed mean DSC
  of every run is listed under the table;
- ``<family>.<kind>.csv``: the same per tumour kind, when the manifest records kinds;
- ``<family>/<run>.csv``: the seed-averaged per-case values the table is computed from.

Also ``all_cases.csv`` (every run, seed and case) and ``translation_quality.csv`` (histogram KL of
each translator's pMRI against real MRI, papers' Sec. V-E). Runs without results are left out and
named in the text.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from cmedl.data.manifest import Manifest
from cmedl.errors import CmedlError
from cmedl.evaluation.compare import compare_results
from cmedl.evaluation.results_csv import read_results_csv, write_results_csv
from cmedl.io import atomic_path
from cmedl.io.outputs import writing
from cmedl.methods import get_method
from cmedl.study.quality import pmri_histogram_kl
from cmedl.study.sharing import source_of
from cmedl.study.spec import FamilySpec, StudySpec

TABLE_METRICS = ("dsc", "sdsc", "hd95", "f1")
_AVERAGED = ("dsc", "sdsc", "hd95", "hd", "assd", "precision", "recall", "f1", "dsc_tp", "volume_pred_ml",
             "volume_ref_ml", "fp", "fn")


def _seed_results(out: Path, family: str, run: str, seeds: tuple[int, ...]) -> dict[int, list[dict]]:
    found = {}
    for seed in seeds:
        path = out / "runs" / family / run / f"seed{seed}" / "results.csv"
        if path.exists():
            found[seed] = read_results_csv(path)
    return found


def _average_over_seeds(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Per case: the mean over seeds of each metric (inf stays inf); cases every seed has."""
    by_seed = [{str(r["case_id"]): r for r in rows} for rows in per_seed.values()]
    common = sorted(set.intersection(*(set(b) for b in by_seed)))
    out = []
    for cid in common:
        first = by_seed[0][cid]
        row = {"case_id": cid, "modality": first.get("modality", ""), "tumour_kind": first.get("tumour_kind", "")}
        for key in _AVERAGED:
            if key in first:
                row[key] = float(np.mean([float(b[cid][key]) for b in by_seed]))  # type: ignore[arg-type]
        out.append(row)
    return out


def _family_table(spec: StudySpec, fam: FamilySpec, out: Path) -> str:
    tables = out / "tables"
    paths, names, seed_lines = [], [], []
    for run in fam.run_names:
        per_seed = _seed_results(out, fam.name, run, spec.seeds)
        if not per_seed:
            continue
        rows = _average_over_seeds(per_seed)
        path = tables / fam.name / f"{run}.csv"
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_results_csv(rows, path)
        paths.append(path)
        names.append(run)
        means = [float(np.mean([float(r["dsc"]) for r in rs])) for rs in per_seed.values()]  # type: ignore[arg-type]
        spread = f" (SD over seeds {np.std(means, ddof=1):.3f})" if len(means) > 1 else ""
        seed_lines.append(f"  {run}: mean DSC per seed " + ", ".join(f"{m:.3f}" for m in means) + spread)
    missing = [r for r in fam.run_names if r not in names]
    head = f"== {fam.name}" + (f": {fam.description}" if fam.description else "") + " =="
    if len(paths) < 2 or names[0] != fam.reference:
        return f"{head}\n(not enough finished runs for a table; missing: {', '.join(missing) or '-'})\n"
    text = [head]
    comp = compare_results(paths, names=names, table_metrics=TABLE_METRICS)
    comp.write_csv(tables / f"{fam.name}.csv")
    text.append(comp.to_text())
    rows0 = read_results_csv(paths[0])
    kinds = sorted({str(r.get("tumour_kind") or "") for r in rows0} - {""})
    for kind in kinds:
        ids = [str(r["case_id"]) for r in rows0 if r.get("tumour_kind") == kind]
        try:
            sub = compare_results(paths, names=names, table_metrics=TABLE_METRICS, cases=ids)
        except CmedlError:
            continue
        sub.write_csv(tables / f"{fam.name}.{kind}.csv")
        text.append(f"-- tumour kind: {kind} --\n{sub.to_text()}")
    text += seed_lines
    if missing:
        text.append(f"  (runs without results, left out: {', '.join(missing)})")
    return "\n".join(text) + "\n"


def _all_cases(spec: StudySpec, out: Path) -> Path | None:
    rows = []
    for run in spec.runs():
        path = out / "runs" / run.key / "results.csv"
        if path.exists():
            for r in read_results_csv(path):
                rows.append({"family": run.family, "run": run.name, "seed": run.seed, "method": run.method, **r})
    if not rows:
        return None
    cols = list(dict.fromkeys(k for r in rows for k in r))
    path = out / "all_cases.csv"
    with writing(path), atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    return path


def _translation_quality(spec: StudySpec, out: Path, data: Path, mr_data: Path | None) -> str:
    """Histogram KL of every finished run with a CT->MRI translator (cached in ``<run>/pmri_kl.json``)."""
    manifest = Manifest.load(data)
    mr_manifest = Manifest.load(mr_data) if mr_data is not None else manifest
    mr_paths = [mr_manifest.image_path(c) for c in mr_manifest.select(modality="mr")]
    rows = []
    for run in spec.runs():
        run_dir = out / "runs" / run.key
        trained_in = source_of(run_dir)  # a shared run's networks are in the folder that trained it
        if "ct2mr" not in get_method(run.method).translators or not (trained_in / "DONE").exists() or not mr_paths:
            continue
        cache = run_dir / "pmri_kl.json"
        if cache.exists():
            kl = float(json.loads(cache.read_text())["kl"])
        else:
            cfg_modality = "cbct" if manifest.select(split="test", modality="cbct") else "ct"
            tests = [manifest.image_path(c) for c in manifest.select(split="test", modality=cfg_modality)]
            kl = pmri_histogram_kl(trained_in / "best.pt", tests, mr_paths)
            with writing(cache), atomic_path(cache) as tmp:
                tmp.write_text(json.dumps({"kl": kl}) + "\n")
        rows.append((run.family, run.name, run.seed, kl))
    if not rows:
        return ""
    path = out / "tables" / "translation_quality.csv"
    with writing(path), atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["family", "run", "seed", "histogram_kl_nats"])
        w.writerows([(f, r, s, f"{k:.6g}") for f, r, s, k in rows])
    lines = ["== pMRI quality: KL(pMRI || real MRI), nats (papers: 0.079 CMEDL, 0.34 CycleGAN alone) =="]
    lines += [f"  {f}/{r}/seed{s}: {k:.3f}" if math.isfinite(k) else f"  {f}/{r}/seed{s}: n/a" for f, r, s, k in rows]
    return "\n".join(lines) + "\n"


def write_tables(spec: StudySpec, out: str | Path, data: str | Path, mr_data: str | Path | None = None) -> str:
    """Write every family's tables, ``all_cases.csv`` and the pMRI quality; returns the text of all tables
    (also written to ``<out>/tables/summary.txt``)."""
    out = Path(out)
    with writing(out / "tables"):
        (out / "tables").mkdir(parents=True, exist_ok=True)
    parts = [f"study {spec.name}" + (f": {spec.description}" if spec.description else "")]
    parts += [_family_table(spec, fam, out) for fam in spec.families]
    _all_cases(spec, out)
    quality = _translation_quality(spec, out, Path(data), Path(mr_data) if mr_data is not None else None)
    if quality:
        parts.append(quality)
    text = "\n".join(parts)
    with writing(out / "tables" / "summary.txt"), atomic_path(out / "tables" / "summary.txt") as tmp:
        tmp.write_text(text)
    return text
