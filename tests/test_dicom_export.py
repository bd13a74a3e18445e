"""DICOM export (RTSTRUCT + SEG) of masks: tracing, round trips in many orientations, real series,
bad input.

The RTSTRUCTs are read back twice: with cmedl's importer (``rasterize_roi``) and with an independent
rasteriser written here from the DICOM standard alone (pydicom headers, the contour's referenced
SOPInstanceUID for its slice, ``skimage.draw.polygon`` and even-odd XOR), so a mistake shared by
cmedl's reader and writer (a mirrored axis, a half-voxel shift, a wrong slice) still fails.
The SEGs are read back with highdicom, by source instance (voxel-identical) and through highdicom's
own volume affine (positions).
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import require_shared
from skimage.draw import polygon as fill_polygon

from cmedl.errors import GeometryError, InputError
from cmedl.io import Volume, write_volume
from cmedl.io.dicom import read_dicom_series, write_dicom_series
from cmedl.io.dicom_export import (
    EXPORT_FORMATS,
    check_export_formats,
    export_mask,
    export_mask_file,
    parse_colour,
)
from cmedl.io.rtstruct import even_odd_fill, list_rois, rasterize_roi
from cmedl.io.rtstruct_write import trace_slice

FRAME = "1.2.826.0.1.3680043.8.498.1"


# ----------------------------------------------------------------------------------- helpers
def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (f(np.deg2rad(a)) for a in (ax, ay, az) for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


#: direction matrices (columns: row, column, slice axes in LPS) of the phantom series
ORIENTATIONS = {
    "identity": np.eye(3),
    "flipped-rows": np.diag(
        [1.0, -1.0, -1.0]
    ),  # column cosine [0,-1,0] (the TotalSegmentator A/P bug)
    "flipped-columns": np.diag([-1.0, 1.0, -1.0]),
    "reversed-slices": np.diag(
        [1.0, 1.0, -1.0]
    ),  # left-handed: files run head to feet, read back flipped
    "oblique": _rotation(20.0, -12.0, 33.0),
    "oblique-sagittal": _rotation(0.0, 90.0, 0.0) @ _rotation(8.0, 0.0, 0.0),
}


def _phantom_mask(grid: Volume) -> np.ndarray:
    """An asymmetric lesion with a hole, defined in patient mm about the grid centre (so any mirror
    or shift of an exported contour changes it): an ellipsoid with an off-centre cylindrical hole,
    an island inside the hole, and a side lobe."""
    nz, ny, nx = grid.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(float)
    centre = grid.index_to_physical(np.array([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2]))
    # lesion axes: the grid's own, so that the hole is a hole on every slice whatever the direction
    p = (grid.index_to_physical(idx) - centre) @ grid.direction_matrix
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    body = (x / 7.5) ** 2 + (y / 6.5) ** 2 + (z / 6.5) ** 2 <= 1
    hole = ((x - 1.5) ** 2 + (y + 1.0) ** 2 <= 3.2**2) & (np.abs(z) <= 3.0)
    island = (x - 1.5) ** 2 + (y + 1.0) ** 2 <= 0.8**2
    lobe = (x + 6.5) ** 2 + (y - 5.0) ** 2 + z**2 <= 2.5**2
    return ((body & ~hole) | (island & body) | lobe).astype(np.uint8)


def _series(
    tmp_path: Path, direction: np.ndarray, spacing=(0.8, 0.9, 2.5), shape=(6, 20, 24)
) -> tuple[Path, Volume]:
    """A CT-like series written as DICOM; returns its folder and the volume read back."""
    rng = np.random.default_rng(0)
    arr = rng.integers(-100, 100, size=shape).astype(np.int16)
    vol = Volume(arr, spacing, (-12.0, 31.0, -140.0), tuple(np.asarray(direction).ravel()))
    folder = tmp_path / "ct"
    write_dicom_series(vol, folder, frame_of_reference_uid=FRAME, patient_id="PAT^ONE")
    return folder, read_dicom_series(folder)


def independent_rasterise(
    rtstruct: Path, series_dir: Path, roi_name: str
) -> tuple[np.ndarray, float]:
    """Rasterise an ROI from the DICOM files alone: slices sorted along row x col of the headers,
    each contour filled on the image its ContourImageSequence references (points mapped with that
    image's IPP/IOP/PixelSpacing), skimage.draw.polygon, XOR per slice. Returns the mask
    ``[z, y, x]`` and the largest distance (mm) of a contour point from its image's plane."""
    headers = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series_dir.glob("*.dcm"))
    ]
    headers = [h for h in headers if h.get("Modality") not in ("RTSTRUCT", "SEG")]
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    headers.sort(key=lambda h: float(np.asarray(h.ImagePositionPatient, float) @ normal))
    by_uid = {str(h.SOPInstanceUID): k for k, h in enumerate(headers)}
    dy, dx = (float(v) for v in headers[0].PixelSpacing)
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    rs = pydicom.dcmread(rtstruct)
    number = next(int(r.ROINumber) for r in rs.StructureSetROISequence if r.ROIName == roi_name)
    item = next(c for c in rs.ROIContourSequence if int(c.ReferencedROINumber) == number)
    mask = np.zeros(shape, bool)
    off_plane = 0.0
    for contour in item.get("ContourSequence", []):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        k = by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
        assert len(pts) == int(contour.NumberOfContourPoints)
        rel = pts - np.asarray(headers[k].ImagePositionPatient, float)
        off_plane = max(off_plane, float(np.abs(rel @ normal).max()))
        rr, cc = fill_polygon(rel @ col / dy, rel @ row / dx, shape[1:])
        layer = np.zeros(shape[1:], bool)
        layer[rr, cc] = True
        mask[k] ^= layer
    return mask, off_plane


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def centroid_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-axis difference of the two masks' centroids, in voxels."""
    return float(np.abs(np.argwhere(a > 0).mean(axis=0) - np.argwhere(b > 0).mean(axis=0)).max())


