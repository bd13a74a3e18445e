"""Export a mask on the grid of a DICOM series as an RT Structure Set and/or a DICOM Segmentation.

:func:`export_mask` is the one entry point (``cmedl segment --format rtstruct,seg`` and
``cmedl data export`` call it; :func:`export_mask_file` reads the mask from a file first). Before it
writes anything it checks, each failure a one-line :class:`~cmedl.errors.InputError` naming the
file:

- the format names (:func:`check_export_formats`: did-you-mean for a typo), the output name, ROI
  name and colour; the output folder (:func:`~cmedl.io.outputs.check_output_folder`: no output may
  replace an input);
- the series: read with :func:`~cmedl.io.dicom.read_dicom_series` (its geometry checks); every slice
  must have a SOPClassUID and a unique SOPInstanceUID (an RTSTRUCT or SEG references each image by
  it), and one FrameOfReferenceUID and StudyInstanceUID shared by all slices;
- the mask: the same grid as the series (:func:`~cmedl.io.image.check_same_geometry`:
  :class:`~cmedl.errors.GeometryError` naming both; the same voxels in another axis order or
  direction, as saved by tools that reorient to RAS, are put back in the series' order exactly,
  :func:`on_grid_of`), finite, a single label (0 and one other value); probabilities (FRACTIONAL
  SEG) on the same grid, within [0, 1].

The headers are put in the volume's z order by mapping each slice's ImagePositionPatient through the
volume's own geometry (:meth:`Volume.physical_to_index`), so the slice order is the reader's by
construction (sorted along the normal, whatever the file names, InstanceNumbers or direction).

All outputs are built in memory, then written through :func:`~cmedl.io.atomic.atomic_path` in one
block: a failure leaves no output (nor a partial one) under a final name.

**Empty mask**: both files are still written (an RTSTRUCT ROI without contours, a SEG whose segment
is empty) and a warning is logged. "No tumour found" is a result that should reach the planning
system as an explicit, named structure rather than as a missing file that looks like a failed run;
readers that need contours (cmedl's own importer) refuse the empty ROI with a one-line message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from cmedl.errors import InputError
from cmedl.io.atomic import atomic_path
from cmedl.io.choices import parse_choices
from cmedl.io.dicom_read import read_dicom_series
from cmedl.io.dicom_scan import is_image_header, scan_folder
from cmedl.io.image import IMAGE_SUFFIXES, Volume, check_same_geometry
from cmedl.io.outputs import check_output_folder, writing
from cmedl.io.rtstruct_write import rtstruct_from_mask
from cmedl.io.seg_write import segmentation_from_mask
from cmedl.io.volume import read_volume

_log = logging.getLogger(__name__)

EXPORT_FORMATS = ("rtstruct", "seg")
#: largest distance, in voxels, of a header's position from its point on the volume's grid (the
#: reader accepts slice steps within 10 % of the median, so a position may be a fraction of a slice
#: off)
_POSITION_TOL = 0.5


def check_export_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The export formats as a tuple in :data:`EXPORT_FORMATS` order, each once.

    Items may themselves be comma-separated (``["rtstruct,seg"]``); case and blanks are ignored.

    Raises:
        InputError: one line: an unknown name (did-you-mean), or no format at all.
    """
    return parse_choices(formats, EXPORT_FORMATS, "export format")


def parse_colour(text: str) -> tuple[int, int, int]:
    """``"255,0,0"`` -> ``(255, 0, 0)``; InputError (one line) unless three integers in 0-255."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise InputError(f"colour '{text}' must be three integers 0-255 as R,G,B (e.g. 255,0,0)")
    return values  # type: ignore[return-value]


def output_paths(out_dir: str | Path, name: str, formats: Sequence[str]) -> list[Path]:
    """``<out_dir>/<name>_<format>.dcm`` for each format (checked names)."""
    if not name or name != Path(name).name or name in (".", ".."):
        raise InputError(f"output name '{name}' must be a plain file name (no folders)")
    return [Path(out_dir) / f"{name}_{fmt}.dcm" for fmt in check_export_formats(formats)]


@dataclass(frozen=True)
class SourceSeries:
    """A DICOM series ready to be referenced: its volume and its headers in the volume's z order."""

    folder: Path
    volume: Volume
    headers: tuple[Dataset, ...]
    paths: tuple[Path, ...]


