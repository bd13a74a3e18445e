"""``cmedl report``: one self-contained HTML page with the papers' tables and figures for a user's study.

:func:`build_report` reads demo, study, run and prediction folders (:mod:`.sources`), the data manifest
and optional rater folders, and writes into ``out``:

- ``index.html``: every section below, figures embedded (opens offline, also when copied alone);
- ``figures/*.png``: every figure, for papers; ``tables/*.csv``: every table and each source's per-case rows.

Sections: inputs, cohort (:mod:`.cohort`), results tables and per-case plots (:mod:`.tables`), training
curves (:mod:`.curves`), example segmentations and pseudo-MRI with its histogram KL (:mod:`.examples`),
t-SNE and feature maps (:mod:`.features`), test-time dropout (:mod:`.dropout`), inter-rater analysis
(:mod:`.raters`). A section that lacks its inputs (a run without a log, a study whose runs have other
case sets, rater folders with other cases or grids) says what is missing; a section that fails
unexpectedly is reported as such and the others go on. The report fails only when nothing could be
reported (no source with results, curves or a network).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmedl.data.manifest import Manifest
from cmedl.errors import CmedlError, InputError
from cmedl.evaluation.metrics import DEFAULT_TOLERANCE_MM
from cmedl.io.outputs import check_output_folder, writing
from cmedl.methods.recipe import TestTimeModel
from cmedl.report.cohort import cohort_section
from cmedl.report.curves import curves_section
from cmedl.report.dropout import dropout_section
from cmedl.report.examples import examples_section, pmri_section
from cmedl.report.features import features_sections, load_model
from cmedl.report.html import Section, Writer, render_page, write_page
from cmedl.report.raters import raters_section
from cmedl.report.results import MethodResults, load_results, test_references
from cmedl.report.sources import find_inputs
from cmedl.report.tables import results_section

#: sections that count as "something reported" (inputs and cohort alone do not)
CONTENT_SECTIONS = ("results", "training", "examples", "pmri", "tsne", "featuremaps", "dropout", "raters")


@dataclass
class ReportResult:
    out_dir: Path
    index: Path
    seconds: float
    #: section key -> "content" | "missing-only"
    sections: dict[str, str] = field(default_factory=dict)
    #: source name -> silhouette score of tumour vs background (features, t-SNE embedding)
    silhouette: dict[str, tuple[float, float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _guarded(key: str, title: str, make: Callable[[], Section]) -> Section:
    """Run one section builder; an unexpected failure becomes that section's notice, not the report's end."""
    try:
        return make()
    except CmedlError as exc:
        sec = Section(key, title)
        sec.missing.append(str(exc))
        return sec
    except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the other sections
        sec = Section(key, title)
        sec.missing.append(f"section failed: {type(exc).__name__}: {exc}")
        return sec


def build_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    data: str | Path | None = None,
    refs: Sequence[str] = (),
    title: str | None = None,
    log: Callable[[str], None] = print,
) -> ReportResult:
    """Write the report of ``paths`` (``[NAME=]PATH``: demo, study, run or prediction folders, per-case
    CSVs) into ``out``; ``data`` is the data manifest (default: a demo folder's), ``refs`` are
    ``NAME=DIR`` rater folders. Returns what was written; raises :class:`InputError` when nothing
    could be reported."""
    t0 = time.perf_counter()
    inputs = find_inputs([str(p) for p in paths], list(refs))
    data_path = Path(data) if data is not None else inputs.data
    read = [Path(str(p).partition("=")[2] if "=" in str(p) and not Path(p).exists() else p) for p in paths]
    read += [p for p in (data_path, *inputs.raters.values()) if p is not None]
    out = check_output_folder(out, inputs=[p for p in read if p.exists()])
    if not inputs.sources and not inputs.raters:
        raise InputError("nothing to report: " + ("; ".join(inputs.problems) or "no folders given"))
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    writer = Writer(out)
    timings: dict[str, float] = {}

    def timed(key: str, title: str, make: Callable[[], Section]) -> Section:
        t = time.perf_counter()
        sec = _guarded(key, title, make)
        timings[key] = time.perf_counter() - t
        log(f"  {title}: {'done' if sec.has_content else 'nothing to show'} ({timings[key]:.1f} s)")
        return sec

    manifest: Manifest | None = None
    overview = Section("inputs", "Inputs")
    if inputs.kinds:
        overview.blocks.append("<ul>" + "".join(f"<li>{html.escape(k)}</li>" for k in inputs.kinds) + "</ul>")
    overview.missing += inputs.problems
    if data_path is not None:
        try:
            manifest = Manifest.load(data_path)
        except CmedlError as exc:
            overview.missing.append(str(exc))
    references = test_references(manifest)
    results: dict[str, MethodResults] = {}
    for s in inputs.sources:
        tol = None if references.modality is None else DEFAULT_TOLERANCE_MM.get(references.modality)
        results[s.name] = load_results(s, references, out, tol)
    rows = [[s.name, s.method or "?", s.group, str(s.run_dir or "-"), str(s.pred_dir or "-"),
             len(results[s.name].rows)] for s in inputs.sources]
    if rows:
        overview.blocks.append(writer.table(["name", "method", "group", "run folder", "masks", "scored cases"], rows,
                                            "sources", "Methods found"))
    models: dict[str, TestTimeModel] = {}
    model_notes: list[str] = []
    for s in inputs.sources:
        if s.checkpoint is not None:
            try:
                models[s.name] = load_model(s)
            except CmedlError as exc:
                model_notes.append(f"{s.name}: network not loaded ({exc})")
    overview.missing += model_notes
    sources = inputs.sources
    tol_mm = next((float(r["tolerance_mm"]) for res in results.values() for r in res.rows[:1]
                   if "tolerance_mm" in r and r["tolerance_mm"] == r["tolerance_mm"]),
                  DEFAULT_TOLERANCE_MM.get(references.modality or "ct", 2.0))
    log(f"report of {len(sources)} method(s) on {len(references.cases)} test case(s) -> {out}")
    sections = [overview,
                timed("cohort", "Cohort", lambda: cohort_section(manifest, writer, data_path)),
                timed("results", "Results", lambda: results_section(inputs.groups(), results, writer)),
                timed("training", "Training and validation curves", lambda: curves_section(sources, writer)),
                timed("examples", "Example segmentations", lambda: examples_section(sources, results, references, writer)),
                timed("pmri", "Pseudo-MRI", lambda: pmri_section(sources, references, writer))]
    scores: dict[str, tuple[float, float]] = {}

    def feature_sections() -> Section:
        tsne, fmaps, found = features_sections(sources, references, writer, models)
        scores.update(found)
        sections.append(tsne)
        return fmaps

    fmaps = timed("featuremaps", "t-SNE and feature maps", feature_sections)
    sections.append(fmaps)
    sections.append(timed("dropout", "Test-time dropout", lambda: dropout_section(sources, references, writer, models)))
    sections.append(timed("raters", "Inter-rater analysis",
                          lambda: raters_section(inputs.raters, sources, references, writer, tol_mm)))
    status = {s.key: ("content" if s.has_content else "missing-only") for s in sections}
    if not any(status.get(k) == "content" for k in CONTENT_SECTIONS):
        lines = [m for s in sections for m in s.missing]
        raise InputError("nothing could be reported: " + ("; ".join(lines[:4]) or "no results, logs or networks"))
    seconds = time.perf_counter() - t0
    page = render_page(title or "cmedl report", f"{len(sources)} method(s): {', '.join(s.name for s in sources)}; "
                       f"made by cmedl report in {seconds:.0f} s", sections)
    index = write_page(out / "index.html", page)
    log(f"report written to {index} ({seconds:.1f} s)")
    return ReportResult(out, index, seconds, status, scores, [m for s in sections for m in s.missing], timings)
