"""The report's training section: training and validation curves from each run's ``log.csv``
(:func:`cmedl.training.logging.write_history_csv`: one row per epoch, ``train_<term>`` loss means,
``val_loss``, ``val_dice``), like the CBCT paper's Fig. 3."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from cmedl.report.html import Section, Writer, pyplot
from cmedl.report.results import safe_name
from cmedl.report.sources import Source
from cmedl.report.tables import COLOURS


def read_log(path: Path) -> dict[str, list[float]]:
    """Columns of a run's ``log.csv`` as floats (NaN where empty or not a number)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for key in (rows[0] if rows else {}):
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(key) or "nan"))
            except ValueError:
                vals.append(math.nan)
        cols[key] = vals
    return cols


def curves_section(sources: Sequence[Source], writer: Writer) -> Section:
    plt = pyplot()
    sec = Section("training", "Training and validation curves")
    logs: dict[str, dict[str, list[float]]] = {}
    for s in sources:
        if s.log_csv is None:
            sec.missing.append(f"{s.name}: no training log ({'no run folder' if s.run_dir is None else s.run_dir / 'log.csv'})")
            continue
        try:
            cols = read_log(s.log_csv)
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            sec.missing.append(f"{s.log_csv}: unreadable training log ({exc})")
            continue
        if not cols.get("epoch"):
            sec.missing.append(f"{s.log_csv}: no epochs logged")
            continue
        logs[s.name] = cols
    if not logs:
        return sec
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.4))
    for k, (name, cols) in enumerate(logs.items()):
        colour = COLOURS[k % len(COLOURS)]
        ep = cols["epoch"]
        total = next((c for c in ("train_loss_s", "train_seg_ct", "train_loss") if c in cols), None)
        if total is not None:
            a1.plot(ep, cols[total], "-o", ms=3, color=colour, label=f"{name} ({total[6:]})")
        if "val_loss" in cols:
            a2.plot(ep, cols["val_loss"], "-o", ms=3, color=colour, label=name)
        if "val_dice" in cols:
            a3.plot(ep, cols["val_dice"], "-o", ms=3, color=colour, label=name)
            best = [e for e, b in zip(ep, cols.get("best", [])) if b == 1]
            if best:
                a3.axvline(best[-1], color=colour, ls=":", lw=1)
    for ax, title in ((a1, "training loss (segmentation)"), (a2, "validation loss"),
                      (a3, "validation Dice (dotted: best epoch)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    sec.blocks.append(writer.figure(fig, "curves", "Per-epoch training loss, validation loss and validation Dice "
                                    "of every run (validation on whole scans or patches, as configured)."))
    for name, cols in logs.items():
        terms = [c for c in cols if c.startswith("train_")]
        if len(terms) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        for t in terms:
            vals = cols[t]
            if any(math.isfinite(v) and v > 0 for v in vals):
                ax.plot(cols["epoch"], vals, "-o", ms=2, label=t[6:])
        ax.set_yscale("log")
        ax.set_title(f"{name}: every training loss term", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=6, ncol=3)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        sec.blocks.append(writer.figure(fig, f"loss_terms_{safe_name(name)}", f"{name}: per-epoch mean of each "
                                        "training loss term (log scale)"))
    return sec
