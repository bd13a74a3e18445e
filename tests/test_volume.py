import numpy as np
import pytest

from cmedl.errors import GeometryError, InputError
from cmedl.io import Volume, check_same_geometry, read_volume, write_volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, tiny_volume, suffix):
    oblique = Volume(
        tiny_volume.array,
        spacing=tiny_volume.spacing,
        origin=tiny_volume.origin,
        direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    )
    out = write_volume(oblique, tmp_path / f"v{suffix}")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, oblique.array)
    assert back.same_geometry(oblique)
    np.testing.assert_allclose(back.spacing_zyx, (2.5, 0.9, 0.8), rtol=1e-6)


def test_index_physical_round_trip(tiny_volume):
    idx = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    pts = tiny_volume.index_to_physical(idx)
    np.testing.assert_allclose(pts[1], tiny_volume.origin)
    np.testing.assert_allclose(pts[0], np.array(tiny_volume.origin) + [0.8, 1.8, 7.5])
    np.testing.assert_allclose(tiny_volume.physical_to_index(pts), idx)


def test_missing_and_corrupt_files_raise_one_line(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError) as exc:
        read_volume(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_2d_image_rejected(tmp_path):
    import SimpleITK as sitk

    p = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(p))
    with pytest.raises(InputError, match="2D"):
        read_volume(p)


def test_geometry_mismatch_names_both_files(tiny_volume):
    other = Volume(tiny_volume.array, spacing=(1, 1, 1))
    with pytest.raises(GeometryError, match="a.nii.gz and b.nii.gz.*spacing"):
        check_same_geometry(tiny_volume, other, "a.nii.gz", "b.nii.gz")


def test_write_failure_leaves_no_partial_file(tmp_path, tiny_volume):
    with pytest.raises(InputError):
        write_volume(tiny_volume, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_nan_and_inf_are_flagged_in_every_format(tmp_path, suffix):
    """SimpleITK reads NIfTI NaN/Inf as 0: read_volume must still flag them, and segmentation refuse them."""
    import SimpleITK as sitk

    from cmedl.data.preprocess import PreprocessConfig, prepare_volume

    arr = np.full((4, 6, 7), 40.0, np.float32)
    clean = tmp_path / f"clean{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(clean))
    assert "has_nonfinite" not in read_volume(clean).meta
    for bad_value in (np.nan, np.inf):
        arr[3, 5, 6] = bad_value  # the last voxel: the scan must reach the end of the payload
        path = tmp_path / f"bad{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
        vol = read_volume(path)
        assert vol.meta.get("has_nonfinite") == "1"
        with pytest.raises(InputError, match=rf"^{path}: image has NaN or infinite voxels$"):
            prepare_volume(vol, PreprocessConfig("ct"))
    # integer NIfTI cannot hold NaN and is not scanned
    ints = tmp_path / f"int{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.int16) * 0), str(ints))
    assert "has_nonfinite" not in read_volume(ints).meta


def test_nifti_scan_crosses_chunks_and_reads_float64(tmp_path):
    import SimpleITK as sitk

    from cmedl.io.volume import nifti_has_nonfinite

    arr = np.zeros((5, 8, 9), np.float64)
    path = tmp_path / "f8.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert not nifti_has_nonfinite(path, chunk_bytes=40)
    arr[2, 4, 4] = -np.inf
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert nifti_has_nonfinite(path, chunk_bytes=40)  # 5 voxels per chunk, the bad one in the middle
    assert nifti_has_nonfinite(path)
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file")
    assert not nifti_has_nonfinite(tmp_path / "junk.nii")
