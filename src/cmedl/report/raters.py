"""The report's inter-rater section (CT paper, Table IV), when several reference sets are given
(``--ref NAME=DIR`` repeated; a demo folder's simulated ``raters/``).

On the test cases every rater has (on the reference image's grid):

- the raters against their consensus (voxel-wise majority: more than half of the raters), which shows
  how much the observers themselves differ;
- each method against each rater and against the consensus: DSC, surface DSC and HD95, mean ± SD over
  cases, and the coefficient of variation (CV = SD / mean, :func:`cmedl.evaluation.stats.coefficient_of_variation`)
  of each metric across the raters, per case, averaged over cases: a method whose score depends little
  on who drew the reference has a low CV.

Cases a rater lacks, or whose rater mask is on another grid, are left out and named.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmedl.errors import CmedlError
from cmedl.evaluation.metrics import compute_all
from cmedl.evaluation.pairing import list_masks
from cmedl.evaluation.stats import coefficient_of_variation, summarize
from cmedl.io import read_volume
from cmedl.report.html import Section, Writer
from cmedl.report.results import References
from cmedl.report.sources import Source

RATER_METRICS = ("dsc", "sdsc", "hd95")
LABELS = {"dsc": "DSC", "sdsc": "sDSC", "hd95": "HD95 (mm)"}


def consensus(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Voxel-wise majority of binary masks (more than half of them)."""
    return (np.sum([m.astype(np.uint8) for m in masks], axis=0) * 2 > len(masks)).astype(bool)


def _cv(values: Sequence[float]) -> float:
    v = np.asarray(values, float)
    if not np.all(np.isfinite(v)) or np.mean(v) == 0:
        return float("nan")
    return float(coefficient_of_variation(v))


def _fmt_cv(values: list[float]) -> str:
    v = [x for x in values if np.isfinite(x)]
    return f"{np.mean(v):.3f}" if v else "n/a"


def raters_section(raters: dict[str, Path], sources: Sequence[Source], refs: References, writer: Writer,
                   tolerance_mm: float) -> Section:
    sec = Section("raters", "Inter-rater analysis")
    if len(raters) < 2:
        sec.note("Give several reference sets (--ref NAME=DIR, repeated) for an inter-rater analysis"
                 + (f" (one given: {', '.join(raters)})." if raters else "."))
        if raters:
            sec.missing.append("only one rater folder given")
        return sec
    found: dict[str, dict[str, Path]] = {}
    for name, folder in raters.items():
        try:
            found[name] = {cid: p for cid, (p, _) in list_masks(folder).items()}
        except CmedlError as exc:
            sec.missing.append(f"rater {name}: {exc}")
    if len(found) < 2:
        sec.missing.append("fewer than two readable rater folders")
        return sec
    ids = sorted(set.intersection(*(set(f) for f in found.values())))
    for name, f in found.items():
        extra = sorted(set(f) - set(ids))
        if extra:
            sec.missing.append(f"rater {name}: {len(extra)} case(s) not drawn by every rater left out "
                               f"(e.g. {', '.join(extra[:3])})")
    if refs.cases:
        ids = [c for c in ids if c in refs.cases] or ids
    preds: dict[str, dict[str, Path]] = {}
    for s in sources:
        if s.pred_dir is not None:
            try:
                preds[s.name] = {cid: p for cid, (p, _) in list_masks(s.pred_dir).items()}
            except CmedlError as exc:
                sec.missing.append(f"{s.name}: {exc}")
    names = list(found)
    rater_vs_cons: dict[str, dict[str, list[float]]] = {n: {m: [] for m in RATER_METRICS} for n in names}
    method_scores: dict[str, dict[str, dict[str, list[float]]]] = {
        s: {r: {m: [] for m in RATER_METRICS} for r in [*names, "consensus"]} for s in preds}
    method_cv: dict[str, dict[str, list[float]]] = {s: {m: [] for m in RATER_METRICS} for s in preds}
    used = 0
    for cid in ids:
        try:
            vols = [read_volume(found[n][cid]) for n in names]
        except CmedlError as exc:
            sec.missing.append(f"case {cid}: {exc}")
            continue
        if any(not v.same_geometry(vols[0]) for v in vols[1:]):
            sec.missing.append(f"case {cid}: the raters' masks are on different grids; left out")
            continue
        masks = [v.array > 0 for v in vols]
        cons = consensus(masks)
        spacing = vols[0].spacing_zyx
        used += 1
        for n, m in zip(names, masks):
            r = compute_all(m, cons, spacing, tolerance_mm)
            for k in RATER_METRICS:
                rater_vs_cons[n][k].append(r[k])
        for s, masks_of in preds.items():
            if cid not in masks_of:
                continue
            pv = read_volume(masks_of[cid])
            if not pv.same_geometry(vols[0]):
                sec.missing.append(f"{s}, case {cid}: mask grid differs from the raters'; left out")
                continue
            pred = pv.array > 0
            per_rater = {k: [] for k in RATER_METRICS}
            for n, m in [*zip(names, masks), ("consensus", cons)]:
                r = compute_all(pred, m, spacing, tolerance_mm)
                for k in RATER_METRICS:
                    method_scores[s][n][k].append(r[k])
                    if n != "consensus":
                        per_rater[k].append(r[k])
            for k in RATER_METRICS:
                method_cv[s][k].append(_cv(per_rater[k]))
    if not used:
        sec.missing.append("no case drawn by every rater")
        return sec
    sec.text(f"{len(names)} raters ({', '.join(names)}) on {used} test case(s); consensus = voxel-wise majority; "
             f"surface DSC at {tolerance_mm:g} mm.")
    rows = [[n, *(summarize(rater_vs_cons[n][k]).format(2) for k in RATER_METRICS)] for n in names]
    sec.blocks.append(writer.table(["rater", *(f"{LABELS[k]} vs consensus" for k in RATER_METRICS)], rows,
                                   "raters_vs_consensus", "Each rater against the consensus"))
    if not preds:
        sec.missing.append("no method with predicted masks to compare with the raters")
        return sec
    rows = []
    for s in preds:
        for n in [*names, "consensus"]:
            sc = method_scores[s][n]
            if sc["dsc"]:
                rows.append([s, n, len(sc["dsc"]), *(summarize(sc[k]).format(2) for k in RATER_METRICS)])
    sec.blocks.append(writer.table(["method", "reference", "cases", *(LABELS[k] for k in RATER_METRICS)], rows,
                                   "raters_methods", "Each method against each rater and against the consensus"))
    rows = [[s, len(method_cv[s]["dsc"]), *(_fmt_cv(method_cv[s][k]) for k in RATER_METRICS)] for s in preds
            if method_cv[s]["dsc"]]
    sec.blocks.append(writer.table(["method", "cases", *(f"CV of {LABELS[k]}" for k in RATER_METRICS)], rows,
                                   "raters_cv", "Coefficient of variation of each metric across the raters "
                                   "(per case, then averaged; cases with an undefined metric left out)"))
    return sec
