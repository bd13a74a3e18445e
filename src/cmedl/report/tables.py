"""The report's results section: the papers' tables and per-case plots, per group of sources.

A group is a demo, a study family, or the plain runs given on the command line; its first source with
results is the reference. With two or more sources: mean ± SD of DSC, sDSC, HD95 and lesion-wise F1 on
the cases every source has, the mean paired DSC difference against the reference with a 95 % BCa CI,
and the Wilcoxon signed-rank p, raw and Holm-adjusted over the group
(:func:`cmedl.evaluation.compare.compare_results`), overall and per tumour kind. A single source gets
its summary alone. Below each table: box plots with every case drawn, one panel per metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cmedl.errors import CmedlError
from cmedl.evaluation.compare import METRIC_LABELS, compare_results
from cmedl.evaluation.stats import summarize
from cmedl.report.html import Section, Writer, pyplot
from cmedl.report.results import MethodResults, safe_name
from cmedl.report.sources import Source

TABLE_METRICS = ("dsc", "sdsc", "hd95", "f1")
COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")


def _comparison_block(names: list[str], res: list[MethodResults], writer: Writer, group: str,
                      kind: str | None, cases: Sequence[str] | None) -> str:
    comp = compare_results([r.csv for r in res], names=names, table_metrics=TABLE_METRICS,  # type: ignore[misc]
                           cases=cases)
    tag = safe_name(group) + (f".{safe_name(kind)}" if kind else "")
    comp.write_csv(writer.out / "tables" / f"comparison_{tag}.csv")
    title = f"{group}: {'tumour kind ' + kind if kind else 'all test cases'} (n = {len(comp.cases)})"
    note = comp.to_text().splitlines()[-1]
    t = comp.tests[-1]
    if t is not None and t.n_zero:
        note += f"; {t.n_zero} tied pair(s) dropped from the last test's ranking"
    return (writer.table(comp.headers(), comp.rows(), None, title)
            + f'<p class="note">{note} (<a href="tables/comparison_{tag}.csv">CSV</a>)</p>')


def _summary_block(name: str, res: MethodResults, writer: Writer, group: str) -> str:
    metrics = [m for m in TABLE_METRICS if m in res.rows[0]]
    cells = [name, str(len(res.rows))]
    for m in metrics:
        cells.append(summarize([float(r[m]) for r in res.rows]).format(METRIC_LABELS[m][1]))  # type: ignore[arg-type]
    return writer.table(["method", "n", *(METRIC_LABELS[m][0] for m in metrics)], [cells],
                        f"summary_{safe_name(group)}", f"{group}: {name} alone (no other method to compare with)")


def case_plot(names: list[str], res: list[MethodResults], writer: Writer, group: str) -> str:
    """Box plots with every case as a dot, one panel per metric (HD95 of a missed tumour counted apart)."""
    plt = pyplot()
    metrics = [m for m in TABLE_METRICS if all(m in r.rows[0] for r in res)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics) + 0.6, 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, m in zip(axes[0], metrics):
        data, labels = [], []
        for name, r in zip(names, res):
            v = np.array([float(row[m]) for row in r.rows])  # type: ignore[arg-type]
            finite = v[np.isfinite(v)]
            n_inf = int(np.isinf(v).sum())
            data.append(finite)
            labels.append(name + (f"\n({n_inf} inf)" if n_inf else ""))
        ax.boxplot([d if d.size else [math.nan] for d in data], showfliers=False, widths=0.55)
        for k, d in enumerate(data, start=1):
            ax.scatter(k + rng.uniform(-0.18, 0.18, d.size), d, s=9, alpha=0.7, color=COLOURS[(k - 1) % len(COLOURS)],
                       zorder=3)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=20 if len(labels) > 3 else 0)
        ax.set_title(METRIC_LABELS[m][0], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return writer.figure(fig, f"cases_{safe_name(group)}",
                         f"{group}: per-case values (box: quartiles; dots: cases)")


def results_section(groups: dict[str, list[Source]], results: dict[str, MethodResults], writer: Writer) -> Section:
    sec = Section("results", "Results")
    for group, sources in groups.items():
        with_rows = [s for s in sources if results[s.name].rows]
        for s in sources:
            if results[s.name].problem:
                sec.missing.append(results[s.name].problem)  # type: ignore[arg-type]
        if not with_rows:
            sec.missing.append(f"{group}: no source with per-case results")
            continue
        names = [s.name for s in with_rows]
        res = [results[n] for n in names]
        if sources[0] not in with_rows:
            sec.missing.append(f"{group}: the reference {sources[0].name} has no results; "
                               f"{names[0]} is the reference instead")
        if len(res) == 1:
            sec.blocks.append(_summary_block(names[0], res[0], writer, group))
        else:
            try:
                sec.blocks.append(_comparison_block(names, res, writer, group, None, None))
            except CmedlError as exc:  # e.g. mismatched case sets without a common case
                sec.missing.append(f"{group}: no comparison ({exc})")
                continue
            kinds = sorted({str(r.get("tumour_kind") or "") for r in res[0].rows} - {""})
            for kind in kinds:
                ids = [str(r["case_id"]) for r in res[0].rows if r.get("tumour_kind") == kind]
                try:
                    sec.blocks.append(_comparison_block(names, res, writer, group, kind, ids))
                except CmedlError as exc:
                    sec.missing.append(f"{group}, kind {kind}: no comparison ({exc})")
        sec.blocks.append(case_plot(names, res, writer, group))
    return sec
