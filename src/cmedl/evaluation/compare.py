"""Compare methods from their per-case CSVs: paired Wilcoxon tests with Holm adjustment.

Mirrors the papers' Tables II/III: one row per method with DSC, sDSC and HD95 as mean ± SD over the
cases that every method has, the mean paired difference of the chosen metric against the first
(reference) method with a 95 % BCa bootstrap CI over cases, and the p-value of a paired two-sided
Wilcoxon signed-rank test (zero differences, e.g. two misses, dropped: see
:func:`~cmedl.evaluation.stats.wilcoxon_paired`), Holm-Bonferroni-adjusted over the family of
``len(methods) - 1`` comparisons. ``cases`` restricts a comparison to a stratum (e.g. one tumour kind).

The table CSV (``out`` / :meth:`Comparison.write_csv`) is checked before any work with
:func:`cmedl.io.outputs.check_output_file`: it must not be one of the compared files
(``cmedl compare a.csv b.csv --out b.csv``), nor a folder, and its folder must be writable.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmedl.errors import InputError, did_you_mean
from cmedl.evaluation.results_csv import read_results_csv
from cmedl.evaluation.stats import (
    ConfidenceInterval,
    PairedTest,
    Summary,
    format_p,
    holm_bonferroni,
    paired_difference,
    summarize,
    wilcoxon_paired,
)
from cmedl.evaluation.summary import format_text_table
from cmedl.io.outputs import check_output_file, writing
from cmedl.io.volume import atomic_path

#: Column -> (label, digits) for the comparison table.
METRIC_LABELS: dict[str, tuple[str, int]] = {
    "dsc": ("DSC", 2), "sdsc": ("sDSC", 2), "hd95": ("HD95 (mm)", 2), "hd": ("HD (mm)", 2),
    "assd": ("ASSD (mm)", 2), "rvd": ("RVD", 2), "f1": ("F1", 2), "precision": ("Precision", 2),
    "recall": ("Recall", 2), "dsc_tp": ("DSC-TP", 2),
}


@dataclass
class Comparison:
    """Result of :func:`compare_results`."""

    methods: list[str]
    paths: list[Path]
    metric: str
    cases: list[str]  # common case ids, sorted
    n_dropped: list[int]  # per method: cases not shared by every method
    table_metrics: list[str]
    summaries: dict[str, dict[str, Summary]] = field(default_factory=dict)  # method -> metric -> Summary
    tests: list[PairedTest | None] = field(default_factory=list)  # per method; None for the reference
    p_raw: list[float] = field(default_factory=list)  # per method; NaN for the reference
    p_holm: list[float] = field(default_factory=list)
    #: per method: mean paired difference of ``metric`` vs the reference with its CI; None for the reference
    differences: list[ConfidenceInterval | None] = field(default_factory=list)

    @property
    def p_values(self) -> dict[str, float]:
        """Holm-adjusted p-value of each non-reference method vs the reference."""
        return {m: p for m, p in zip(self.methods[1:], self.p_holm[1:])}

    def headers(self) -> list[str]:
        label = METRIC_LABELS.get(self.metric, (self.metric, 2))[0].split(" ")[0]
        return ["method", "n", *(METRIC_LABELS.get(m, (m, 2))[0] for m in self.table_metrics),
                f"Δ{label} [95% CI]", f"p ({label} vs {self.methods[0]})", "p (Holm)"]

    def rows(self) -> list[list[str]]:
        """Table cells, one row per method (mean ± SD with inf / n/a counts)."""
        out = []
        for i, m in enumerate(self.methods):
            cells = [m, str(len(self.cases))]
            for met in self.table_metrics:
                cells.append(self.summaries[m][met].format(METRIC_LABELS.get(met, (met, 2))[1]))
            diff = self.differences[i] if i < len(self.differences) else None
            cells += ["-", "-", "-"] if i == 0 else [diff.format(3) if diff is not None else "n/a",
                                                    format_p(self.p_raw[i]), format_p(self.p_holm[i])]
            out.append(cells)
        return out

    def to_text(self) -> str:
        """The table as plain text, with a one-line note on the test."""
        note = (
            f"{len(self.cases)} common cases; paired two-sided Wilcoxon signed-rank on {self.metric} vs "
            f"{self.methods[0]}, Holm-Bonferroni over {len(self.methods) - 1} comparison(s)"
        )
        if any(self.n_dropped):
            note += "; cases not in every file left out: " + ", ".join(
                f"{m} {k}" for m, k in zip(self.methods, self.n_dropped) if k
            )
        return format_text_table(self.headers(), self.rows()) + "\n" + note

    def write_csv(self, path: str | Path) -> Path:
        """Write the table (numbers unformatted: mean, sd, n_inf per metric; raw and Holm p) atomically.

        Raises:
            InputError: ``path`` is one of the compared files, a folder, or cannot be written.
        """
        path = check_output_file(path, inputs=self.paths)
        with writing(path):
            return self._write_csv(path)

    def _write_csv(self, path: Path) -> Path:
        cols = ["method", "file", "n"]
        for met in self.table_metrics:
            cols += [f"{met}_mean", f"{met}_sd", f"{met}_median", f"{met}_n_inf", f"{met}_n_nan"]
        cols += ["metric_tested", "difference", "difference_ci_low", "difference_ci_high", "p_value", "p_holm"]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for i, m in enumerate(self.methods):
                row: list[object] = [m, str(self.paths[i]), len(self.cases)]
                for met in self.table_metrics:
                    s = self.summaries[m][met]
                    row += [f"{s.mean:.10g}", f"{s.sd:.10g}", f"{s.median:.10g}", s.n_inf, s.n_nan]
                d = self.differences[i] if i < len(self.differences) else None
                row += [self.metric, *(["", "", ""] if d is None else
                                       [f"{d.estimate:.10g}", f"{d.low:.10g}", f"{d.high:.10g}"]),
                        f"{self.p_raw[i]:.10g}", f"{self.p_holm[i]:.10g}"]
                w.writerow(row)
        return path


def _method_names(paths: Sequence[Path]) -> list[str]:
    names = [p.name[:-4] if p.name.lower().endswith(".csv") else p.name for p in paths]
    if len(set(names)) < len(names):  # results/a/results.csv, results/b/results.csv -> a/results, b/results
        names = [f"{p.parent.name}/{n}" for p, n in zip(paths, names)]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def compare_results(
    paths: Sequence[str | Path],
    metric: str = "dsc",
    names: Sequence[str] | None = None,
    table_metrics: Sequence[str] = ("dsc", "sdsc", "hd95"),
    out: str | Path | None = None,
    cases: Sequence[str] | None = None,
) -> Comparison:
    """Compare per-case result CSVs (from ``cmedl evaluate``) on the cases they share.

    Args:
        paths: two or more CSVs; the first is the reference method every other is tested against.
        metric: column tested (paired two-sided Wilcoxon signed-rank).
        names: method names (default: file names without ``.csv``).
        table_metrics: columns summarised as mean ± SD in the table.
        out: also write the table as CSV here (:meth:`Comparison.write_csv`); checked before any work.
        cases: compare only these case ids (a stratum such as one tumour kind).

    Raises:
        InputError: fewer than two files, unknown metric column, no common cases, an ``out`` that is
            one of the compared files or cannot be written.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise InputError(f"compare needs at least two result files, got {len(paths)}")
    if out is not None:
        check_output_file(out, inputs=paths)
    names = list(names) if names is not None else _method_names(paths)
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise InputError(f"need one distinct name per file, got {names}")
    tables = [read_results_csv(p) for p in paths]
    for p, rows in zip(paths, tables):
        if not rows:
            raise InputError("results file has no cases", p)
        if metric not in rows[0]:
            numeric = [k for k, v in rows[0].items() if isinstance(v, float)]
            raise InputError(did_you_mean(metric, numeric, "metric column"), p)
    # table columns: those every file has (a hand-made CSV may hold only the tested metric)
    table_metrics = [m for m in dict.fromkeys([*table_metrics]) if all(m in rows[0] for rows in tables)]
    if metric not in table_metrics:
        table_metrics.append(metric)
    by_case = [{str(r["case_id"]): r for r in rows} for rows in tables]
    common = sorted(set.intersection(*(set(b) for b in by_case)))
    n_dropped = [len(b) - len(common) for b in by_case]  # not shared by every file (a stratum is not a drop)
    if cases is not None:
        wanted = {str(c) for c in cases}
        common = [c for c in common if c in wanted]
    if not common:
        raise InputError(f"the result files share no case ids: {', '.join(str(p) for p in paths)}")
    comp = Comparison(
        methods=names, paths=paths, metric=metric, cases=common,
        n_dropped=n_dropped, table_metrics=list(table_metrics),
    )
    values = {}
    for name, b in zip(names, by_case):
        comp.summaries[name] = {
            met: summarize([float(b[c][met]) for c in common]) for met in comp.table_metrics  # type: ignore[arg-type]
        }
        values[name] = np.array([float(b[c][metric]) for c in common])  # type: ignore[arg-type]
    ref = values[names[0]]
    comp.tests = [None] + [wilcoxon_paired(values[n], ref) for n in names[1:]]
    comp.p_raw = [math.nan] + [t.p_value for t in comp.tests[1:] if t is not None]
    comp.p_holm = [math.nan] + holm_bonferroni(comp.p_raw[1:]).tolist()
    comp.differences = [None] + [paired_difference(values[n], ref, n_resamples=5000).difference
                                 for n in names[1:]]
    if out is not None:
        comp.write_csv(out)
    return comp
