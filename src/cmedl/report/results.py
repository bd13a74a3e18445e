"""Per-case results of every source: read from its CSV, or computed from its masks and the references.

The references are the labelled test cases of the student modality in the data manifest
(:func:`test_references`). A source with a per-case CSV (demo ``<method>.csv``, study
``results.csv``, a CSV given on the command line) is read as it is; a source with masks only is
scored here on the cases it shares with the references (:func:`cmedl.evaluation.evaluate.evaluate_pairs`),
and the cases it lacks are named. Each source's rows are written to ``tables/cases_<name>.csv``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmedl.data.manifest import Case, Manifest
from cmedl.errors import CmedlError
from cmedl.evaluation.evaluate import evaluate_pairs
from cmedl.evaluation.pairing import CasePair, list_masks
from cmedl.evaluation.results_csv import read_results_csv, write_results_csv
from cmedl.io.outputs import writing
from cmedl.report.sources import Source


def safe_name(name: str) -> str:
    """A file-name-safe form of a source or group name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


@dataclass
class References:
    """The expert masks of the test split: case id -> (case, image path, label path)."""

    modality: str | None
    cases: dict[str, Case] = field(default_factory=dict)
    manifest: Manifest | None = None

    def image(self, cid: str) -> Path:
        return self.manifest.image_path(self.cases[cid])  # type: ignore[union-attr]

    def label(self, cid: str) -> Path:
        return self.manifest.label_path(self.cases[cid])  # type: ignore[union-attr,return-value]

    def kind(self, cid: str) -> str:
        c = self.cases.get(cid)
        return (c.tumour_kind or "") if c is not None else ""


def test_references(manifest: Manifest | None) -> References:
    """Labelled test cases of the student modality (CT or CBCT: whichever has more labelled test cases)."""
    if manifest is None:
        return References(None)
    tests = [c for c in manifest.select(split="test", labelled=True) if c.modality != "mr"]
    if not tests:
        return References(None, manifest=manifest)
    mods = [c.modality for c in tests]
    modality = max(set(mods), key=mods.count)
    return References(modality, {c.id: c for c in tests if c.modality == modality}, manifest)


@dataclass
class MethodResults:
    """Per-case rows of one source (empty when none could be had) and what went wrong."""

    rows: list[dict[str, object]] = field(default_factory=list)
    csv: Path | None = None
    problem: str | None = None

    def by_case(self) -> dict[str, dict[str, object]]:
        return {str(r["case_id"]): r for r in self.rows}


def mask_pairs(folder: Path, refs: References) -> tuple[list[CasePair], list[str]]:
    """Pairs of ``folder``'s masks with the reference masks of the same case ids, and the reference case
    ids without a mask in ``folder``."""
    found = list_masks(folder)
    pairs = [CasePair(cid, found[cid][0], refs.label(cid), refs.modality) for cid in sorted(refs.cases)
             if cid in found]
    return pairs, sorted(set(refs.cases) - set(found))


def load_results(src: Source, refs: References, out: Path, tolerance_mm: float | None = None) -> MethodResults:
    """The source's per-case rows (see the module docstring); never raises for bad inputs."""
    path = out / "tables" / f"cases_{safe_name(src.name)}.csv"
    if src.results_csv is not None:
        try:
            rows = read_results_csv(src.results_csv)
        except CmedlError as exc:
            return MethodResults(problem=f"{src.name}: {exc}")
        if not rows:
            return MethodResults(problem=f"{src.name}: {src.results_csv} has no cases")
        for r in rows:
            if not r.get("tumour_kind"):
                r["tumour_kind"] = refs.kind(str(r["case_id"]))
        with writing(path):
            write_results_csv(rows, path)
        return MethodResults(rows, path)
    if src.pred_dir is None:
        return MethodResults(problem=f"{src.name}: no per-case results and no predicted masks "
                                     f"(segment the test split into {src.run_dir or 'a folder'}/pred)")
    if not refs.cases:
        return MethodResults(problem=f"{src.name}: masks in {src.pred_dir} but no labelled test cases to score "
                                     "them against (--data MANIFEST)")
    try:
        pairs, lacking = mask_pairs(src.pred_dir, refs)
        if not pairs:
            return MethodResults(problem=f"{src.name}: {src.pred_dir} has no mask of a labelled test case")
        rows = evaluate_pairs(pairs, tolerance_mm=tolerance_mm)
    except CmedlError as exc:
        return MethodResults(problem=f"{src.name}: {exc}")
    for r in rows:
        r["tumour_kind"] = refs.kind(str(r["case_id"]))
    with writing(path):
        write_results_csv(rows, path)
    problem = (f"{src.name}: {len(lacking)} test case(s) without a mask in {src.pred_dir} "
               f"(e.g. {', '.join(lacking[:3])}); scored on the other {len(rows)}") if lacking else None
    return MethodResults(rows, path, problem)


def common_cases(results: Sequence[MethodResults]) -> list[str]:
    sets = [set(r.by_case()) for r in results if r.rows]
    return sorted(set.intersection(*sets)) if sets else []
