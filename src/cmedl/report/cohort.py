"""The report's cohort section: cases per split and modality, voxel spacing and size ranges, tumour
volumes and kinds (from the data manifest; image headers read without their voxels, labels read whole)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmedl.data.manifest import Manifest
from cmedl.report.html import Section, Writer

SPLITS = ("train", "val", "test")
#: labels read for tumour volumes at most (a larger cohort gives volumes of an evenly spaced subset)
MAX_LABELS = 400


def _header(path: Path) -> tuple[tuple[float, ...], tuple[int, ...]] | None:
    """Spacing (x, y, z) and size (x, y, z) from the image header only."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(reader.GetSpacing()), tuple(reader.GetSize())
    except RuntimeError:
        return None


def _range(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


def _tumour_ml(path: Path) -> float | None:
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError:
        return None
    arr = sitk.GetArrayViewFromImage(img)
    return float((arr > 0).sum()) * float(np.prod(img.GetSpacing())) / 1000.0


def cohort_section(manifest: Manifest | None, writer: Writer, data_path: Path | None) -> Section:
    """Cases per split x modality, spacing and size ranges per modality, tumour volumes per split and
    kind, and the tumour kinds per split."""
    sec = Section("cohort", "Cohort")
    if manifest is None:
        sec.missing.append("no data manifest (--data MANIFEST): cohort, references and images unavailable")
        return sec
    sec.text(f"Data manifest {data_path}: {len(manifest.cases)} cases of "
             f"{len({c.patient_id for c in manifest.cases})} patients.")
    mods = sorted({c.modality for c in manifest.cases})
    splits = [s for s in SPLITS if any(c.split == s for c in manifest.cases)]
    counts = Counter((c.split, c.modality) for c in manifest.cases)
    rows = [[m, *[counts[(s, m)] for s in splits], sum(counts[(s, m)] for s in splits),
             sum(1 for c in manifest.cases if c.modality == m and c.label)] for m in mods]
    sec.blocks.append(writer.table(["modality", *splits, "total", "labelled"], rows, "cohort_cases",
                                   "Cases per split and modality"))
    geo_rows = []
    unreadable = 0
    for m in mods:
        headers = [_header(manifest.image_path(c)) for c in manifest.cases if c.modality == m]
        unreadable += sum(h is None for h in headers)
        ok = [h for h in headers if h is not None]
        if not ok:
            continue
        sp = np.array([h[0] for h in ok])
        sz = np.array([h[1] for h in ok])
        geo_rows.append([m, len(ok), _range(list(sp[:, 0])), _range(list(sp[:, 1])), _range(list(sp[:, 2])),
                         _range(list(sz[:, 0]), "{:.0f}"), _range(list(sz[:, 1]), "{:.0f}"),
                         _range(list(sz[:, 2]), "{:.0f}")])
    if geo_rows:
        sec.blocks.append(writer.table(
            ["modality", "images", "spacing x (mm)", "spacing y (mm)", "spacing z (mm)", "size x", "size y",
             "size z"], geo_rows, "cohort_geometry", "Voxel spacing and image size ranges"))
    if unreadable:
        sec.missing.append(f"{unreadable} image(s) listed in the manifest could not be read")
    labelled = [c for c in manifest.cases if c.label and c.modality != "mr"]
    step = max(1, int(np.ceil(len(labelled) / MAX_LABELS)))
    vols: dict[tuple[str, str], list[float]] = {}
    for c in labelled[::step]:
        ml = _tumour_ml(manifest.label_path(c))  # type: ignore[arg-type]
        if ml is not None:
            vols.setdefault((c.split, c.tumour_kind or "all"), []).append(ml)
    if vols:
        vrows = []
        for (split, kind), v in sorted(vols.items(), key=lambda kv: (SPLITS.index(kv[0][0]) if kv[0][0] in SPLITS
                                                                     else 9, kv[0][1])):
            a = np.array(v)
            vrows.append([split, kind, len(a), f"{np.median(a):.1f}", f"{np.percentile(a, 25):.1f}-"
                          f"{np.percentile(a, 75):.1f}", f"{a.min():.1f}-{a.max():.1f}"])
        note = "" if step == 1 else f" (every {step}th labelled case)"
        sec.blocks.append(writer.table(["split", "tumour kind", "n", "median (ml)", "IQR (ml)", "range (ml)"],
                                       vrows, "cohort_tumour_volumes",
                                       f"Tumour volumes of the labelled CT/CBCT cases{note}"))
    if not any(c.tumour_kind for c in manifest.cases):
        sec.note("No tumour kinds recorded in the manifest: results are reported overall only.")
    return sec
