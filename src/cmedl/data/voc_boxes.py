"""PASCAL VOC XML box folders (as distributed with Lung-PET-CT-Dx) -> cmedl box files.

Lung-PET-CT-Dx ships one XML file per annotated DICOM slice, named ``<SOPInstanceUID>.xml``, in one
folder per patient; each holds ``<object><name>..</name><bndbox><xmin>..</xmin><ymin>..</ymin>
<xmax>..</xmax><ymax>..</ymax></bndbox></object>`` elements in pixel coordinates of that slice (x =
column, y = row). :func:`import_voc_boxes` matches the XML names to the SOP Instance UIDs of one DICOM
series, finds each slice's index on the z axis of the volume cmedl reads from that series
(:func:`cmedl.io.dicom.read_dicom_series`, the grid of the imported NIfTI image) and returns a
:class:`~cmedl.data.boxes.BoxSet`.

Coordinate convention (our choice, stated here because the sources disagree): the PASCAL VOC devkit
defines boxes in 1-based pixel indices with ``xmax``/``ymax`` inclusive, i.e. 0-based half-open columns
``[xmin - 1, xmax)``; LabelImg (the tool Lung-PET-CT-Dx was annotated with) writes pixel-edge coordinates,
i.e. ``[xmin, xmax)``, and clamps ``xmin``/``ymin`` to >= 1. The two readings differ by one column on the low
side only, so we take the box that contains both: columns ``[xmin - 1, xmax)`` and rows ``[ymin - 1, ymax)``
(0-based, half-open), with ``xmin = 0`` (neither convention, but seen in other tools) clipped to column 0.
A box one voxel wider than drawn is harmless for a box-guided teacher; a box that cuts tumour is not.
Non-integer coordinates are widened outwards (floor of the minimum, ceiling of the maximum).
A box beyond the slice (``xmax > Columns``) is refused: it was drawn on another image.
"""

from __future__ import annotations

import dataclasses
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from cmedl.data.box_manifest import BoxesResult, rebased_cases
from cmedl.data.boxes import AxialBox, BoxGeometry, BoxSet, box_label_map, write_boxes
from cmedl.data.manifest import Manifest
from cmedl.errors import GeometryError, InputError
from cmedl.io.dicom import read_dicom_series
from cmedl.io.dicom_scan import check_folder, is_image_header, scan_folder
from cmedl.io.image import Volume
from cmedl.io.outputs import check_output_file, check_output_folder, writing


@dataclass(frozen=True)
class VocBox:
    """One ``<object>`` of a VOC file, as written (VOC pixel coordinates)."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass
class VocImport:
    """The boxes of one series and what was (not) matched."""

    boxset: BoxSet
    series_uid: str
    n_files: int  # XML files matched to slices of the series
    unmatched: list[Path] = field(default_factory=list)  # XML files naming no slice of the series
    names: list[str] = field(default_factory=list)  # the distinct <name> labels seen


def _number(obj: ET.Element, tag: str, path: Path) -> float:
    text = obj.findtext(f"bndbox/{tag}")
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"<object><bndbox><{tag}> missing or not a number ({text!r})", path) from None
    if not math.isfinite(value):
        raise InputError(f"<bndbox><{tag}> is not finite ({text!r})", path)
    return value


def read_voc_file(path: str | Path) -> tuple[list[VocBox], tuple[int, int] | None]:
    """The boxes of one VOC XML file and its ``<size>`` ``(width, height)`` when given; one-line InputError."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"not a valid XML file ({exc})", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None
    if root.tag != "annotation":
        raise InputError(f"not a PASCAL VOC annotation (root element <{root.tag}>, expected <annotation>)", path)
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w is not None and h is not None:
        try:
            size = (int(float(w)), int(float(h)))
        except ValueError:
            raise InputError(f"<size> width/height not numbers ({w!r}, {h!r})", path) from None
    boxes = []
    for obj in root.findall("object"):
        b = VocBox((obj.findtext("name") or "").strip(), *(_number(obj, t, path) for t in ("xmin", "ymin", "xmax",
                                                                                             "ymax")))
        if b.xmax < b.xmin or b.ymax < b.ymin:
            raise InputError(f"box xmin..xmax {b.xmin:g}..{b.xmax:g}, ymin..ymax {b.ymin:g}..{b.ymax:g} is "
                             "inverted", path)
        boxes.append(b)
    return boxes, size


