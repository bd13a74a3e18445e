"""The per-case results CSV: its columns, writing and reading it (``inf`` and NaN kept)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmedl.errors import InputError
from cmedl.io.volume import atomic_path

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
TEXT_COLUMNS = frozenset({"case_id", "modality", "shape_zyx", "pred_path", "ref_path", "tumour_kind"})


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
