"""What ``cmedl data import`` can read, and the cases it will import from an image-file folder.

Layouts (:func:`detect_layout` tells them apart; ``--layout`` names one):

- ``dicom-series``: a folder holding one DICOM image series (the single-case import of
  :func:`cmedl.data.importer.import_dicom_case`).
- ``dicom-cohort``: one sub-folder per patient, holding image series and RTSTRUCTs anywhere under it
  (:mod:`cmedl.data.dicom_cohort`).
- ``folders``: ``images/`` + optional ``labels/`` of NIfTI / NRRD / MHA files, matched by case id (the
  file name without its image suffix; no channel suffix is stripped). An image without a label is
  imported unlabelled; a label without an image is an error (a naming mistake).
- ``nnunet``: nnU-Net's raw data set (v1 or v2 ``dataset.json``): ``imagesTr/<id>_0000<ending>`` +
  ``labelsTr/<id><ending>`` (every training image needs its label), ``imagesTs/`` (imported
  unlabelled, split ``test``, unless ``labelsTs/`` has its label). Single-channel only. The tumour
  label is ``--label-value`` or the one foreground label of ``dataset.json`` (else the one whose
  name says tumour / GTV / lesion / ...); it becomes a 0/1 mask.

Everything here only lists files and reads headers: :func:`plan_folders` and :func:`plan_nnunet`
return :class:`PlannedCase` items or raise a one-line :class:`InputError` naming the file, before
any voxel is read or anything written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from cmedl.data.manifest import MODALITIES
from cmedl.errors import InputError, did_you_mean
from cmedl.io.dicom_scan import has_dicom_preamble, is_image_header
from cmedl.io.image import IMAGE_SUFFIXES, Volume, check_same_geometry

LAYOUTS = ("auto", "dicom-series", "dicom-cohort", "folders", "nnunet")
#: a case id: letters, digits, ``._-`` (no path separators); same rule as the single-case import
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: label names taken for "the tumour" when dataset.json has several foreground labels
TUMOUR_NAME = re.compile(r"tumou?r|gtv|lesion|cancer|carcinoma|neoplasm|nodule|mass|malignan", re.I)
_CHANNEL = re.compile(r"^(?P<id>.+)_(?P<channel>\d{4})$")
#: nnU-Net channel-name tokens -> modality (nnU-Net only gives "CT" a meaning; the rest are names)
_MR_TOKENS = {"mr", "mri", "t1", "t2", "t1w", "t2w", "t1c", "t1ce", "t1gd", "flair", "adc", "dwi", "pd",
              "hbv", "dixon", "bold"}


@dataclass
class PlannedCase:
    """One case to import, as found by a layout planner (nothing read yet beyond headers).

    For image files ``image``/``label`` are files and ``label_values`` the label values that become
    1 (None: the label must already be 0/1). For DICOM, ``image`` is the series folder,
    ``series_uid`` the series, ``rtstruct`` + ``rois`` the ROIs whose union is the label."""

    case_id: str
    patient_id: str
    modality: str
    image: Path
    label: Path | None = None
    split: str | None = None  # None: the patient's split in the manifest, else train
    label_values: tuple[int, ...] | None = None
    series_uid: str | None = None
    rtstruct: Path | None = None
    rois: tuple[str, ...] = ()
    note: str = ""  # how it was found, for the report line
    inputs: list[Path] = field(default_factory=list)  # files and folders it reads


# ---------------------------------------------------------------------------------- detection
def image_stem(path: Path) -> str | None:
    """``path``'s name without its image suffix (``a.nii.gz`` -> ``a``), or None if not an image file."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _dicom_candidates(folder: Path) -> list[Path]:
    """Files directly in ``folder`` that look like DICOM (preamble, or a ``.dcm`` name)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and not p.name.startswith(".")
            and (p.suffix.lower() == ".dcm" or has_dicom_preamble(p))]


def _holds_image_series(folder: Path) -> bool:
    """Whether a file directly in ``folder`` is a DICOM image (not only RTSTRUCTs & co.); stops at
    the first image header, so a series folder costs one header read."""
    for path in _dicom_candidates(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - any parse failure: not a DICOM image
            continue
        if is_image_header(ds):
            return True
    return False


def _has_dicom_below(folder: Path) -> bool:
    """Whether any folder under ``folder`` holds a DICOM file."""
    return any(_dicom_candidates(Path(d)) for d, _, _ in os.walk(folder) if Path(d) != folder)


def detect_layout(source: str | Path, single: bool = False) -> str:
    """The layout of ``source`` (see the module docstring), decided in this order: ``dataset.json``
    or ``imagesTr/`` -> nnunet; ``images/`` -> folders; DICOM images directly inside -> dicom-series;
    DICOM files in sub-folders -> dicom-cohort. ``single`` (a case id was given) makes any folder that
    is not nnU-Net or images/ a dicom-series, as before cohorts were read (the series reader then says
    what is wrong with it).

    Raises:
        InputError: ``source`` missing, a file, or none of the layouts.
    """
    source = Path(source)
    if not source.exists():
        raise InputError("no such folder", source)
    if not source.is_dir():
        raise InputError("is not a folder; pass the folder holding the DICOM series or the data set",
                         source)
    if (source / "dataset.json").is_file() or (source / "imagesTr").is_dir():
        return "nnunet"
    if (source / "images").is_dir():
        return "folders"
    if single or _holds_image_series(source):
        return "dicom-series"
    if _has_dicom_below(source):
        return "dicom-cohort"
    raise InputError(
        "cannot tell the layout: no DICOM files, no images/ folder (images/ + labels/) and no nnU-Net "
        "dataset.json / imagesTr/; pass --layout dicom-series|dicom-cohort|folders|nnunet", source)


# ---------------------------------------------------------------------------------- headers
def header_volume(path: Path) -> Volume:
    """A :class:`Volume` with the geometry of the image file ``path`` and no voxels (a zero-size-in-
    memory broadcast array): what the geometry checks before any voxel is read compare."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError("cannot read the image header (unreadable or not an image file)",
                         path) from None
    size = reader.GetSize()
    if len(size) != 3 or reader.GetNumberOfComponents() != 1:
        what = (f"{len(size)}D" if len(size) != 3
                else f"{reader.GetNumberOfComponents()} components per voxel")
        raise InputError(f"image is {what} (size {size}); a single-channel 3D volume is required", path)
    voxels = np.broadcast_to(np.zeros((), np.uint8), tuple(reversed(size)))  # no memory
    try:
        return Volume(voxels, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    except InputError as exc:
        raise InputError(str(exc), path) from None


def check_pair_headers(image: Path, label: Path) -> None:
    """GeometryError naming both files if their headers put them on different grids."""
    check_same_geometry(header_volume(image), header_volume(label), image, label)


def _image_files(folder: Path, what: str) -> list[tuple[str, Path]]:
    """(stem, path) of the image files in ``folder``, sorted; anything else (hidden files aside) is an
    InputError naming it, as is a stem used twice."""
    seen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = image_stem(path) if path.is_file() else None
        if stem is None:
            kind = "a folder" if path.is_dir() else "not an image file"
            raise InputError(f"is {kind}; {what} holds NIfTI, NRRD or MHA files only "
                             f"({', '.join(IMAGE_SUFFIXES)})", path)
        if stem in seen:
            raise InputError(f"duplicate case id '{stem}': also {seen[stem].name}", path)
        seen[stem] = path
    return sorted(seen.items())


def _check_id(case_id: str, path: Path) -> None:
    if not CASE_ID.match(case_id):
        raise InputError(f"case id '{case_id}' is not valid (letters, digits, '.', '_' and '-'); "
                         "rename the file", path)


def check_modality(modality: str | None) -> str | None:
    if modality is None:
        return None
    if modality.lower() not in MODALITIES:
        raise InputError(did_you_mean(modality.lower(), MODALITIES, "modality"))
    return modality.lower()


# ---------------------------------------------------------------------------------- folders
def plan_folders(
    source: Path, modality: str | None, label_value: int | None = None
) -> list[PlannedCase]:
    """The cases of an ``images/`` + ``labels/`` folder (see the module docstring).

    Raises:
        InputError: no modality, a file that is not an image, a duplicate id, a label without its
            image, an image/label pair on different grids (from the headers), ...
    """
    images_dir, labels_dir = source / "images", source / "labels"
    if not images_dir.is_dir():
        raise InputError("has no images/ folder (a folder data set is images/ + labels/)", source)
    if modality is None:
        raise InputError("image files do not say their modality; pass --modality ct, cbct or mr",
                         images_dir)
    images = _image_files(images_dir, "images/")
    labels = dict(_image_files(labels_dir, "labels/")) if labels_dir.is_dir() else {}
    if not images:
        raise InputError("holds no image files", images_dir)
    ids = {stem for stem, _ in images}
    for stem, path in labels.items():
        if stem not in ids:
            hint = (" (the images have an nnU-Net channel suffix: pass --layout nnunet, or rename them)"
                    if f"{stem}_0000" in ids else "")
            raise InputError(f"has no image '{stem}' in {images_dir}{hint}", path)
    values = None if label_value is None else (int(label_value),)
    cases = []
    for stem, path in images:
        _check_id(stem, path)
        label = labels.get(stem)
        if label is not None:
            check_pair_headers(path, label)
        cases.append(PlannedCase(stem, stem, modality, path, label, None, values,
                                 inputs=[path] + ([label] if label else [])))
    return cases


# ---------------------------------------------------------------------------------- nnU-Net
def _read_dataset_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError("missing: an nnU-Net raw data set needs its dataset.json", path)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({getattr(exc, 'msg', exc)})", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None
    if not isinstance(raw, dict):
        raise InputError("must be a JSON object", path)
    return raw


def nnunet_channels(raw: dict, path: Path) -> dict[str, str]:
    """Channel index -> name (v2 ``channel_names``, v1 ``modality``)."""
    channels = raw.get("channel_names", raw.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError("has no 'channel_names' (v2) or 'modality' (v1) object", path)
    return {str(k): str(v) for k, v in channels.items()}


def modality_from_channel(name: str) -> str | None:
    """ct / cbct / mr from an nnU-Net channel name (``CT``, ``T2``, ``ADC`` ...); None if it does
    not say."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower())) - {""}
    if "cbct" in tokens or {"cone", "beam"} <= tokens:
        return "cbct"
    if "ct" in tokens:
        return "ct"
    return "mr" if tokens & _MR_TOKENS else None


def nnunet_labels(raw: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """Label name -> its values (v2 ``{"name": value | [values]}``, v1 ``{"value": "name"}``)."""
    labels = raw.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError("has no 'labels' object", path)
    out: dict[str, tuple[int, ...]] = {}
    try:
        if all(isinstance(v, str) for v in labels.values()):  # v1: {"0": "background", "1": "tumour"}
            for value, name in labels.items():
                out[name] = (int(value),)
        else:
            for name, value in labels.items():
                values = value if isinstance(value, list) else [value]
                out[str(name)] = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"'labels' must map names to integer values, got {labels}", path) from None
    return out


def choose_label(
    labels: dict[str, tuple[int, ...]], label_value: int | None, path: Path
) -> tuple[tuple[int, ...], str]:
    """The label values that become the tumour mask, and why (for the report)."""
    if label_value is not None:
        return (int(label_value),), f"label value {label_value} (--label-value)"
    fg = {n: v for n, v in labels.items() if v != (0,) and n.lower() != "background"}
    listing = ", ".join(f"{n}={'/'.join(map(str, v))}" for n, v in labels.items())
    if len(fg) == 1:
        name, values = next(iter(fg.items()))
        return values, f"label '{name}'"
    tumour = {n: v for n, v in fg.items() if TUMOUR_NAME.search(n)}
    if len(tumour) == 1:
        name, values = next(iter(tumour.items()))
        return values, f"label '{name}' (named like a tumour)"
    raise InputError(f"cannot tell which label is the tumour ({listing}); pass --label-value N", path)


def _nnunet_images(folder: Path, ending: str | None, n_channels: int) -> list[tuple[str, Path]]:
    """(case id, image path) of ``imagesTr``/``imagesTs``: ``<id>_0000<ending>`` files."""
    out = []
    for stem, path in _image_files(folder, folder.name + "/"):
        if ending is not None and not path.name.endswith(ending):
            raise InputError(f"does not end with the data set's file_ending '{ending}'", path)
        m = _CHANNEL.match(stem)
        if m is None:
            raise InputError("has no nnU-Net channel suffix (<case>_0000<ending>)", path)
        if m["channel"] != "0000":
            raise InputError(f"is channel {int(m['channel'])} of case '{m['id']}': cmedl imports "
                             f"single-channel data sets only (dataset.json lists {n_channels} "
                             "channel(s))", path)
        out.append((m["id"], path))
    return out


def _nnunet_set(source: Path, images: str, labels: str, ending: str | None, n_channels: int,
                required: bool) -> list[tuple[str, Path, Path | None]]:
    """(id, image, label) of one image folder; with ``required`` every image needs its label."""
    img_dir, lab_dir = source / images, source / labels
    if not img_dir.is_dir():
        return []
    found = _nnunet_images(img_dir, ending, n_channels)
    label_files = dict(_image_files(lab_dir, labels + "/")) if lab_dir.is_dir() else {}
    ids = {i for i, _ in found}
    for stem, path in label_files.items():
        if stem not in ids:
            raise InputError(f"has no image {images}/{stem}_0000{ending or '.nii.gz'}", path)
    out = []
    for case_id, path in found:
        label = label_files.get(case_id)
        if label is None and required:
            missing = lab_dir / (case_id + (ending or ".nii.gz"))
            raise InputError(f"has no label: {missing} is missing", path)
        out.append((case_id, path, label))
    return out


def plan_nnunet(
    source: Path, modality: str | None, label_value: int | None = None
) -> tuple[list[PlannedCase], str]:
    """The cases of an nnU-Net raw data set and the label choice (see the module docstring).

    Raises:
        InputError: naming ``dataset.json`` (missing, several channels, unknown modality, no tumour
            label) or the file at fault (missing label, orphan label, channel suffix, duplicate id,
            image/label on different grids).
    """
    meta_path = source / "dataset.json"
    raw = _read_dataset_json(meta_path)
    channels = nnunet_channels(raw, meta_path)
    if len(channels) != 1:
        names = ", ".join(f"{k}: {v}" for k, v in sorted(channels.items()))
        raise InputError(f"has {len(channels)} channels ({names}); cmedl imports single-channel "
                         "data sets only", meta_path)
    channel = next(iter(channels.values()))
    modality = modality or modality_from_channel(channel)
    if modality is None:
        raise InputError(f"channel '{channel}' does not say the modality; pass --modality ct, cbct "
                         "or mr", meta_path)
    values, how = choose_label(nnunet_labels(raw, meta_path), label_value, meta_path)
    ending = raw.get("file_ending") if isinstance(raw.get("file_ending"), str) else None
    if not (source / "imagesTr").is_dir() and not (source / "imagesTs").is_dir():
        raise InputError("has neither imagesTr/ nor imagesTs/", source)
    train = _nnunet_set(source, "imagesTr", "labelsTr", ending, len(channels), required=True)
    test = _nnunet_set(source, "imagesTs", "labelsTs", ending, len(channels), required=False)
    seen = {i: p for i, p, _ in train}
    cases = []
    for group, split in ((train, None), (test, "test")):
        for case_id, image, label in group:
            if split == "test" and case_id in seen:
                raise InputError(f"duplicate case id '{case_id}': also {seen[case_id]}", image)
            _check_id(case_id, image)
            if label is not None:
                check_pair_headers(image, label)
            cases.append(PlannedCase(case_id, case_id, modality, image, label, split,
                                     None if label is None else values,
                                     inputs=[image] + ([label] if label else [])))
    if not cases:
        raise InputError("holds no images in imagesTr/ or imagesTs/", source)
    return cases, f"channel '{channel}' -> {modality}, tumour = {how}"
