"""Evaluate folders (or manifests) of predicted masks against reference masks: per-case tables.

Sources (``pred`` and ``ref`` alike):

- a **folder** of mask files (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ...; not recursive): the
  case id is the file name without its suffix (``ct_003.nii.gz`` -> ``ct_003``);
- a **manifest** (a ``.json`` file, or a folder holding ``manifest.json`` and no mask files): the
  ``label`` of every labelled case (optionally of one ``split``), keyed by case id.

Predictions and references are matched by case id; a prediction without a reference (or the
reverse) is an error, as is a pair on different voxel grids (unless ``resample_pred``: the
prediction is resampled onto the reference grid with nearest-neighbour interpolation, SimpleITK),
a non-binary mask without ``label``, NaN voxels or an unreadable file. Every error is one line
naming the file(s); nothing is written unless every case succeeds.

The surface-Dice tolerance of a case is ``tolerance_mm`` if given, else the default of
``modality`` (if given), else of the reference manifest's case modality, else CT (2 mm); see
:data:`cmedl.evaluation.metrics.DEFAULT_TOLERANCE_MM`.

Each case gives one row (a plain dict, see :data:`CSV_COLUMNS`) with every metric of
:func:`~cmedl.evaluation.metrics.compute_all` and
:func:`~cmedl.evaluation.objects.object_metrics`, the spacing (mm, z/y/x), shape and voxel counts.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmedl.errors import GeometryError, InputError, did_you_mean
from cmedl.evaluation.metrics import DEFAULT_TOLERANCE_MM, compute_all
from cmedl.evaluation.objects import DEFAULT_OVERLAP, object_metrics
from cmedl.evaluation.stats import summarize
from cmedl.io.volume import IMAGE_SUFFIXES, Volume, atomic_path, read_volume

#: Columns of the per-case CSV, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "case_id", "modality", "tolerance_mm",
    "dsc", "sdsc", "hd95", "hd", "assd",
    "volume_ref_ml", "volume_pred_ml", "rvd", "n_voxels_ref", "n_voxels_pred",
    "precision", "recall", "f1", "dsc_tp",
    "n_objects_ref", "n_objects_pred", "tp_ref", "tp_pred", "fp", "fn",
    "spacing_z_mm", "spacing_y_mm", "spacing_x_mm", "shape_zyx", "resampled",
    "pred_path", "ref_path",
)
#: Columns that are text, not numbers.
TEXT_COLUMNS = frozenset({"case_id", "modality", "shape_zyx", "pred_path", "ref_path"})

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


@dataclass(frozen=True)
class CasePair:
    """One prediction/reference pair to evaluate."""

    case_id: str
    pred: Path
    ref: Path
    modality: str | None = None  # from the reference (or prediction) manifest, if any


# ---------------------------------------------------------------------------- sources
def _strip_suffix(name: str) -> str | None:
    low = name.lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return None


def list_masks(source: str | Path, split: str | None = None) -> dict[str, tuple[Path, str | None]]:
    """Map case id -> (mask path, modality or None) for a folder of masks or a manifest."""
    from cmedl.data.manifest import SPLITS, Manifest

    source = Path(source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    if split is not None and split not in SPLITS:
        raise InputError(did_you_mean(split, SPLITS, "split"))
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise InputError("expected a folder of masks or a manifest (.json)", source)
        return _manifest_masks(Manifest.load(source), source, split)
    found: dict[str, tuple[Path, str | None]] = {}
    for p in sorted(source.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        cid = _strip_suffix(p.name)
        if cid is None or p.name.lower().endswith((".raw", ".zraw")):
            continue
        if cid in found:
            raise InputError(f"two masks for case '{cid}': {found[cid][0].name} and {p.name}", source)
        found[cid] = (p, None)
    if not found and (source / "manifest.json").exists():
        return _manifest_masks(Manifest.load(source / "manifest.json"), source / "manifest.json", split)
    if not found:
        raise InputError(f"no mask files ({', '.join(IMAGE_SUFFIXES)}) found", source)
    return found


def _manifest_masks(manifest, path: Path, split: str | None) -> dict[str, tuple[Path, str | None]]:  # type: ignore[no-untyped-def]
    cases = manifest.select(split=split, labelled=True)
    if not cases:
        what = f" in split '{split}'" if split else ""
        raise InputError(f"manifest has no labelled cases{what}", path)
    return {c.id: (manifest.label_path(c), c.modality) for c in cases}


def _few(ids: Iterable[str], k: int = 5) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids)} cases)" if len(ids) > k else ""
    return ", ".join(ids[:k]) + more


def match_cases(pred: str | Path, ref: str | Path, split: str | None = None) -> list[CasePair]:
    """Pair predictions with references by case id; every case must have both (else InputError)."""
    p_map, r_map = list_masks(pred, split), list_masks(ref, split)
    no_ref = set(p_map) - set(r_map)
    no_pred = set(r_map) - set(p_map)
    if no_ref:
        raise InputError(f"predictions without a reference in {ref}: {_few(no_ref)}", pred)
    if no_pred:
        hint = " (evaluate one split of a manifest with --split)" if split is None and str(ref).endswith(".json") else ""
        raise InputError(f"references without a prediction in {pred}: {_few(no_pred)}{hint}", ref)
    return [
        CasePair(cid, p_map[cid][0], r_map[cid][0], r_map[cid][1] or p_map[cid][1]) for cid in sorted(r_map)
    ]


# ---------------------------------------------------------------------------- one case
def load_mask(path: str | Path, label: int | None = None) -> Volume:
    """Read a mask file as a bool Volume: ``array == label`` if given, else it must be binary (0/1)."""
    vol = read_volume(path)
    arr = vol.array
    if vol.meta.get("has_nonfinite") == "1":
        raise InputError("mask contains NaN or infinite voxels", path)
    if label is not None:
        return vol.with_array(arr == label)
    nonzero = arr != 0
    values = arr[nonzero]
    if values.size and not (values == 1).all():
        shown = np.unique(values)[:6].tolist()
        raise InputError(f"mask is not binary (non-zero values {shown}); pass --label to select one", path)
    return vol.with_array(nonzero)


def _resample_nearest(moving: Volume, reference: Volume) -> Volume:
    import SimpleITK as sitk

    img = sitk.Resample(
        moving.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8
    )
    return reference.with_array(sitk.GetArrayFromImage(img).astype(bool))


def resolve_tolerance(tolerance_mm: float | None, modality: str | None, case_modality: str | None) -> float:
    """Surface-Dice tolerance for a case: explicit > ``modality`` default > case modality > CT."""
    if tolerance_mm is not None:
        if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
            raise InputError(f"tolerance must be a non-negative number of mm, got {tolerance_mm}")
        return float(tolerance_mm)
    mod = modality or case_modality or "ct"
    if mod not in DEFAULT_TOLERANCE_MM:
        raise InputError(did_you_mean(mod, DEFAULT_TOLERANCE_MM, "modality"))
    return DEFAULT_TOLERANCE_MM[mod]


def evaluate_case(
    pair: CasePair,
    tolerance_mm: float | None = None,
    modality: str | None = None,
    label: int | None = None,
    resample_pred: bool = False,
    overlap: float = DEFAULT_OVERLAP,
) -> dict[str, object]:
    """Read, check and score one pair; returns one per-case row (keys: :data:`CSV_COLUMNS`)."""
    ref = load_mask(pair.ref, label)
    pred = load_mask(pair.pred, label)
    resampled = False
    diff = pred.geometry_difference(ref)
    if diff is not None:
        if not resample_pred:
            raise GeometryError(
                f"{pair.pred} and {pair.ref} are on different voxel grids: {diff} (pass --resample-pred "
                "to resample the prediction onto the reference grid)"
            )
        pred = _resample_nearest(pred, ref)
        resampled = True
    tol = resolve_tolerance(tolerance_mm, modality, pair.modality)
    spacing = ref.spacing_zyx
    row: dict[str, object] = {
        "case_id": pair.case_id,
        "modality": modality or pair.modality or "",
        "tolerance_mm": tol,
    }
    row.update(compute_all(pred.array, ref.array, spacing, tol))
    row.update(object_metrics(pred.array, ref.array, spacing, overlap=overlap))
    row.update(
        spacing_z_mm=spacing[0], spacing_y_mm=spacing[1], spacing_x_mm=spacing[2],
        shape_zyx="x".join(str(s) for s in ref.shape), resampled=int(resampled),
        pred_path=str(pair.pred), ref_path=str(pair.ref),
    )
    return {c: row[c] for c in CSV_COLUMNS}


def _evaluate_case_star(args: tuple) -> dict[str, object]:  # picklable entry point for workers
    return evaluate_case(*args)


# ---------------------------------------------------------------------------- many cases
def evaluate_pairs(
    pairs: Sequence[CasePair],
    tolerance_mm: float | None = None,
    modality: str | None = None,
    label: int | None = None,
    resample_pred: bool = False,
    overlap: float = DEFAULT_OVERLAP,
    workers: int = 1,
    on_case_done: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Evaluate ``pairs`` (in ``workers`` processes when > 1); rows sorted by case id.

    ``on_case_done(case_id)`` is called as each case finishes (for progress bars). The first
    failing case raises its error and cancels the rest.
    """
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    args = [(p, tolerance_mm, modality, label, resample_pred, overlap) for p in pairs]
    rows: list[dict[str, object]] = []
    if workers == 1 or len(pairs) <= 1:
        for a in args:
            rows.append(_evaluate_case_star(a))
            if on_case_done:
                on_case_done(a[0].case_id)
    else:
        # spawn, not fork: the parent may hold torch/OpenMP threads that a fork would deadlock on.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(pairs)), mp_context=ctx) as pool:
            futures = {pool.submit(_evaluate_case_star, a): a[0].case_id for a in args}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    exc = f.exception()
                    if exc is not None:
                        for g in pending:
                            g.cancel()
                        raise exc
                    rows.append(f.result())
                    if on_case_done:
                        on_case_done(futures[f])
    rows.sort(key=lambda r: str(r["case_id"]))
    return rows