def seg_pixels(seg_path: Path, series_dir: Path, series_uid: str | None = None) -> np.ndarray:
    """The SEG's segment 1 by source instance, in the z order of cmedl's reader."""
    seg = hd.seg.segread(seg_path)
    ct = read_dicom_series(series_dir, series_uid)
    headers = [
        pydicom.dcmread(p, stop_before_pixels=True)
        for p in sorted(series_dir.iterdir())
        if p.is_file()
    ]
    headers = [
        h
        for h in headers
        if h.get("Modality") not in ("RTSTRUCT", "SEG")
        and str(h.SeriesInstanceUID) == ct.meta["SeriesInstanceUID"]
    ]
    z = [ct.physical_to_index(np.asarray(h.ImagePositionPatient, float))[2] for h in headers]
    uids = [str(headers[i].SOPInstanceUID) for i in np.argsort(z)]
    px = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    return px[..., 0]


def seg_positions_match(seg_path: Path, grid: Volume, mask: np.ndarray) -> bool:
    """Through highdicom's own volume affine (not the source UIDs): segmented voxels sit exactly on
    the mask's voxels in patient space."""
    vol = hd.seg.segread(seg_path).get_volume()
    arr = (
        np.asarray(vol.array)[..., 0] if np.asarray(vol.array).ndim == 4 else np.asarray(vol.array)
    )
    ijk = np.argwhere(arr > 0).astype(float)
    lps = ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    idx = grid.physical_to_index(lps)  # (x, y, z)
    if np.abs(idx - np.round(idx)).max() > 1e-3:
        return False
    back = np.zeros(mask.shape, bool)
    i, j, k = np.round(idx).astype(int).T
    back[k, j, i] = True
    return bool(np.array_equal(back, mask > 0))


