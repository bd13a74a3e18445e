"""Reading and writing volumes; DICOM series and RTSTRUCT import.

Modules: :mod:`~cmedl.io.image` (the Volume type), :mod:`~cmedl.io.atomic` (atomic file output),
:mod:`~cmedl.io.volume` (image files and DICOM folders), :mod:`~cmedl.io.dicom` (DICOM series:
``dicom_scan``, ``dicom_read``, ``dicom_write``), :mod:`~cmedl.io.rtstruct` (RTSTRUCT).
"""

from cmedl.io.volume import (
    IMAGE_SUFFIXES,
    Volume,
    atomic_path,
    check_same_geometry,
    read_volume,
    write_volume,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "Volume",
    "atomic_path",
    "check_same_geometry",
    "read_volume",
    "write_volume",
]
