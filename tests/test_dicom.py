"""DICOM series reading: HU rescale, slice sorting, geometry (oblique), series choice, error cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from cmedl.errors import InputError
from cmedl.io import Volume, read_volume
from cmedl.io.dicom import list_dicom_series, read_dicom_series, write_dicom_series
from cmedl.io.rtstruct import write_rtstruct

# A rotation of 20 deg about (1, 1, 1)/sqrt(3): a genuinely oblique (all 9 cosines non-zero) grid.
_A = np.deg2rad(20.0)
_K = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)
OBLIQUE = tuple((np.eye(3) + np.sin(_A) * _K + (1 - np.cos(_A)) * _K @ _K).ravel())


def ct_volume(
    shape=(6, 5, 7), spacing=(0.7, 0.9, 2.5), origin=(-20.0, 10.5, -100.0), direction=None
) -> Volume:
    """HU-like int16 voxels that differ on every slice, row and column (catches axis mix-ups)."""
    nz, ny, nx = shape
    arr = (
        np.arange(nz)[:, None, None] * 100 + np.arange(ny)[None, :, None] * 10 + np.arange(nx)
    ) - 1000
    kw = {} if direction is None else {"direction": direction}
    return Volume(arr.astype(np.int16), spacing=spacing, origin=origin, **kw)


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_hu_rescale_int16_and_geometry(tmp_path):
    vol = ct_volume()
    write_dicom_series(
        vol, tmp_path, rescale_intercept=-1024.0, patient_id="P7", series_description="chest"
    )
    stored = pydicom.dcmread(tmp_path / "slice_0000.dcm").pixel_array
    assert (
        stored[0, 0] == -1000 + 1024
    )  # really stored shifted: the reader must apply the intercept
    back = read_dicom_series(tmp_path)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry_difference(vol, atol=1e-5) is None
    assert back.meta["Modality"] == "CT" and back.meta["PatientID"] == "P7"
    assert {"SeriesInstanceUID", "FrameOfReferenceUID", "StudyInstanceUID"} <= set(back.meta)
    # read_volume dispatches folders to the DICOM reader
    assert read_volume(tmp_path).same_geometry(vol)


def test_fractional_rescale_gives_float32(tmp_path):
    vol = ct_volume()
    write_dicom_series(vol, tmp_path, rescale_slope=0.5, rescale_intercept=-1024.25)
    back = read_dicom_series(tmp_path)
    assert back.array.dtype == np.float32
    # stored = rint(2 v + 2048.5) = 2 v + 2048 (half to even) -> v' = stored * 0.5 - 1024.25 = v - 0.25
    np.testing.assert_array_equal(back.array, vol.array - 0.25)


def test_shuffled_file_names_are_sorted_by_position(tmp_path):
    vol = ct_volume(shape=(8, 4, 5))
    names = [f"{n:03d}.dcm" for n in np.random.default_rng(3).permutation(8)]
    write_dicom_series(vol, tmp_path, file_names=names)
    for i, name in enumerate(names):  # InstanceNumber lies too: sorting must use positions
        _edit(tmp_path / name, InstanceNumber=100 - i, SliceThickness="9.0")
    back = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing[2] == pytest.approx(2.5)  # from positions, not SliceThickness


def test_oblique_geometry_matches_simpleitk(tmp_path):
    vol = ct_volume(direction=OBLIQUE)
    write_dicom_series(vol, tmp_path)
    back = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.direction, OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-5)
    # independent reference: SimpleITK/GDCM's own series reader
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    ref = Volume.from_sitk(reader.Execute())
    assert back.geometry_difference(ref, atol=1e-4) is None
    np.testing.assert_array_equal(back.array, ref.array)


def test_descending_positions_give_right_handed_volume(tmp_path):
    # slices listed top-down in a left-handed direction: the reader re-sorts along row x col
    flipped = Volume(
        ct_volume().array, (0.7, 0.9, 2.5), (0.0, 0.0, 50.0), (1, 0, 0, 0, 1, 0, 0, 0, -1)
    )
    write_dicom_series(flipped, tmp_path)
    back = read_dicom_series(tmp_path)
    np.testing.assert_allclose(back.direction, (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(back.array, flipped.array[::-1])
    np.testing.assert_allclose(back.origin, (0.0, 0.0, 50.0 - 5 * 2.5), atol=1e-5)


def test_missing_slice_is_an_error(tmp_path):
    write_dicom_series(ct_volume(shape=(6, 4, 4)), tmp_path)
    (tmp_path / "slice_0003.dcm").unlink()
    with pytest.raises(InputError, match="missing slice") as exc:
        read_dicom_series(tmp_path)
    assert str(exc.value).startswith(str(tmp_path)) and "\n" not in str(exc.value)


def test_non_uniform_spacing_and_gantry_tilt_are_errors(tmp_path):
    write_dicom_series(ct_volume(shape=(6, 4, 4)), tmp_path)
    _edit(
        tmp_path / "slice_0003.dcm", ImagePositionPatient=["-20", "10.5", f"{-100 + 3 * 2.5 + 0.6}"]
    )
    with pytest.raises(InputError, match="non-uniform slice spacing"):
        read_dicom_series(tmp_path)
    tilt = tmp_path / "tilt"
    for k, path in enumerate(write_dicom_series(ct_volume(shape=(6, 4, 4)), tilt)):
        _edit(path, ImagePositionPatient=["-20", f"{10.5 + 0.8 * k}", f"{-100 + 2.5 * k}"])
    with pytest.raises(InputError, match="gantry tilt"):
        read_dicom_series(tilt)


@pytest.mark.parametrize(
    ("tag", "value"),
    [("PixelSpacing", ["0.5", "0.5"]), ("ImageOrientationPatient", ["0", "1", "0", "1", "0", "0"])],
)
def test_mixed_series_is_an_error(tmp_path, tag, value):
    write_dicom_series(ct_volume(shape=(5, 4, 4)), tmp_path)
    _edit(tmp_path / "slice_0002.dcm", **{tag: value})
    with pytest.raises(InputError, match=f"mixed series: {tag}"):
        read_dicom_series(tmp_path)


def test_mixed_sizes_duplicates_and_single_slice(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_dicom_series(ct_volume(shape=(4, 4, 4)), a, series_uid="1.2.3")
    write_dicom_series(
        ct_volume(shape=(1, 4, 6), origin=(-20, 10.5, -80)),
        a,
        series_uid="1.2.3",
        file_names=["x.dcm"],
    )
    with pytest.raises(InputError, match="different sizes"):
        read_dicom_series(a)
    write_dicom_series(ct_volume(shape=(4, 4, 4)), b)
    dup = pydicom.dcmread(b / "slice_0001.dcm")
    dup.SOPInstanceUID = generate_uid()
    dup.save_as(b / "copy.dcm")
    with pytest.raises(InputError, match="duplicate slice positions"):
        read_dicom_series(b)
    write_dicom_series(ct_volume(shape=(1, 4, 4)), c)
    with pytest.raises(InputError, match="single slice"):
        read_dicom_series(c)


def test_no_dicom_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="no DICOM image files.*sub-folders") as exc:
        read_dicom_series(tmp_path)
    assert str(exc.value).startswith(str(tmp_path))
    with pytest.raises(InputError, match="no such folder"):
        read_dicom_series(tmp_path / "absent")


def test_series_choice_by_uid_and_non_image_objects_skipped(tmp_path):
    ct = ct_volume(shape=(4, 4, 5))
    mr = Volume(np.full((3, 4, 5), 7, np.int16), spacing=(1, 1, 3))
    write_dicom_series(
        ct, tmp_path, series_uid="1.2.826.0.1.111", file_names=[f"ct{k}.dcm" for k in range(4)]
    )
    write_dicom_series(
        mr,
        tmp_path,
        modality="MR",
        series_uid="1.2.826.0.1.222",
        file_names=[f"mr{k}.dcm" for k in range(3)],
    )
    (tmp_path / "readme.txt").write_text("not dicom")
    with pytest.raises(InputError, match="2 image series") as exc:
        read_dicom_series(tmp_path)
    assert "1.2.826.0.1.111" in str(exc.value) and "1.2.826.0.1.222" in str(exc.value)
    back = read_dicom_series(tmp_path, series_uid="1.2.826.0.1.222")
    assert back.shape == (3, 4, 5) and back.meta["Modality"] == "MR" and (back.array == 7).all()
    with pytest.raises(InputError, match="did you mean '1.2.826.0.1.222'"):
        read_dicom_series(tmp_path, series_uid="1.2.826.0.1.223")
    # an RTSTRUCT beside the images is listed but never read as a slice
    write_rtstruct(tmp_path / "rs.dcm", back, {"GTV": []})
    infos = {s.uid: s for s in list_dicom_series(tmp_path)}
    assert len(infos) == 3
    assert infos["1.2.826.0.1.111"].n_files == 4 and infos["1.2.826.0.1.111"].modality == "CT"
    assert [s.is_image for s in infos.values()].count(False) == 1
    only_mr = tmp_path / "mr_only"
    only_mr.mkdir()
    for k in range(3):
        shutil.copy(tmp_path / f"mr{k}.dcm", only_mr)
    shutil.copy(tmp_path / "rs.dcm", only_mr)
    assert read_dicom_series(only_mr).shape == (3, 4, 5)


def test_gdcm_fallback_for_undecodable_pixel_data(tmp_path, monkeypatch):
    """When pydicom cannot decode (compressed data, no plugin) SimpleITK/GDCM reads the slice;
    GDCM applies the rescale itself, so the intercept must not be applied twice."""
    vol = ct_volume(shape=(3, 4, 5))
    write_dicom_series(vol, tmp_path, rescale_intercept=-1024.0)

    def no_decoder(self):
        raise NotImplementedError("no pixel data handler for this transfer syntax")

    calls = []
    real_read = sitk.ReadImage

    def counting_read(*args, **kwargs):
        calls.append(args[0])
        return real_read(*args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    monkeypatch.setattr(sitk, "ReadImage", counting_read)
    back = read_dicom_series(tmp_path)
    assert len(calls) == 3  # every slice went through GDCM
    np.testing.assert_array_equal(back.array, vol.array)