# ----------------------------------------------------------------------------------- tracing
def _loop_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_trace_single_voxel_and_ring():
    one = np.zeros((3, 3), bool)
    one[1, 2] = True
    (loop,) = trace_slice(one)
    assert sorted(map(tuple, loop.tolist())) == [(1.5, 0.5), (1.5, 1.5), (2.5, 0.5), (2.5, 1.5)]
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    ring[3, 3] = True  # an island in the hole
    loops = trace_slice(ring)
    areas = sorted(_loop_area(lp) for lp in loops)
    assert len(loops) == 3 and all(len(lp) == 4 for lp in loops)  # only the corners are kept
    assert areas[0] == -9.0 and sorted(abs(a) for a in areas[1:]) == [
        1.0,
        25.0,
    ]  # hole runs the other way
    assert np.isclose(sum(_loop_area(lp) for lp in loops), ring.sum())


def test_trace_diagonal_contacts_give_separate_simple_loops():
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[1, 1] = m[2, 2] = m[1, 3] = m[3, 0] = True
    loops = trace_slice(m)
    assert len(loops) == 5 and all(len(lp) == 4 for lp in loops)


@pytest.mark.parametrize("seed", range(4))
def test_trace_random_masks_even_odd_winding_and_area_are_exact(seed):
    """Random masks (many diagonal contacts, holes, islands): even-odd fill (cmedl's and skimage's)
    and the non-zero winding sum of the loops give the mask back exactly; signed areas sum to the
    count."""
    rng = np.random.default_rng(seed)
    m = rng.random((23, 17)) < 0.45
    loops = trace_slice(m)
    assert np.array_equal(even_odd_fill(loops, m.shape).astype(bool), m)
    winding = np.zeros(m.shape, int)
    parity = np.zeros(m.shape, bool)
    for lp in loops:
        rr, cc = fill_polygon(lp[:, 1], lp[:, 0], m.shape)
        layer = np.zeros(m.shape, bool)
        layer[rr, cc] = True
        parity ^= layer
        winding += int(np.sign(_loop_area(lp))) * layer
    assert np.array_equal(parity, m)
    assert np.array_equal(winding, m.astype(int))
    assert np.isclose(sum(_loop_area(lp) for lp in loops), m.sum())
    assert all(np.all(np.mod(lp, 1.0) == 0.5) for lp in loops)  # voxel corners only


# ----------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_phantom_round_trip_in_every_orientation(tmp_path, orientation):
    folder, ct = _series(tmp_path, ORIENTATIONS[orientation])
    truth = _phantom_mask(ct)
    assert truth.sum() > 100 and truth.shape == ct.shape
    rs, seg = export_mask(
        ct.with_array(truth), folder, tmp_path / "out", ["rtstruct", "seg"], name="case"
    )
    assert (rs.name, seg.name) == ("case_rtstruct.dcm", "case_seg.dcm")

    mine = rasterize_roi(rs, "GTV", ct)
    other, off_plane = independent_rasterise(rs, folder, "GTV")
    assert off_plane < 1e-3  # every contour lies in the plane of the image it references
    for back in (mine, other):
        assert dice(back, truth) >= 0.97 and centroid_shift(back, truth) <= 0.5
        # voxel-boundary contours: both readers get the mask back voxel for voxel
        assert np.array_equal(back > 0, truth > 0)
    assert np.array_equal(seg_pixels(seg, folder), truth)
    assert seg_positions_match(seg, ct, truth)


