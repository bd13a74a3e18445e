"""Summaries of per-case rows: mean ± SD and median [IQR] per metric, as a plain-text table."""

from __future__ import annotations

from collections.abc import Sequence

from cmedl.evaluation.stats import summarize

#: Metrics shown in the summary table: (column, label, unit, digits).
SUMMARY_METRICS: tuple[tuple[str, str, str, int], ...] = (
    ("dsc", "DSC", "", 2),
    ("sdsc", "sDSC", "", 2),
    ("hd95", "HD95", "mm", 2),
    ("hd", "HD", "mm", 2),
    ("assd", "ASSD", "mm", 2),
    ("rvd", "RVD", "", 2),
    ("volume_ref_ml", "Volume (ref)", "ml", 1),
    ("f1", "F1", "", 2),
    ("precision", "Precision", "", 2),
    ("recall", "Recall", "", 2),
    ("dsc_tp", "DSC-TP", "", 2),
)


def summary_table(rows: Sequence[dict[str, object]]) -> list[tuple[str, str, str]]:
    """``(metric label, mean ± SD (inf/n/a counts), median [Q1, Q3])`` for :data:`SUMMARY_METRICS`."""
    out = []
    for col, name, unit, digits in SUMMARY_METRICS:
        if not rows or col not in rows[0]:
            continue
        s = summarize([float(r[col]) for r in rows])  # type: ignore[arg-type]
        if col == "sdsc":
            tols = sorted({float(r["tolerance_mm"]) for r in rows if "tolerance_mm" in r})  # type: ignore[arg-type]
            if tols:
                name = f"sDSC@{'/'.join(f'{t:g}' for t in tols)}mm"
        label = f"{name} ({unit})" if unit else name
        med = "n/a" if s.n_finite == 0 else f"{s.median:.{digits}f} [{s.q1:.{digits}f}, {s.q3:.{digits}f}]"
        out.append((label, s.format(digits), med))
    return out


def format_text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain monospace table (for logs, notebooks and the demo)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line("-" * w for w in widths), *(line(r) for r in rows)])


def format_summary(rows: Sequence[dict[str, object]]) -> str:
    """The summary table of :func:`summary_table` as plain text, with the number of cases."""
    table = format_text_table(("metric", "mean ± SD", "median [IQR]"), summary_table(rows))
    return f"{len(rows)} cases\n{table}"
