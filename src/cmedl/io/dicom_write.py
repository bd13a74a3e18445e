"""Writing DICOM: minimal uncompressed CT/MR series, and the empty instance every writer starts from.

:func:`write_dicom_series` is used by the tests and to export synthetic data to DICOM tools;
:func:`new_dataset` is shared with the RTSTRUCT writer (:mod:`cmedl.io.rtstruct`).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cmedl.errors import InputError
from cmedl.io.atomic import atomic_path
from cmedl.io.image import Volume

#: SOP classes written by :func:`write_dicom_series`.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def new_dataset(sop_class: str, modality: str, patient_id: str) -> Dataset:
    """An empty DICOM instance of ``sop_class`` with its file meta (explicit VR little endian), a new
    SOPInstanceUID, ``Modality`` and ``PatientID`` set (used by the series and RTSTRUCT writers)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    return ds


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "ANONYMOUS",
    series_description: str = "",
    file_names: list[str] | None = None,
) -> list[Path]:
    """Write ``volume`` as an uncompressed single-frame CT or MR series, one file per z slice.

    Stored values are ``round((value - rescale_intercept) / rescale_slope)`` as int16, so
    reading back gives ``stored * slope + intercept``. The geometry (spacing, origin, oblique
    direction) is written to ImagePositionPatient / ImageOrientationPatient / PixelSpacing; a
    left-handed direction reads back with the z axis flipped (same physical image). UIDs that
    are not given are generated. ``file_names`` (one per slice) replaces ``slice_0000.dcm``, ...

    Returns:
        The written paths, in slice order.
    """
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise InputError(f"can write CT or MR series, not '{modality}'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume.shape
    if file_names is not None and len(file_names) != nz:
        raise InputError(f"file_names has {len(file_names)} names for {nz} slices")
    stored = np.rint((volume.array.astype(np.float64) - rescale_intercept) / rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise InputError("values do not fit int16 with this rescale slope/intercept")
    stored = stored.astype(np.int16)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    d = volume.direction_matrix
    iop = [*d[:, 0], *d[:, 1]]
    today = datetime.date.today().strftime("%Y%m%d")
    paths = []
    for k in range(nz):
        ds = new_dataset(sop_class, modality, patient_id)
        ds.PatientName = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.StudyDate = today
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [
            f"{v:.6f}" for v in volume.index_to_physical(np.array([0.0, 0.0, k]))
        ]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.PixelSpacing = [f"{volume.spacing[1]:.6f}", f"{volume.spacing[0]:.6f}"]
        ds.SliceThickness = f"{volume.spacing[2]:.6f}"
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / (file_names[k] if file_names is not None else f"slice_{k:04d}.dcm")
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