def read_source_series(folder: str | Path, series_uid: str | None = None) -> SourceSeries:
    """Read a series (:func:`read_dicom_series`) and its headers in the volume's z order, checked
    for what an RTSTRUCT/SEG must reference (see the module docstring)."""
    volume = read_dicom_series(folder, series_uid)
    folder = Path(folder)
    uid = volume.meta["SeriesInstanceUID"]
    items = [(p, ds) for p, ds in scan_folder(folder).get(uid, []) if is_image_header(ds)]
    non_loc = [
        (p, ds)
        for p, ds in items
        if "LOCALIZER" not in [str(t).upper() for t in ds.get("ImageType", [])]
    ]
    items = non_loc or items  # the reader's rule: localizers mixed into a series are not slices
    nz = volume.shape[0]
    if len(items) != nz:
        raise InputError(f"the series has {len(items)} image files for {nz} slices", folder)
    # The reader's order (along the normal n = row x col) through the volume's own geometry: the
    # index z of a position is its distance along n over the spacing, so sorting by it is the
    # reader's sort.
    index = np.stack(
        [
            volume.physical_to_index(np.asarray([float(v) for v in ds.ImagePositionPatient]))
            for _, ds in items
        ]
    )
    order = np.argsort(index[:, 2], kind="stable")
    for k, i in enumerate(order):
        if np.abs(index[i] - (0.0, 0.0, k)).max() > _POSITION_TOL:
            raise InputError(
                f"{items[i][0].name}: its ImagePositionPatient is not slice {k} of the grid",
                folder,
            )
    paths = tuple(items[i][0] for i in order)
    headers = tuple(items[i][1] for i in order)
    _check_references(paths, headers)
    return SourceSeries(folder, volume, headers, paths)


def _check_references(paths: Sequence[Path], headers: Sequence[Dataset]) -> None:
    """Every slice has a SOP class and a unique SOP instance UID; one frame of reference and
    study."""
    seen: dict[str, Path] = {}
    for path, ds in zip(paths, headers):
        for tag in ("SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID", "StudyInstanceUID"):
            if not str(ds.get(tag, "") or "").strip():
                why = (
                    "an RTSTRUCT or SEG references every image by it"
                    if tag.startswith("SOP")
                    else "contours and segments cannot be tied to the patient frame without it"
                    if tag == "FrameOfReferenceUID"
                    else "the export belongs to the image's study"
                )
                raise InputError(f"has no {tag}; cannot export to DICOM ({why})", path)
        uid = str(ds.SOPInstanceUID)
        if uid in seen:
            raise InputError(
                f"has the same SOPInstanceUID as {seen[uid].name}; cannot reference it", path
            )
        seen[uid] = path
        for tag in ("FrameOfReferenceUID", "StudyInstanceUID"):
            if str(ds.get(tag)) != str(headers[0].get(tag)):
                raise InputError(
                    f"{tag} differs from {paths[0].name}'s: a mixed series cannot be referenced",
                    path,
                )


def _check_mask(mask: Volume, name: str) -> None:
    values = np.unique(np.asarray(mask.array))
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError("mask has NaN or infinite values", name)
    labels = values[values != 0]
    if labels.size > 1:
        shown = ", ".join(f"{v:g}" for v in labels[:5].astype(float))
        raise InputError(
            f"mask has {labels.size} labels ({shown}{', ...' if labels.size > 5 else ''}); "
            "export needs a binary mask (one structure)",
            name,
        )


def on_grid_of(volume: Volume, reference: Volume, name: str | Path, ref_name: str | Path) -> Volume:
    """``volume`` on ``reference``'s grid: itself when the grids are the same; its axes permuted and
    flipped when it holds the very same voxels in another axis order or direction (a mask saved by a
    tool that reorients, e.g. to RAS: exact, no interpolation); else a one-line GeometryError."""
    if volume.geometry_difference(reference) is None:
        return volume
    steps = np.linalg.solve(
        reference.direction_matrix * np.asarray(reference.spacing),
        volume.direction_matrix * np.asarray(volume.spacing),
    )  # column v: one step along volume axis v, in reference voxels
    signed = np.round(steps)
    offset = reference.physical_to_index(np.asarray(volume.origin))  # volume voxel 0, ref. indices
    if (
        np.abs(steps - signed).max() < 1e-3
        and sorted(np.abs(signed).sum(axis=0).tolist()) == [1.0, 1.0, 1.0]
        and np.abs(signed).sum(axis=1).tolist() == [1.0, 1.0, 1.0]
    ):
        array = np.asarray(volume.array).transpose(2, 1, 0)  # [x, y, z] of volume
        perm = [
            int(np.flatnonzero(signed[r])[0]) for r in range(3)
        ]  # reference axis r <- axis perm[r]
        array = array.transpose(perm)
        for r in range(3):
            if signed[r, perm[r]] < 0:
                array = np.flip(array, axis=r)
        start = [
            offset[r] - (array.shape[r] - 1 if signed[r, perm[r]] < 0 else 0) for r in range(3)
        ]
        if array.shape[::-1] == reference.shape and np.abs(start).max() < 1e-3:
            _log.info("%s: reoriented to the axis order of %s (same voxels)", name, ref_name)
            meta = dict(volume.meta)
            return Volume(
                np.ascontiguousarray(array.transpose(2, 1, 0)),
                reference.spacing,
                reference.origin,
                reference.direction,
                meta,
            )
    check_same_geometry(volume, reference, name, ref_name)  # raises: describes the difference
    return volume


def _check_probabilities(p: Volume, name: str) -> None:
    a = np.asarray(p.array, dtype=np.float64)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise InputError("probabilities must be finite values in [0, 1]", name)