def test_non_unit_spacing_and_reversed_file_order(tmp_path):
    """Anisotropic voxels, slices whose file names run against their positions."""
    rng = np.random.default_rng(1)
    vol = Volume(
        rng.integers(0, 50, (7, 18, 21)).astype(np.int16), (0.55, 1.7, 3.3), (40.0, -70.0, 12.0)
    )
    folder = tmp_path / "ct"
    write_dicom_series(
        vol, folder, frame_of_reference_uid=FRAME, file_names=[f"im{9 - k}.dcm" for k in range(7)]
    )
    ct = read_dicom_series(folder)
    truth = _phantom_mask(ct)
    rs, seg = export_mask(
        ct.with_array(truth), folder, tmp_path / "out", ["rtstruct", "seg"], name="x"
    )
    other, _ = independent_rasterise(rs, folder, "GTV")
    assert np.array_equal(other, truth > 0) and np.array_equal(
        rasterize_roi(rs, "GTV", ct) > 0, truth > 0
    )
    assert np.array_equal(seg_pixels(seg, folder), truth)


@pytest.mark.parametrize(("orientation", "code"), [("oblique", "RAS"), ("flipped-rows", "PIR")])
def test_mask_saved_in_another_axis_order_is_put_back_exactly(tmp_path, orientation, code):
    """A mask written by a tool that reorients (SimpleITK's DICOMOrient to RAS or PIR: the same
    voxels, axes permuted and flipped) is exported as if it were on the series' grid."""
    folder, ct = _series(tmp_path, ORIENTATIONS[orientation])
    truth = _phantom_mask(ct)
    turned = Volume.from_sitk(sitk.DICOMOrient(ct.with_array(truth).to_sitk(), code))
    assert turned.geometry_difference(ct) is not None
    rs, seg = export_mask(turned, folder, tmp_path / "out", ["rtstruct", "seg"], name="r")
    assert np.array_equal(rasterize_roi(rs, "GTV", ct) > 0, truth > 0)
    assert np.array_equal(seg_pixels(seg, folder), truth)


def test_contour_longer_than_an_explicit_vr_value_stays_ds(tmp_path):
    """A contour of thousands of points (a zigzag band: every column turns) is over the 64 KiB that
    an explicit-VR DS value may hold: it must still be written and read back as DS, exactly."""
    vol = Volume(np.zeros((2, 30, 1000), np.int16), (0.5, 0.5, 2.0), (-250.0, -8.0, 0.0))
    folder = tmp_path / "ct"
    write_dicom_series(vol, folder)
    ct = read_dicom_series(folder)
    x = np.arange(1000)
    top = 5 + np.abs((x % 20) - 10)  # triangle wave of slope 1: a step at every column
    y = np.arange(30)[:, None]
    truth = np.zeros(ct.shape, np.uint8)
    truth[1] = (y >= top) & (y < top + 6)
    (rs,) = export_mask(ct.with_array(truth), folder, tmp_path / "out", ["rtstruct"], name="z")
    ds = pydicom.dcmread(rs)
    (contour,) = ds.ROIContourSequence[0].ContourSequence
    assert contour["ContourData"].VR == "DS" and int(contour.NumberOfContourPoints) > 3000
    assert np.array_equal(rasterize_roi(rs, "GTV", ct), truth)
    assert np.array_equal(independent_rasterise(rs, folder, "GTV")[0], truth > 0)


def test_folder_with_two_series_exports_the_chosen_one(tmp_path):
    vol = Volume(np.zeros((4, 12, 14), np.int16), (0.9, 0.9, 3.0), (0.0, 0.0, 0.0))
    folder = tmp_path / "study"
    write_dicom_series(
        vol, folder, series_uid="1.2.3.1", file_names=[f"a{k}.dcm" for k in range(4)]
    )
    other = Volume(np.zeros((5, 12, 14), np.int16), (0.9, 0.9, 2.0), (0.0, 0.0, -1.0))
    write_dicom_series(
        other, folder, series_uid="1.2.3.2", file_names=[f"b{k}.dcm" for k in range(5)]
    )
    ct = read_dicom_series(folder, "1.2.3.2")
    truth = _phantom_mask(ct)
    with pytest.raises(InputError, match="holds 2 image series"):
        export_mask(ct.with_array(truth), folder, tmp_path / "out", ["rtstruct"], name="s")
    rs, seg = export_mask(
        ct.with_array(truth),
        folder,
        tmp_path / "out",
        ["rtstruct", "seg"],
        name="s",
        series_uid="1.2.3.2",
    )
    ref = pydicom.dcmread(rs).ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert ref.RTReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.2"
    assert np.array_equal(rasterize_roi(rs, "GTV", ct), truth)
    assert hd.seg.segread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.2"
    assert np.array_equal(seg_pixels(seg, folder, "1.2.3.2"), truth)


