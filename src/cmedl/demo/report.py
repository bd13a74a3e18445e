"""The demo's tables: every method against the baseline, overall and per tumour kind.

Each table row: n, mean ± SD of DSC, surface DSC, HD95 and lesion-wise F1 / recall / precision, the mean
paired DSC difference against the baseline with its 95 % BCa bootstrap CI over cases, and the paired
two-sided Wilcoxon signed-rank p (zero differences, e.g. two methods that both miss a tumour, are
dropped before ranking and counted). Below each table: the median number of false-positive
components per test scan. Written as ``comparison.csv`` and ``comparison.<kind>.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmedl.data.manifest import Case
from cmedl.errors import CmedlError
from cmedl.evaluation.compare import Comparison, compare_results
from cmedl.evaluation.results_csv import read_results_csv

DEMO_METRICS = ("dsc", "sdsc", "hd95", "f1", "recall", "precision")


@dataclass
class DemoTables:
    overall: Comparison
    by_kind: dict[str, Comparison]
    text: str


def _fp_line(paths: Sequence[Path], names: Sequence[str], cases: Sequence[str]) -> str:
    wanted = set(cases)
    parts = []
    for name, path in zip(names, paths):
        fp = [float(r["fp"]) for r in read_results_csv(path) if str(r["case_id"]) in wanted]  # type: ignore[arg-type]
        parts.append(f"{name} {np.median(fp):.0f} (max {max(fp):.0f})" if fp else f"{name} n/a")
    return "false-positive components per scan, median: " + ", ".join(parts)


def _block(title: str, comp: Comparison, paths: Sequence[Path], names: Sequence[str]) -> str:
    d = comp.tests[-1]
    ties = f"; {d.n_zero} tied pair(s) dropped from the Wilcoxon ranking" if d is not None and d.n_zero else ""
    return (f"{title} (n = {len(comp.cases)})\n{comp.to_text()}{ties}\n"
            + _fp_line(paths, names, comp.cases))


def demo_tables(csvs: dict[str, Path], test_cases: Sequence[Case], out: Path) -> DemoTables:
    """Compare the per-case CSVs of the methods (the first is the baseline), overall and per kind, and
    write ``comparison.csv`` / ``comparison.<kind>.csv`` into ``out``."""
    names, paths = list(csvs), list(csvs.values())
    overall = compare_results(paths, names=names, table_metrics=DEMO_METRICS)
    overall.write_csv(out / "comparison.csv")
    blocks = [_block("all test cases", overall, paths, names)]
    kinds = sorted({c.tumour_kind for c in test_cases if c.tumour_kind})
    by_kind = {}
    for kind in kinds:
        ids = [c.id for c in test_cases if c.tumour_kind == kind]
        try:
            comp = compare_results(paths, names=names, table_metrics=DEMO_METRICS, cases=ids)
        except CmedlError:
            continue
        comp.write_csv(out / f"comparison.{kind}.csv")
        by_kind[kind] = comp
        blocks.append(_block(f"{kind} tumours", comp, paths, names))
    return DemoTables(overall, by_kind, "\n\n".join(blocks))
