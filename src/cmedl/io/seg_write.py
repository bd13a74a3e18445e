"""Writing a mask (or a probability map) as a DICOM Segmentation with highdicom.

The public entry point is :func:`cmedl.io.dicom_export.export_mask` (checks, then writes
atomically); :func:`segmentation_from_mask` builds the object from the mask and the source series'
headers **in the mask's z order** (highdicom pairs the frames of ``pixel_array`` with
``source_images`` by position, and takes the plane positions, orientation, spacing, frame of
reference, patient and study from them).

One segment: label = the ROI name, SegmentedPropertyCategory SCT 49755003 "Morphologically abnormal
structure", SegmentedPropertyType SCT 108369006 "Neoplasm" (CID 7151/7159 lesion types, what
TotalSegmentator and the IDC use for tumours), algorithm AUTOMATIC, identification "cmedl" +
version, family DCM 123110 "Artificial Intelligence". BINARY from ``mask > 0``; FRACTIONAL
(PROBABILITY, 8 bits: stored ``round(255 p)``) from a probability volume. Frames of slices without
any segmented voxel are omitted (highdicom's default; readers fill them with zeros); an all-empty
mask keeps all frames.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cmedl.errors import InputError
from cmedl.io.image import Volume
from cmedl.io.rtstruct_write import (
    LENGTH_WARNING,
    SOFTWARE_NAME,
    TYPE2_PATIENT_STUDY_TAGS,
    software_version,
)

#: segmented property category and type of the one segment (a neoplasm)
CATEGORY = codes.cid7150.MorphologicallyAbnormalStructure  # SCT 49755003
PROPERTY_TYPE = codes.SCT.Neoplasm  # SCT 108369006
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110
SEG_SERIES_NUMBER = 9002


def _complete(sources: Sequence[Dataset]) -> list[Dataset]:
    """Shallow copies of the headers with missing Type 2 patient/study attributes set empty:
    highdicom reads them unconditionally, and minimal series (e.g. written by other tools) often
    lack them."""
    out = []
    for ds in sources:
        missing = [t for t in TYPE2_PATIENT_STUDY_TAGS if t not in ds]
        if missing:
            ds = copy.copy(ds)
            for tag in missing:
                setattr(ds, tag, "")
        out.append(ds)
    return out


def segmentation_from_mask(
    mask: Volume,
    sources: Sequence[Dataset],
    *,
    label: str = "GTV",
    colour: tuple[int, int, int] = (255, 0, 0),
    probabilities: Volume | None = None,
) -> hd.seg.Segmentation:
    """A one-segment DICOM Segmentation of ``mask > 0`` (BINARY), or of ``probabilities``
    (FRACTIONAL).

    Args:
        mask: the mask on the grid of the source series (checked by the caller).
        sources: the series' headers (pixel data not needed), one per slice in the order of
            ``mask.array``'s z axis.
        label: SegmentLabel (the ROI name).
        colour: RGB display colour (stored as CIELab, as the standard requires).
        probabilities: values in [0, 1] on the same grid; when given, the SEG is FRACTIONAL
            (PROBABILITY) and ``mask`` is not used for it.
    """
    if len(sources) != mask.shape[0]:
        raise InputError(f"{len(sources)} source images for a mask of {mask.shape[0]} slices")
    version = software_version()
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=CATEGORY,
        segmented_property_type=PROPERTY_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=SOFTWARE_NAME, family=ALGORITHM_FAMILY, version=version
        ),
        display_color=hd.color.CIELabColor.from_rgb(*(int(v) for v in colour)),
    )
    if probabilities is None:
        pixels = (np.asarray(mask.array) > 0).astype(np.uint8)
        kind = hd.seg.SegmentationTypeValues.BINARY
    else:
        pixels = np.asarray(probabilities.array, dtype=np.float32)
        kind = hd.seg.SegmentationTypeValues.FRACTIONAL
    with warnings.catch_warnings():
        # highdicom warns about single-component person names ("ANONYMOUS"), common in research
        # data; pydicom about source values over their VR's length, which are copied verbatim
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        warnings.filterwarnings("ignore", message=LENGTH_WARNING)
        return hd.seg.Segmentation(
            source_images=_complete(sources),
            pixel_array=pixels,
            segmentation_type=kind,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=SOFTWARE_NAME,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=version,
            device_serial_number="0",
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=255,
            content_label="SEGMENTATION",
            content_description=f"automatic segmentation by {SOFTWARE_NAME} {version}"[:64],
            series_description=f"{label} ({SOFTWARE_NAME})"[:64],
        )