def test_rtstruct_references_and_labels(tmp_path):
    folder, ct = _series(tmp_path, ORIENTATIONS["oblique"])
    truth = _phantom_mask(ct)
    (rs_path,) = export_mask(
        ct.with_array(truth),
        folder,
        tmp_path / "out",
        ["rtstruct"],
        name="c",
        roi_name="GTV_auto",
        colour=(10, 200, 30),
    )
    rs = pydicom.dcmread(rs_path)
    images = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    first = images[0]
    assert rs.Modality == "RTSTRUCT" and rs.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rs.file_meta.MediaStorageSOPInstanceUID == rs.SOPInstanceUID
    assert (rs.StudyInstanceUID, rs.PatientID, str(rs.PatientName)) == (
        first.StudyInstanceUID,
        "PAT^ONE",
        "PAT^ONE",
    )
    assert rs.SeriesInstanceUID != first.SeriesInstanceUID
    (fr,) = rs.ReferencedFrameOfReferenceSequence
    assert fr.FrameOfReferenceUID == FRAME
    (study,) = fr.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == first.StudyInstanceUID
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == {
        i.SOPInstanceUID for i in images
    }
    (roi,) = rs.StructureSetROISequence
    assert (roi.ROIName, roi.ROIGenerationAlgorithm, roi.ReferencedFrameOfReferenceUID) == (
        "GTV_auto",
        "AUTOMATIC",
        FRAME,
    )
    (contours,) = rs.ROIContourSequence
    assert list(contours.ROIDisplayColor) == [10, 200, 30]
    # slices with a hole have two or more contours (outer + hole), each referencing one image
    per_image: dict[str, int] = {}
    for c in contours.ContourSequence:
        (ref,) = c.ContourImageSequence
        per_image[ref.ReferencedSOPInstanceUID] = per_image.get(ref.ReferencedSOPInstanceUID, 0) + 1
    assert len(per_image) == int(truth.any(axis=(1, 2)).sum()) and max(per_image.values()) >= 2
    (obs,) = rs.RTROIObservationsSequence
    assert obs.RTROIInterpretedType == "GTV"
    assert (
        rs.Manufacturer == "cmedl"
        and rs.SoftwareVersions
        and "cmedl" in roi.ROIGenerationDescription
    )
    assert list_rois(rs_path) == ["GTV_auto"]


def test_seg_codes_and_fractional_probabilities(tmp_path):
    folder, ct = _series(tmp_path, ORIENTATIONS["flipped-rows"])
    truth = _phantom_mask(ct)
    rng = np.random.default_rng(3)
    prob = np.where(
        truth > 0, rng.uniform(0.5, 1.0, ct.shape), rng.uniform(0.0, 0.5, ct.shape)
    ).astype(np.float32)
    (seg_path,) = export_mask(
        ct.with_array(truth),
        folder,
        tmp_path / "out",
        ["seg"],
        name="p",
        probabilities=ct.with_array(prob),
    )
    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.FrameOfReferenceUID == FRAME
    (desc,) = seg.SegmentSequence
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert desc.SegmentAlgorithmType == "AUTOMATIC" and desc.SegmentAlgorithmName == "cmedl"
    assert desc.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "cmedl"
    back = seg_pixels(seg_path, folder)
    np.testing.assert_allclose(back, np.round(prob * 255) / 255, atol=1e-6)
    # binary by default
    (seg_bin,) = export_mask(ct.with_array(truth), folder, tmp_path / "out2", ["seg"], name="b")
    assert hd.seg.segread(seg_bin).SegmentationType == "BINARY"


