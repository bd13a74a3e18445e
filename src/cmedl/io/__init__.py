"""Reading and writing volumes; DICOM series and RTSTRUCT import."""

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
