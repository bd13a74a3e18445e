"""Finding the DICOM series in a folder: group files by series, tell images from other objects.

Used by the series reader (:mod:`cmedl.io.dicom_read`); :func:`list_dicom_series` is public through
:mod:`cmedl.io.dicom`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cmedl.errors import InputError

#: Modalities of DICOM objects that are never part of an image volume.
NON_IMAGE_MODALITIES = frozenset(
    {
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTRECORD",
        "SEG",
        "REG",
        "PR",
        "KO",
        "SR",
        "DOC",
        "RWV",
        "PLAN",
    }
)


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder."""

    uid: str
    modality: str
    description: str
    n_files: int
    is_image: bool = True
    files: tuple[Path, ...] = field(default=(), repr=False, compare=False)


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file (no pixel data), or ``None`` if it is not a DICOM object."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # Old exports lack the 128-byte preamble + "DICM"; try those only for likely names.
        if path.suffix.lower() not in ("", ".dcm", ".ima", ".dicom"):
            return None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
            return None
        return ds if "SeriesInstanceUID" in ds and "SOPClassUID" in ds else None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None


def is_image_header(ds: Dataset) -> bool:
    """Whether a header is an image slice: not RTSTRUCT & co., and has the geometry tags."""
    return (
        str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES
        and "Rows" in ds
        and "Columns" in ds
        and "ImagePositionPatient" in ds
        and "ImageOrientationPatient" in ds
    )


def scan_folder(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Group the DICOM files directly inside ``folder`` by SeriesInstanceUID (no recursion)."""
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    return series


def series_info(uid: str, items: list[tuple[Path, Dataset]]) -> SeriesInfo:
    """Summary of one series from the headers :func:`scan_folder` grouped under ``uid``."""
    first = items[0][1]
    return SeriesInfo(
        uid=uid,
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        n_files=len(items),
        is_image=any(is_image_header(ds) for _, ds in items),
        files=tuple(p for p, _ in items),
    )


def check_folder(folder: str | Path) -> Path:
    """``folder`` as a Path; InputError unless it is an existing folder."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError("no such folder", folder)
    if not folder.is_dir():
        raise InputError("is not a folder; pass the folder holding the DICOM series", folder)
    return folder


def has_dicom_preamble(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (128-byte preamble + ``DICM``); False if unreadable."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """List the DICOM series directly inside ``folder`` (image and non-image), sorted by UID.

    Raises:
        InputError: ``folder`` does not exist or is not a folder.
    """
    folder = check_folder(folder)
    return [series_info(uid, items) for uid, items in sorted(scan_folder(folder).items())]


def describe_series(infos: Iterable[SeriesInfo]) -> str:
    """One line listing the series (uid, modality, file count, description), for error messages."""
    return "; ".join(
        f"{s.uid} ({s.modality or '?'}, {s.n_files} files{', ' + s.description if s.description else ''})"
        for s in infos
    )