def _source_file(volume: Volume) -> str | None:
    """The file a volume was read from (``meta["source"]``), if that is a file: a mask made with
    ``image.with_array`` carries the source of its image (e.g. the DICOM folder), which is not its
    name."""
    source = volume.meta.get("source")
    return source if source and Path(source).is_file() else None


def export_mask(
    mask: Volume,
    series_dir: str | Path,
    out_dir: str | Path,
    formats: Sequence[str],
    *,
    name: str,
    roi_name: str = "GTV",
    colour: tuple[int, int, int] = (255, 0, 0),
    probabilities: Volume | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Write <out_dir>/<name>_rtstruct.dcm and/or <out_dir>/<name>_seg.dcm for `mask` on the grid
    of the DICOM series in series_dir.

    Args:
        mask: binary mask (0 and one other value) on the series' grid; ``meta["source"]``, when it
            is a file, names it in messages (and may not be overwritten).
        series_dir: folder holding the DICOM series the mask was made on.
        out_dir: output folder (created if needed; may be ``series_dir``).
        formats: ``"rtstruct"`` and/or ``"seg"`` (:func:`check_export_formats`).
        name: file name stem of the outputs.
        roi_name: ROI name (RTSTRUCT) and segment label (SEG); at most 64 characters.
        colour: display colour, RGB 0-255.
        probabilities: optional probability volume on the same grid: the SEG is then FRACTIONAL.
        series_uid: SeriesInstanceUID when ``series_dir`` holds several image series.

    Returns:
        The written paths, in :data:`EXPORT_FORMATS` order.

    Raises:
        InputError / GeometryError: one line naming the offending file (module docstring); nothing
        is written then.
    """
    fmts = check_export_formats(formats)
    roi_name = str(roi_name).strip()
    if not roi_name or len(roi_name) > 64 or "\\" in roi_name:
        raise InputError(f"ROI name '{roi_name}' must be 1-64 characters without a backslash")
    colour = parse_colour(",".join(str(v) for v in colour))
    planned = output_paths(out_dir, name, fmts)
    mask_name = _source_file(mask) or "mask"
    prob_name = (
        (_source_file(probabilities) or "probabilities") if probabilities is not None else ""
    )
    prob_file = _source_file(probabilities) if probabilities is not None else None
    inputs = [Path(n) for n in (_source_file(mask), prob_file) if n]
    if Path(series_dir).is_dir():
        inputs += [p for p in Path(series_dir).iterdir() if p.is_file()]
    check_output_folder(out_dir, inputs=inputs, planned=planned)

    source = read_source_series(series_dir, series_uid)
    mask = on_grid_of(mask, source.volume, mask_name, source.folder)
    _check_mask(mask, mask_name)
    if probabilities is not None:
        probabilities = on_grid_of(probabilities, source.volume, prob_name, source.folder)
        _check_probabilities(probabilities, prob_name)
    if not np.asarray(mask.array).any():
        _log.warning(
            "%s: the mask is empty: the RTSTRUCT ROI '%s' has no contours and the SEG segment is "
            "empty",
            mask_name,
            roi_name,
        )

    datasets: list[Dataset] = []
    for fmt in fmts:
        if fmt == "rtstruct":
            datasets.append(
                rtstruct_from_mask(mask, source.headers, roi_name=roi_name, colour=colour)
            )
        else:
            datasets.append(
                segmentation_from_mask(
                    mask, source.headers, label=roi_name, colour=colour, probabilities=probabilities
                )
            )
    with contextlib.ExitStack() as stack:  # every file renamed into place only when all are written
        for path, ds in zip(planned, datasets):
            stack.enter_context(writing(path))
            tmp = stack.enter_context(atomic_path(path))
            ds.save_as(tmp, enforce_file_format=True)
    return planned


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def export_mask_file(
    mask: str | Path,
    series_dir: str | Path,
    out_dir: str | Path,
    formats: Sequence[str],
    *,
    name: str | None = None,
    roi_name: str = "GTV",
    colour: tuple[int, int, int] | str = (255, 0, 0),
    probabilities: str | Path | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """:func:`export_mask` for a mask file (NIfTI, NRRD, MHA; ``name`` defaults to its stem), with
    ``colour`` also accepted as ``"R,G,B"``: what ``cmedl data export`` calls."""
    fmts = check_export_formats(formats)  # before reading anything
    colour = parse_colour(colour) if isinstance(colour, str) else colour
    mask_path = Path(mask)
    if mask_path.is_dir():
        raise InputError("is a folder; pass the mask file (NIfTI, NRRD or MHA)", mask_path)
    planned_name = name or _stem(mask_path)
    volume = read_volume(mask_path)
    volume.meta["source"] = str(mask_path)
    prob = None
    if probabilities is not None:
        prob = read_volume(probabilities)
        prob.meta["source"] = str(probabilities)
    return export_mask(
        volume,
        series_dir,
        out_dir,
        fmts,
        name=planned_name,
        roi_name=roi_name,
        colour=colour,
        probabilities=prob,
        series_uid=series_uid,
    )