def evaluate_folders(
    pred: str | Path,
    ref: str | Path,
    out: str | Path | None = None,
    *,
    tolerance_mm: float | None = None,
    modality: str | None = None,
    label: int | None = None,
    resample_pred: bool = False,
    split: str | None = None,
    overlap: float = DEFAULT_OVERLAP,
    workers: int = 1,
    progress: bool = False,
) -> list[dict[str, object]]:
    """Evaluate every case of ``pred`` against ``ref`` (folders or manifests; see module docstring).

    Args:
        pred, ref: folder of masks or manifest, each.
        out: per-case CSV to write (atomically, only if every case succeeds); None to skip.
        tolerance_mm: surface-Dice tolerance for all cases (default: per modality).
        modality: ``ct``, ``cbct`` or ``mr``: default tolerance for all cases.
        label: evaluate ``mask == label`` (for label maps); default: masks must be binary.
        resample_pred: resample predictions on another grid onto the reference (nearest neighbour).
        split: only this split of manifests.
        overlap: object detection threshold (fraction of a reference object covered).
        workers: parallel processes.
        progress: show a progress bar on stderr.

    Returns:
        Per-case rows (dicts keyed by :data:`CSV_COLUMNS`), sorted by case id.
    """
    if modality is not None and modality not in DEFAULT_TOLERANCE_MM:
        raise InputError(did_you_mean(modality, DEFAULT_TOLERANCE_MM, "modality"))
    if tolerance_mm is not None:
        resolve_tolerance(tolerance_mm, None, None)
    pairs = match_cases(pred, ref, split)
    kwargs = {
        "tolerance_mm": tolerance_mm, "modality": modality, "label": label,
        "resample_pred": resample_pred, "overlap": overlap, "workers": workers,
    }
    if progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
        ) as bar:
            task = bar.add_task("", total=len(pairs))
            rows = evaluate_pairs(pairs, **kwargs, on_case_done=lambda cid: bar.update(task, advance=1, description=cid))  # type: ignore[arg-type]
    else:
        rows = evaluate_pairs(pairs, **kwargs)  # type: ignore[arg-type]
    if out is not None:
        write_results_csv(rows, out)
    return rows


