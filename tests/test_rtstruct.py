"""RTSTRUCT rasterisation: known-answer pixel counts, holes (XOR), nearest slice, oblique grids,
reference checks and errors, plus the acceptance test against MIRP's NIfTI masks (real data)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from skimage.draw import polygon as skimage_polygon

from cmedl.errors import InputError
from cmedl.io import Volume, read_volume
from cmedl.io.dicom import read_dicom_series, write_dicom_series
from cmedl.io.rtstruct import (
    describe_rois,
    even_odd_fill,
    list_rois,
    rasterize_roi,
    write_rtstruct,
)

FRAME = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"


def reference(direction=None) -> Volume:
    """5 slices of 20 x 24 voxels, spacing (x, y, z) = (1, 1.5, 2) mm, origin (10, -5, 100)."""
    kw = {} if direction is None else {"direction": direction}
    meta = {"FrameOfReferenceUID": FRAME, "SeriesInstanceUID": SERIES}
    return Volume(
        np.zeros((5, 20, 24), np.int16), (1.0, 1.5, 2.0), (10.0, -5.0, 100.0), meta=meta, **kw
    )


def rect(vol: Volume, x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """A rectangle given in continuous voxel indices (x, y) on index plane z, as patient mm points."""
    idx = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=float)
    return vol.index_to_physical(idx)


def test_square_ring_with_hole_and_point_contours(tmp_path):
    vol = reference()
    rs = write_rtstruct(
        tmp_path / "rs.dcm",
        vol,
        {
            # centres 3..7 in x and 2..6 in y: 5 x 5 = 25 voxels on slice 1
            "square": [
                rect(vol, 2.5, 7.5, 1.5, 6.5, 1.0),
                ("POINT", vol.index_to_physical(np.array([[0.0, 0, 1]]))),
            ],
            # outer 10 x 10 centres, inner 4 x 4 centres: ring = 100 - 16 = 84 voxels on slice 3
            "ring": [rect(vol, 2.5, 12.5, 2.5, 12.5, 3.0), rect(vol, 5.5, 9.5, 5.5, 9.5, 3.0)],
        },
    )
    assert list_rois(rs) == ["square", "ring"]
    assert [(r.name, r.n_contours) for r in describe_rois(rs)] == [("square", 1), ("ring", 2)]
    sq = rasterize_roi(rs, "square", vol)
    assert sq.dtype == np.uint8 and sq.shape == vol.shape
    assert sq.sum() == 25 and sq[1].sum() == 25
    assert sq[1, 2:7, 3:8].all() and sq[1, 0, 0] == 0  # the POINT contour is ignored
    ring = rasterize_roi(rs, "ring", vol)
    assert ring.sum() == 84 and ring[3].sum() == 84
    assert ring[3, 3, 3] == 1 and ring[3, 7, 7] == 0  # wall filled, hole empty
    assert rasterize_roi(rs, "RING", vol).sum() == 84  # unique case-insensitive match


def test_contours_between_slices_go_to_the_nearest_slice(tmp_path):
    vol = reference()
    rs = write_rtstruct(
        tmp_path / "rs.dcm",
        vol,
        {
            "a": [rect(vol, 2.5, 4.5, 2.5, 4.5, 1.2)],  # -> slice 1
            "b": [rect(vol, 2.5, 4.5, 2.5, 4.5, 1.5)],  # exactly half-way -> higher index 2
            "c": [rect(vol, 2.5, 4.5, 2.5, 4.5, 3.49)],  # -> slice 3
            "outside": [rect(vol, 2.5, 4.5, 2.5, 4.5, 4.6), rect(vol, 2.5, 4.5, 2.5, 4.5, -0.6)],
        },
    )
    for name, k in (("a", 1), ("b", 2), ("c", 3)):
        m = rasterize_roi(rs, name, vol)
        assert m[k].sum() == 4 and m.sum() == 4, name
    # more than half a slice beyond the outer slices: refused, not silently dropped
    with pytest.raises(InputError, match="ROI 'outside': a contour lies at slice position 4.60, outside"):
        rasterize_roi(rs, "outside", vol)


def test_overlapping_contours_on_one_slice_xor_and_separate_islands(tmp_path):
    vol = reference()
    rs = write_rtstruct(
        tmp_path / "rs.dcm",
        vol,
        {
            "islands": [rect(vol, 0.5, 2.5, 0.5, 2.5, 2.0), rect(vol, 10.5, 13.5, 10.5, 13.5, 2.0)],
            "nested3": [  # even-odd: outer filled, middle empty, innermost filled again
                rect(vol, 0.5, 10.5, 0.5, 10.5, 2.0),
                rect(vol, 2.5, 8.5, 2.5, 8.5, 2.0),
                rect(vol, 4.5, 6.5, 4.5, 6.5, 2.0),
            ],
        },
    )
    assert rasterize_roi(rs, "islands", vol).sum() == 4 + 9
    assert rasterize_roi(rs, "nested3", vol).sum() == 100 - 36 + 4


def test_even_odd_fill_matches_skimage_and_shares_edges():
    rng = np.random.default_rng(0)
    for _ in range(100):  # random (self-intersecting too) polygons, vertices off the pixel grid
        poly = rng.uniform(-4.0, 24.0, size=(int(rng.integers(3, 12)), 2)) + 0.123
        ref = np.zeros((20, 22), np.uint8)
        rr, cc = skimage_polygon(poly[:, 1], poly[:, 0], shape=ref.shape)
        ref[rr, cc] = 1
        np.testing.assert_array_equal(even_odd_fill([poly], ref.shape), ref)
    # two squares sharing the edge x = 5 (exactly on pixel centres): every pixel claimed once,
    # so their XOR has no seam; one square alone covers the half-open 4 x 4 pixels
    left = np.array([[1.0, 1.0], [5.0, 1.0], [5.0, 5.0], [1.0, 5.0]])
    right = left + [4.0, 0.0]
    assert even_odd_fill([left], (10, 12)).sum() == 16
    both = even_odd_fill([left, right], (10, 12))
    assert both.sum() == 32 and both[1:5, 1:9].all()


def test_oblique_reference_grid(tmp_path):
    a = np.deg2rad(25.0)
    c, s = np.cos(a), np.sin(a)
    oblique = (c, 0.0, s, 0.0, 1.0, 0.0, -s, 0.0, c)  # rotated about y: every slice is tilted
    vol = reference(direction=oblique)
    rs = write_rtstruct(
        tmp_path / "rs.dcm",
        vol,
        {"r": [rect(vol, 2.5, 12.5, 2.5, 12.5, 3.0), rect(vol, 5.5, 9.5, 5.5, 9.5, 3.0)]},
    )
    m = rasterize_roi(rs, "r", vol)
    assert m[3].sum() == 84 and m.sum() == 84
    # the same contours on an axial grid cut across slices: refused rather than rasterised wrongly
    with pytest.raises(InputError, match="parallel to its slices"):
        rasterize_roi(rs, "r", reference())


def test_reference_checks(tmp_path):
    vol = reference()
    rs = write_rtstruct(tmp_path / "rs.dcm", vol, {"gtv": [rect(vol, 2.5, 4.5, 2.5, 4.5, 2.0)]})
    other = reference()
    other.meta["FrameOfReferenceUID"] = "1.2.3.999"
    with pytest.raises(InputError, match="frame of reference") as exc:
        rasterize_roi(rs, "gtv", other)
    assert str(exc.value).startswith(str(rs)) and "\n" not in str(exc.value)
    assert rasterize_roi(rs, "gtv", other, check_reference=False).sum() == 4
    # without a frame of reference on the image, the referenced series decides
    no_frame = reference()
    del no_frame.meta["FrameOfReferenceUID"]
    no_frame.meta["SeriesInstanceUID"] = "1.2.3.777"
    with pytest.raises(InputError, match="references series"):
        rasterize_roi(rs, "gtv", no_frame)
    # a volume that did not come from DICOM (no meta) is not checked
    plain = Volume(vol.array, vol.spacing, vol.origin)
    assert rasterize_roi(rs, "gtv", plain).sum() == 4


def test_unknown_empty_and_not_rtstruct_errors(tmp_path):
    vol = reference()
    rs = write_rtstruct(
        tmp_path / "rs.dcm",
        vol,
        {"GTV_Mass": [rect(vol, 2.5, 4.5, 2.5, 4.5, 2.0)], "Lung_L": [], "Heart": []},
    )
    with pytest.raises(
        InputError,
        match=r"unknown ROI 'GTV_mas'; did you mean 'GTV_Mass'\? \(choices: GTV_Mass, Heart, Lung_L\)",
    ):
        rasterize_roi(rs, "GTV_mas", vol)
    with pytest.raises(InputError, match="'Lung_L' is empty"):
        rasterize_roi(rs, "Lung_L", vol)
    image_dir = tmp_path / "ct"
    write_dicom_series(Volume(np.zeros((2, 3, 3), np.int16)), image_dir)
    with pytest.raises(InputError, match="not an RTSTRUCT"):
        list_rois(image_dir / "slice_0000.dcm")
    with pytest.raises(InputError, match="no such file"):
        list_rois(tmp_path / "absent.dcm")


def test_suffixed_roi_name_resolves_only_when_unique(tmp_path, caplog):
    vol = reference()
    square = [rect(vol, 2.5, 4.5, 2.5, 4.5, 2.0)]
    rs = write_rtstruct(tmp_path / "rs.dcm", vol, {"GTV_Mass_CT": square, "GTVx": square})
    with caplog.at_level("WARNING"):
        assert rasterize_roi(rs, "GTV_Mass", vol).sum() == 4
    assert "using 'GTV_Mass_CT'" in caplog.text
    assert rasterize_roi(rs, "gtv_mass", vol).sum() == 4
    only_x = write_rtstruct(tmp_path / "rs1.dcm", vol, {"GTVx": square, "Heart": square})
    with pytest.raises(InputError, match="unknown ROI 'GTV'"):  # 'GTVx' is not a suffix after a separator
        rasterize_roi(only_x, "GTV", vol)
    two = write_rtstruct(tmp_path / "rs2.dcm", vol, {"GTV_Mass_CT": square, "GTV_Mass_PET": square})
    with pytest.raises(InputError, match="unknown ROI 'GTV_Mass'"):  # ambiguous: refuse, list the names
        rasterize_roi(two, "GTV_Mass", vol)


def test_round_trip_with_dicom_series(tmp_path):
    """An RTSTRUCT drawn on a written series checks out against the series read back."""
    img = Volume(np.zeros((4, 12, 10), np.int16), (0.8, 0.6, 3.0), (-4.0, 2.0, 30.0))
    write_dicom_series(img, tmp_path / "ct", frame_of_reference_uid=FRAME)
    ct = read_dicom_series(tmp_path / "ct")
    rs = write_rtstruct(tmp_path / "rs.dcm", ct, {"gtv": [rect(ct, 1.5, 5.5, 0.5, 9.5, 2.0)]})
    m = rasterize_roi(rs, "gtv", ct)
    assert m.sum() == 4 * 9 and m[2, 1:10, 2:6].all()


STS_CASES = [(p, mod) for p in ("STS_001", "STS_002", "STS_003") for mod in ("CT", "MR_T1")]


@pytest.mark.shared_data
@pytest.mark.parametrize(("patient", "modality"), STS_CASES)
def test_sts_acceptance_against_mirp_nifti(patient, modality):
    """Acceptance: GTV masks rasterised from the real RTSTRUCTs agree with MIRP's conversion."""
    dicom = require_shared("sts_dicom", patient, modality, "dicom")
    nifti = require_shared("sts_nifti", patient, modality)
    image = read_dicom_series(dicom / "image")
    ref_image = read_volume(nifti / "image.nii.gz")
    assert image.geometry_difference(ref_image, atol=1e-3) is None
    np.testing.assert_allclose(image.array, ref_image.array, atol=1e-3)
    roi = f"GTV_Mass_{modality}"  # the ROI names in these files carry the modality
    assert list_rois(dicom / "mask" / "RS.dcm") == [roi]
    mask = rasterize_roi(dicom / "mask" / "RS.dcm", roi, image).astype(bool)
    # the name "GTV_Mass" resolves to the one ROI that extends it with a suffix
    np.testing.assert_array_equal(rasterize_roi(dicom / "mask" / "RS.dcm", "GTV_Mass", image).astype(bool), mask)
    ref = read_volume(nifti / "mask.nii.gz").array > 0
    dice = 2.0 * np.logical_and(mask, ref).sum() / (mask.sum() + ref.sum())
    assert dice >= 0.97, f"{patient}/{modality}: Dice {dice:.4f}"