def voc_to_axial(box: VocBox, slice_index: int, columns: int, rows: int, path: Path) -> AxialBox:
    """A VOC box on slice ``slice_index`` as 0-based half-open voxel indices (module docstring)."""
    x0, y0 = max(0, math.floor(box.xmin) - 1), max(0, math.floor(box.ymin) - 1)
    x1, y1 = max(math.ceil(box.xmax), x0 + 1), max(math.ceil(box.ymax), y0 + 1)
    if x1 > columns or y1 > rows:
        raise InputError(f"box xmax {box.xmax:g}, ymax {box.ymax:g} is outside the slice ({columns} columns x "
                         f"{rows} rows)", path)
    return AxialBox(slice_index, x0, y0, x1, y1)


def slice_uids(folder: str | Path, volume: Volume, series_uid: str) -> dict[str, int]:
    """SOP Instance UID -> z index in ``volume`` (read from that series) of every image slice of the series."""
    folder = check_folder(folder)
    items = [(p, ds) for p, ds in scan_folder(folder).get(series_uid, []) if is_image_header(ds)]
    out: dict[str, int] = {}
    nz = volume.shape[0]
    for p, ds in items:
        k = float(volume.physical_to_index(np.asarray([float(v) for v in ds.ImagePositionPatient]))[2])
        z = round(k)
        if abs(k - z) > 0.25 or not 0 <= z < nz:  # a localizer or another acquisition in the series
            continue
        out[str(ds.SOPInstanceUID)] = z
    return out


def _xml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".xml"
                  and not p.name.startswith("."))


def import_voc_boxes(voc_folder: str | Path, dicom_folder: str | Path, series_uid: str | None = None,
                     link_lesions: bool = True) -> VocImport:
    """Boxes of the XML files in ``voc_folder`` (searched recursively) that name slices of the DICOM series in
    ``dicom_folder``, on that series' grid. XML files naming other slices are listed in ``unmatched``; none
    matching is an InputError. With ``link_lesions``, boxes whose union is 26-connected across slices get one
    ``lesion`` id (a 3D lesion drawn slice by slice)."""
    voc_folder = check_folder(voc_folder)
    volume = read_dicom_series(dicom_folder, series_uid)
    uid = volume.meta.get("SeriesInstanceUID", series_uid or "")
    uids = slice_uids(dicom_folder, volume, uid)
    files = _xml_files(voc_folder)
    if not files:
        raise InputError("no .xml files (PASCAL VOC box annotations) in this folder", voc_folder)
    _, rows, cols = volume.shape
    boxes, unmatched, names, n = [], [], set(), 0
    for f in files:
        z = uids.get(f.stem)
        if z is None:
            unmatched.append(f)
            continue
        n += 1
        vboxes, size = read_voc_file(f)
        if size is not None and size != (cols, rows) and size != (0, 0):
            raise InputError(f"<size> {size[0]} x {size[1]} differs from the DICOM slice ({cols} x {rows})", f)
        for b in vboxes:
            boxes.append(voc_to_axial(b, z, cols, rows, f))
            names.add(b.name)
    if n == 0:
        raise InputError(f"none of the {len(files)} XML files is named after a slice (SOP Instance UID) of series "
                         f"{uid} in {dicom_folder}", voc_folder)
    boxset = BoxSet(tuple(boxes), BoxGeometry.of(volume))
    if link_lesions and boxes:
        boxset = link_boxes(boxset)
    return VocImport(boxset, uid, n, unmatched, sorted(names))


def link_boxes(boxset: BoxSet) -> BoxSet:
    """The same boxes with ``lesion`` = the 26-connected component of the boxes' union each lies in."""
    comps, _ = ndimage.label(box_label_map(boxset) > 0, ndimage.generate_binary_structure(3, 3))
    out = [AxialBox(b.slice, b.x0, b.y0, b.x1, b.y1, int(comps[b.slice, b.y0, b.x0])) for b in boxset.boxes]
    return BoxSet(tuple(out), boxset.geometry)