def test_empty_mask_writes_an_empty_roi_with_a_warning(tmp_path, caplog):
    folder, ct = _series(tmp_path, ORIENTATIONS["identity"])
    empty = ct.with_array(np.zeros(ct.shape, np.uint8))
    with caplog.at_level(logging.WARNING):
        rs, seg = export_mask(empty, folder, tmp_path / "out", ["rtstruct", "seg"], name="e")
    assert "the mask is empty" in caplog.text
    ds = pydicom.dcmread(rs)
    assert (
        ds.StructureSetROISequence[0].ROIName == "GTV"
        and "ContourSequence" not in ds.ROIContourSequence[0]
    )
    with pytest.raises(InputError, match="is empty"):  # cmedl's importer says so in one line
        rasterize_roi(rs, "GTV", ct)
    assert not seg_pixels(seg, folder).any()


# ----------------------------------------------------------------------------------- bad input
def _strip(folder: Path, tag: str, only_first: bool = True) -> Path:
    files = sorted(folder.glob("*.dcm"))
    for p in files[:1] if only_first else files:
        ds = pydicom.dcmread(p)
        delattr(ds, tag)
        ds.save_as(p)
    return files[0]


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("SOPInstanceUID", "has no SOPInstanceUID; cannot export to DICOM"),
        ("FrameOfReferenceUID", "has no FrameOfReferenceUID; cannot export to DICOM"),
    ],
)
def test_series_without_uids_is_refused_and_nothing_written(tmp_path, tag, message):
    folder, ct = _series(tmp_path, ORIENTATIONS["identity"])
    stripped = _strip(folder, tag)
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        export_mask(ct.with_array(_phantom_mask(ct)), folder, out, ["rtstruct", "seg"], name="c")
    text = str(err.value)
    assert text.startswith(f"{stripped}: {message}") and "\n" not in text
    assert not out.exists() or not any(out.iterdir())


def test_mask_on_another_grid_and_bad_masks_are_refused(tmp_path):
    folder, ct = _series(tmp_path, ORIENTATIONS["identity"])
    out = tmp_path / "out"
    truth = _phantom_mask(ct)
    shifted = Volume(truth, ct.spacing, tuple(np.add(ct.origin, (0.0, 0.0, 2.5))), ct.direction)
    m_path = write_volume(shifted, tmp_path / "m.nii.gz")
    with pytest.raises(GeometryError) as err:
        export_mask_file(m_path, folder, out, ["rtstruct"])
    assert str(err.value).startswith(f"{m_path} and {folder} are on different voxel grids: origin")
    with pytest.raises(
        GeometryError
    ):  # the same voxels with the slice axis reversed: not the series' grid
        export_mask(
            Volume(truth, ct.spacing, ct.origin, tuple(np.diag([1.0, 1, -1]).ravel())),
            folder,
            out,
            ["seg"],
            name="c",
        )
    labels = ct.with_array(truth * 1 + (truth > 0) * np.arange(truth.shape[2]) % 3)
    with pytest.raises(InputError, match="labels .*; export needs a binary mask"):
        export_mask(labels, folder, out, ["seg"], name="c")
    with pytest.raises(InputError, match="probabilities must be finite values in"):
        export_mask(
            ct.with_array(truth),
            folder,
            out,
            ["seg"],
            name="c",
            probabilities=ct.with_array(truth * 2.0),
        )
    assert not out.exists() or not any(out.iterdir())


