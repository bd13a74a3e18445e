"""Reading DICOM image series into a :class:`~cmedl.io.image.Volume` (and writing simple ones).

:func:`read_dicom_series` reads one series from a folder with pydicom and builds the geometry
itself instead of trusting a generic series reader, because the checks a segmentation pipeline
needs are exactly the ones generic readers skip silently:

- files are grouped by ``SeriesInstanceUID``; non-image objects in the same folder (RTSTRUCT,
  RTPLAN, RTDOSE, SEG, SR, ...) and non-DICOM files are ignored, as are LOCALIZER images mixed
  into an axial series;
- slices are sorted by ``ImagePositionPatient`` projected on the slice normal
  ``n = row x col`` (from ``ImageOrientationPatient``), never by file name or InstanceNumber;
- the slice spacing comes from the positions, never from ``SliceThickness``;
- a series with a missing slice (a gap over 1.5x the median spacing), non-uniform spacing,
  duplicate positions, mixed orientation / pixel spacing / matrix size, a gantry tilt, or a single
  slice is refused with a one-line :class:`~cmedl.errors.InputError` naming the folder;
- ``RescaleSlope``/``RescaleIntercept`` are applied per slice (CT comes out in HU); the result is
  ``int16`` when that is exact, else ``float32``.

Geometry follows :mod:`cmedl.io.image`: array ``[z, y, x]`` (slice, row, column), spacing
``(x, y, z)`` = ``(PixelSpacing[1], PixelSpacing[0], slice step)`` mm, origin = position of the
first slice along the normal, direction columns ``(row cosines, column cosines, normal)`` in LPS.
This is what SimpleITK/ITK produce for the same series, oblique orientations included.

:func:`write_dicom_series` writes a Volume as a minimal uncompressed CT or MR series (used by the
tests and to export synthetic data to DICOM tools).

This module is the public face; the code lives in :mod:`cmedl.io.dicom_scan` (finding series in a
folder), :mod:`cmedl.io.dicom_read` (checking and loading one series) and
:mod:`cmedl.io.dicom_write` (writing series and empty instances).
"""

from cmedl.io.dicom_read import META_TAGS, read_dicom_series
from cmedl.io.dicom_scan import NON_IMAGE_MODALITIES, SeriesInfo, list_dicom_series
from cmedl.io.dicom_write import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    new_dataset,
    write_dicom_series,
)

__all__ = [
    "CT_IMAGE_STORAGE",
    "META_TAGS",
    "MR_IMAGE_STORAGE",
    "NON_IMAGE_MODALITIES",
    "SeriesInfo",
    "list_dicom_series",
    "new_dataset",
    "read_dicom_series",
    "write_dicom_series",
]