def dicom_series_folders(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (itself included) that directly holds files, sorted (candidate series)."""
    root = check_folder(root)
    return sorted(Path(d) for d, _, files in os.walk(root) if any(not f.startswith(".") for f in files))


def _image_grid(path: Path) -> BoxGeometry:
    """The grid of an image file from its header only (no voxels read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError("cannot read the image header", path) from None
    return BoxGeometry(tuple(reader.GetSize()), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _series_with_boxes(dicom_root: Path, xml_uids: set[str]) -> list[tuple[Path, str]]:
    """(folder, SeriesInstanceUID) of every image series under ``dicom_root`` with a slice named by an XML."""
    found = []
    for folder in dicom_series_folders(dicom_root):
        for uid, items in sorted(scan_folder(folder).items()):
            if any(is_image_header(ds) and str(ds.get("SOPInstanceUID", "")) in xml_uids for _, ds in items):
                found.append((folder, uid))
    return found


def import_voc_manifest(manifest_path: str | Path, out_manifest: str | Path, voc_folder: str | Path,
                        dicom_folder: str | Path, *, case: str | None = None,
                        series_uid: str | None = None) -> BoxesResult:
    """Box files from a VOC folder for the cases of a manifest, and a new manifest referencing them.

    With ``case``: ``dicom_folder`` is the series the case's image was imported from. Without: ``dicom_folder``
    is a cohort root; every image series under it that an XML names is matched to the one manifest case whose
    image has the series' grid (size, spacing, origin, direction) and, when the case's patient id is the
    series' PatientID, that patient (two candidates: an error naming the series)."""
    manifest = Manifest.load(manifest_path)
    out_manifest, voc_folder = Path(out_manifest), check_folder(voc_folder)
    dicom_folder = check_folder(dicom_folder)
    box_dir = out_manifest.parent / "boxes"
    inputs = [manifest.source, voc_folder, dicom_folder]
    check_output_file(out_manifest, inputs=inputs)
    check_output_folder(box_dir, inputs=inputs)
    if case is not None:
        targets = [(manifest.get(case), dicom_folder, series_uid)]
    else:
        xml_uids = {p.stem for p in _xml_files(voc_folder)}
        if not xml_uids:
            raise InputError("no .xml files (PASCAL VOC box annotations) in this folder", voc_folder)
        grids = {c.id: _image_grid(manifest.image_path(c)) for c in manifest.cases if c.modality in ("ct", "cbct")}
        targets = []
        for folder, uid in _series_with_boxes(dicom_folder, xml_uids):
            volume = read_dicom_series(folder, uid)
            matches = [c for c in manifest.cases if c.id in grids and grids[c.id].difference(volume) is None]
            pid = volume.meta.get("PatientID")
            if len(matches) > 1 and pid:
                matches = [c for c in matches if c.patient_id == pid] or matches
            if len(matches) != 1:
                what = "no case" if not matches else f"{len(matches)} cases ({', '.join(c.id for c in matches)})"
                raise InputError(f"series {uid} has boxes but its grid matches {what} of {manifest.source}; "
                                 "import it with --case", folder)
            targets.append((matches[0], folder, uid))
        if not targets:
            raise InputError(f"no DICOM image series under {dicom_folder} has a slice named by an XML file",
                             voc_folder)
    sets, notes = {}, []
    for c, folder, uid in targets:
        res = import_voc_boxes(voc_folder, folder, uid)
        diff = res.boxset.geometry.difference(_image_grid(manifest.image_path(c)))
        if diff is not None:
            raise GeometryError(f"the series' grid is not that of case '{c.id}' ({diff})", folder)
        if c.id in sets:
            raise InputError(f"two series match case '{c.id}'", folder)
        sets[c.id] = res.boxset
        notes.append(f"{c.id}: {len(res.boxset)} boxes on {len(res.boxset.slices())} slices from {res.n_files} "
                     f"XML files ({len(res.unmatched)} XML files name other series)")
    out_cases = rebased_cases(manifest, out_manifest)
    written = []
    for i, c in enumerate(out_cases):
        if c.id in sets:
            written.append(write_boxes(box_dir / f"{c.id}.json", sets[c.id]))
            out_cases[i] = dataclasses.replace(
                c, boxes=os.path.relpath(written[-1].resolve(), out_manifest.parent.resolve()))
    with writing(out_manifest):
        Manifest(out_cases, manifest.name, manifest.description, manifest.seed).save(out_manifest)
    return BoxesResult(out_manifest, written, [], notes)