def test_formats_names_and_colours_are_checked():
    assert check_export_formats(["seg", "rtstruct", "SEG"]) == EXPORT_FORMATS
    assert check_export_formats(["rtstruct,seg"]) == ("rtstruct", "seg")
    with pytest.raises(
        InputError, match=r"^unknown export format 'rtstrct'; did you mean 'rtstruct'\?"
    ):
        check_export_formats(["rtstrct"])
    with pytest.raises(InputError, match="no export format"):
        check_export_formats([])
    assert parse_colour("0, 128,255") == (0, 128, 255)
    for bad in ("red", "1,2", "0,0,256"):
        with pytest.raises(InputError, match="three integers"):
            parse_colour(bad)


def test_bad_arguments_and_failed_write_leave_nothing(tmp_path, monkeypatch):
    folder, ct = _series(tmp_path, ORIENTATIONS["identity"])
    mask = ct.with_array(_phantom_mask(ct))
    out = tmp_path / "out"
    for kwargs, message in (
        ({"formats": ["nifti"]}, "unknown export format 'nifti'"),
        ({"name": "a/b"}, "must be a plain file name"),
        ({"roi_name": "x" * 65}, "1-64 characters"),
    ):
        args = {"formats": ["rtstruct"], "name": "c", **kwargs}
        with pytest.raises(InputError, match=message):
            export_mask(mask, folder, out, args.pop("formats"), **args)
    # the SEG fails while being written: the RTSTRUCT (written first) must not appear either
    import cmedl.io.dicom_export as dicom_export

    real = dicom_export.segmentation_from_mask

    def failing(*args, **kwargs):
        seg = real(*args, **kwargs)

        def save_as(*_a, **_k):
            raise OSError(28, "No space left on device")

        seg.save_as = save_as
        return seg

    monkeypatch.setattr(dicom_export, "segmentation_from_mask", failing)
    with pytest.raises(InputError, match=r"c_seg\.dcm: .*No space left on device"):
        export_mask(mask, folder, out, ["rtstruct", "seg"], name="c")
    assert not out.exists() or not any(out.iterdir())


def test_output_may_not_replace_an_input(tmp_path):
    folder, ct = _series(tmp_path, ORIENTATIONS["identity"])
    mask = ct.with_array(_phantom_mask(ct))
    victim = folder / "slice_0000.dcm"
    # writing into the series folder itself is allowed (readers skip RTSTRUCT/SEG objects) ...
    paths = export_mask(mask, folder, folder, ["rtstruct", "seg"], name="auto")
    assert all(p.parent == folder for p in paths) and read_dicom_series(folder).shape == ct.shape
    # ... but never over one of its images
    victim.rename(folder / "v_rtstruct.dcm")
    with pytest.raises(InputError, match="is an input of this command"):
        export_mask(mask, folder, folder, ["rtstruct"], name="v")


# ----------------------------------------------------------------------------------- real series
STS_CASES = [(p, m) for p in ("STS_001", "STS_002", "STS_003") for m in ("CT", "MR_T1")]


@pytest.mark.shared_data
@pytest.mark.parametrize(("patient", "modality"), STS_CASES)
def test_sts_round_trip(tmp_path, patient, modality):
    """The clinical GTV of the real STS series (rasterised from its RTSTRUCT) exported and read
    back."""
    root = require_shared("sts_dicom", patient, modality, "dicom")
    image_dir = root / "image"
    ct = read_dicom_series(image_dir)
    (roi,) = list_rois(root / "mask" / "RS.dcm")
    truth = rasterize_roi(root / "mask" / "RS.dcm", roi, ct)
    rs, seg = export_mask(
        ct.with_array(truth), image_dir, tmp_path, ["rtstruct", "seg"], name=patient, roi_name=roi
    )
    mine = rasterize_roi(rs, roi, ct)
    other, off_plane = independent_rasterise(rs, image_dir, roi)
    assert off_plane < 1e-3
    for back in (mine, other):
        assert dice(back, truth) >= 0.97 and centroid_shift(back, truth) <= 0.5
        assert np.array_equal(back > 0, truth > 0)
    assert np.array_equal(seg_pixels(seg, image_dir), truth)
    assert seg_positions_match(seg, ct, truth)
