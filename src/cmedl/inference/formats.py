"""Output formats of ``cmedl segment``: NIfTI volumes and, for DICOM series inputs, an RT Structure Set
and a DICOM Segmentation (``--format nifti,rtstruct,seg``, any subset; default ``nifti``).

Per case ``<case>`` (the input's name, or the manifest case id):

- ``nifti``: ``<case>.nii.gz`` (uint8 mask), plus ``<case>_prob.nii.gz`` with ``probabilities`` and
  ``<case>_sd.nii.gz`` with MC dropout;
- ``rtstruct``: ``<case>_rtstruct.dcm``, one ROI (``roi_name``, ``colour``) referencing the input series;
- ``seg``: ``<case>_seg.dcm``, BINARY, or FRACTIONAL (the probabilities) with ``probabilities``.

The DICOM files are written by :func:`cmedl.io.dicom_export.export_mask` (its checks: SOP Instance
UIDs, Frame of Reference, the mask on the series' grid; an empty mask still gives both files: an ROI
without contours, an empty segment). RTSTRUCT and SEG reference the DICOM images the mask was drawn
on, so they are refused before any work for an input that is not a DICOM series.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cmedl.errors import InputError
from cmedl.io.choices import parse_choices
from cmedl.io.dicom_export import EXPORT_FORMATS, parse_colour

OUTPUT_FORMATS = ("nifti", *EXPORT_FORMATS)


def check_output_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """The output formats in :data:`OUTPUT_FORMATS` order, each once; items may be comma-separated
    (``"nifti,rtstruct"``), case and blanks are ignored.

    Raises:
        InputError: an unknown name (did-you-mean), or none given.
    """
    return parse_choices(formats, OUTPUT_FORMATS, "output format")


def dicom_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats among ``formats`` that need a DICOM series input."""
    return tuple(f for f in formats if f in EXPORT_FORMATS)


def output_suffixes(formats: Sequence[str], probabilities: bool, mc_dropout: bool) -> list[str]:
    """The files of one case as suffixes of ``<case>``; the first is the case's main output."""
    suffixes: list[str] = []
    if "nifti" in formats:
        suffixes += [".nii.gz", *(["_prob.nii.gz"] if probabilities else []), *(["_sd.nii.gz"] if mc_dropout else [])]
    return suffixes + [f"_{f}.dcm" for f in dicom_formats(formats)]


def check_dicom_inputs(paths: Sequence[Path], formats: Sequence[str]) -> None:
    """RTSTRUCT / SEG outputs need DICOM series inputs (folders): the first other input is refused."""
    wanted = dicom_formats(formats)
    for path in paths:
        if wanted and not Path(path).is_dir():
            raise InputError(f"is not a DICOM series: --format {','.join(wanted)} writes DICOM objects that "
                             "reference the series' images; use --format nifti for image files", path)


def check_roi(roi_name: str, colour: Sequence[int] | str) -> tuple[str, tuple[int, int, int]]:
    """ROI name (1-64 characters, no backslash: DICOM LO) and colour (R,G,B 0-255), checked before any
    work (:func:`~cmedl.io.dicom_export.export_mask` checks them too, but only after a case is segmented)."""
    name = str(roi_name).strip()
    if not name or len(name) > 64 or "\\" in name:
        raise InputError(f"ROI name '{roi_name}' must be 1-64 characters without a backslash")
    text = colour if isinstance(colour, str) else ",".join(str(v) for v in colour)
    return name, parse_colour(text)


__all__ = ["OUTPUT_FORMATS", "check_dicom_inputs", "check_output_formats", "check_roi", "dicom_formats",
           "output_suffixes"]