# ---------------------------------------------------------------------------- CSV
def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "nan" if math.isnan(f) else ("inf" if f == math.inf else ("-inf" if f == -math.inf else f"{f:.10g}"))
    return "" if v is None else str(v)


def write_results_csv(rows: Sequence[dict[str, object]], path: str | Path) -> Path:
    """Write per-case rows to CSV atomically (columns :data:`CSV_COLUMNS` first, then any extra)."""
    path = Path(path)
    extra = [k for r in rows for k in r if k not in CSV_COLUMNS]
    columns = list(CSV_COLUMNS) + list(dict.fromkeys(extra))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_fmt(r.get(c)) for c in columns])
    return path


def read_results_csv(path: str | Path) -> list[dict[str, object]]:
    """Read a per-case CSV (as written by :func:`write_results_csv`): numbers parsed to float."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such results file", path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "case_id" not in reader.fieldnames:
                raise InputError("not a per-case results CSV (no 'case_id' column)", path)
            rows: list[dict[str, object]] = []
            seen: set[str] = set()
            for line, raw in enumerate(reader, start=2):
                row: dict[str, object] = {}
                for k, v in raw.items():
                    if k is None:
                        raise InputError(f"line {line}: more values than columns", path)
                    if k in TEXT_COLUMNS:
                        row[k] = v or ""
                    else:
                        try:
                            row[k] = float(v) if v not in ("", None) else math.nan
                        except ValueError:
                            raise InputError(f"line {line}: column '{k}' is not a number: {v!r}", path) from None
                cid = str(row["case_id"])
                if cid in seen:
                    raise InputError(f"duplicate case id '{cid}'", path)
                seen.add(cid)
                rows.append(row)
    except UnicodeDecodeError:
        raise InputError("not a text CSV file", path) from None
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc})", path) from None
    return rows


# ---------------------------------------------------------------------------- summaries
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


__all__ = [
    "CSV_COLUMNS",
    "CasePair",
    "evaluate_case",
    "evaluate_folders",
    "evaluate_pairs",
    "format_summary",
    "format_text_table",
    "list_masks",
    "load_mask",
    "match_cases",
    "read_results_csv",
    "resolve_tolerance",
    "summary_table",
    "write_results_csv",
]
