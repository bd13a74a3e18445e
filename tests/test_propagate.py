"""``cmedl data propagate``: rigid + B-spline registration of a planning CT onto a CBCT carries the mask
(known answer on a phantom with a known deformation), determinism, and one-line errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import one_line_error
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.phantom import generate_case, render_cbct
from cmedl.data.propagation import propagate_files, propagate_mask, resample_mask
from cmedl.data.registration import PropagateConfig
from cmedl.errors import ConfigError, GeometryError, InputError
from cmedl.io import Volume, read_volume, write_volume

#: fast settings for the tests: two levels (32 and 16 mm meshes), few samples, a tight region
FAST = PropagateConfig(iterations=(30, 20), learning_rate=1.0, rigid_iterations=60, samples=3000,
                       roi_margin_mm=20.0, threads=1)
runner = CliRunner()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def known_deformation(reference: sitk.Image, seed: int) -> sitk.Transform:
    """Fixed point -> moving point: a smooth displacement field of up to 4 mm, then a rotation of 2 degrees
    about z and a shift of (3, -4, 2.5) mm (ITK applies the last transform added first)."""
    rigid = sitk.Euler3DTransform()
    size = reference.GetSize()
    rigid.SetCenter(reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    rigid.SetRotation(0.0, 0.0, np.deg2rad(2.0))
    rigid.SetTranslation((3.0, -4.0, 2.5))
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
    disp = np.stack([4.0 * np.sin(0.8 * np.pi * xx + a) * np.cos(0.7 * np.pi * yy + b) * np.cos(0.6 * np.pi * zz + c)
                     for a, b, c in rng.uniform(0, 2 * np.pi, (3, 3))], axis=-1)
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.CopyInformation(reference)
    return sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])


def phantom_pair(seed: int = 2) -> tuple[Volume, Volume, Volume, Volume]:
    """(planning CT, its tumour mask, CBCT, true mask on the CBCT): one phantom anatomy rendered as CT,
    and, deformed by :func:`known_deformation` (labels nearest neighbour, texture linear), as CBCT."""
    case, anatomy = generate_case("ct", seed, 0, (32, 80, 80), spacing=(3.2, 3.2, 4.0), return_anatomy=True)
    ct, mask = case.image, case.mask
    ref = ct.to_sitk()
    true = known_deformation(ref, seed)

    def warp(array: np.ndarray, kind: int) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(ct.with_array(array).to_sitk(), ref, true, kind, 0))

    deformed = replace(anatomy, labels=warp(anatomy.labels, sitk.sitkNearestNeighbor),
                       texture=warp(anatomy.texture, sitk.sitkLinear))
    cbct = render_cbct(deformed, np.random.default_rng(seed), fov_radius_mm=150.0)
    cbct_vol = ct.with_array(np.rint(cbct).astype(np.int16))
    return ct, mask, cbct_vol, resample_mask(mask, cbct_vol, true)


@pytest.fixture(scope="module")
def pair() -> tuple[Volume, Volume, Volume, Volume]:
    return phantom_pair()


# ====================================================================== known answer
def test_propagated_mask_matches_the_known_deformation(pair) -> None:
    ct, mask, cbct, truth = pair
    assert truth.array.sum() > 200  # a tumour of a few hundred voxels, moved by ~5 mm
    unregistered = dice(mask.array, truth.array)
    res = propagate_mask(cbct, ct, mask, FAST, progress=False)
    assert res.mask.same_geometry(cbct) and res.mask.array.dtype == np.uint8
    registered = dice(res.mask.array, truth.array)
    assert registered >= 0.9, (unregistered, registered)
    assert unregistered < 0.7 and registered > unregistered + 0.2
    rigid_only = dice(resample_mask(mask, cbct, res.transform.GetNthTransform(0)).array, truth.array)
    assert registered > rigid_only  # the B-spline stage adds to the rigid one
    q = res.quality
    assert q.rigid < q.unregistered and q.region_deformable < q.region_rigid  # MI is lowered by each stage
    assert "unregistered" in q.line() and "deformable" in q.line() and "\n" not in q.line()


def test_same_inputs_same_transform(pair) -> None:
    """Seeded metric sampling on one thread: two runs give bit-identical transforms and masks."""
    ct, mask, cbct, _ = pair
    quick = replace(FAST, iterations=(8,), rigid_iterations=15)
    a, b = (propagate_mask(cbct, ct, mask, quick, progress=False) for _ in range(2))
    np.testing.assert_array_equal(a.mask.array, b.mask.array)
    assert a.transform.GetNthTransform(1).GetParameters() == b.transform.GetNthTransform(1).GetParameters()
    assert a.transform.GetNthTransform(0).GetParameters() == b.transform.GetNthTransform(0).GetParameters()
    other_seed = propagate_mask(cbct, ct, mask, replace(quick, seed=7, deformable=False), progress=False)
    assert other_seed.transform.GetParameters() != a.transform.GetNthTransform(0).GetParameters()


# ====================================================================== CLI and files
def test_cli_writes_mask_warped_ct_and_transform(pair, tmp_path: Path) -> None:
    ct, mask, cbct, truth = pair
    files = {name: write_volume(vol, tmp_path / "in" / f"{name}.nii.gz")
             for name, vol in (("planning", ct), ("gtv", mask), ("cbct_w1", cbct))}
    out = tmp_path / "out"
    args = ["data", "propagate", "--fixed", files["cbct_w1"], "--moving", files["planning"], "--mask", files["gtv"],
            "--out", out, "--rigid-only", "--samples", "3000", "--threads", "1", "--save-warped", "--save-transform"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    assert "registration quality, Mattes MI" in res.stdout and "rigid" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cbct_w1.nii.gz", "cbct_w1_transform.h5", "cbct_w1_warped.nii.gz"]
    propagated, warped = read_volume(out / "cbct_w1.nii.gz"), read_volume(out / "cbct_w1_warped.nii.gz")
    assert propagated.same_geometry(cbct) and warped.same_geometry(cbct) and warped.array.dtype == np.int16
    assert dice(propagated.array, truth.array) > dice(mask.array, truth.array) + 0.1  # the rigid stage alone helps
    # the saved transform reproduces the mask (CBCT point -> planning-CT point)
    transform = sitk.ReadTransform(str(out / "cbct_w1_transform.h5"))
    np.testing.assert_array_equal(resample_mask(mask, cbct, transform).array, propagated.array)
    # the library call with the same settings writes the same mask
    again = propagate_files(files["cbct_w1"], files["planning"], files["gtv"], tmp_path / "lib",
                            PropagateConfig(deformable=False, samples=3000, threads=1), progress=False)
    assert again.written == [tmp_path / "lib" / "cbct_w1.nii.gz"]
    np.testing.assert_array_equal(read_volume(again.written[0]).array, propagated.array)


def test_bad_inputs_are_one_line_errors_before_any_output(pair, tmp_path: Path) -> None:
    ct, mask, cbct, _ = pair
    planning = write_volume(ct, tmp_path / "planning.nii.gz")
    cbct_file = write_volume(cbct, tmp_path / "cbct.nii.gz")
    good_mask = write_volume(mask, tmp_path / "gtv.nii.gz")
    shifted = Volume(mask.array, mask.spacing, (mask.origin[0] + 5.0, *mask.origin[1:]), mask.direction)
    wrong_grid = write_volume(shifted, tmp_path / "shifted_gtv.nii.gz")
    labels = write_volume(mask.with_array(mask.array * 2), tmp_path / "labels.nii.gz")
    empty = write_volume(mask.with_array(np.zeros_like(mask.array)), tmp_path / "empty.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")

    def run(fixed: Path, moving: Path, mask_file: Path, out: Path, *extra: str):
        return runner.invoke(app, ["data", "propagate", "--fixed", str(fixed), "--moving", str(moving),
                                   "--mask", str(mask_file), "--out", str(out), "--rigid-only", *extra])

    cases = [
        ((cbct_file, planning, wrong_grid), [f"{wrong_grid}: mask is not on the voxel grid of the moving image", "origin"]),
        ((cbct_file, planning, labels), [f"{labels}: ", "not binary (values 2"]),
        ((cbct_file, planning, empty), [f"{empty}: ", "mask is empty"]),
        ((broken, planning, good_mask), [f"{broken}: "]),
        ((cbct_file, tmp_path / "missing.nii.gz", good_mask), ["missing.nii.gz: no such file"]),
    ]
    for i, (inputs, needles) in enumerate(cases):
        out = tmp_path / f"out{i}"
        one_line_error(run(*inputs, out), *needles)
        assert not out.exists()
    # the output folder would overwrite the CBCT with its mask (<cbct>.nii.gz): refused before any work
    one_line_error(run(cbct_file, planning, good_mask, tmp_path), "cbct.nii.gz: is an input")
    one_line_error(run(cbct_file, planning, good_mask, tmp_path / "o", "--iterations", "100,x"), "--iterations")
    one_line_error(run(cbct_file, planning, good_mask, tmp_path / "o", "--seed", "0"), "seed")
    one_line_error(run(cbct_file, planning, good_mask, tmp_path / "o", "--interpolation", "cubic"),
                   "unknown mask interpolation 'cubic'")
    with pytest.raises(GeometryError):
        propagate_mask(cbct, ct, shifted, FAST, progress=False)
    with pytest.raises(ConfigError, match="iterations"):
        PropagateConfig(iterations=(10, 0))
    with pytest.raises(InputError, match=r"rigid registration failed: the images do not overlap enough \(init"):
        far = Volume(cbct.array, cbct.spacing, (cbct.origin[0] + 2000.0, *cbct.origin[1:]), cbct.direction)
        propagate_mask(far, ct, mask, replace(FAST, init="identity", rigid_iterations=1), progress=False)


def test_nearest_and_linear_mask_resampling_agree_on_an_exact_shift() -> None:
    """A whole-voxel shift: both interpolations give the shifted mask exactly."""
    arr = np.zeros((8, 20, 20), np.uint8)
    arr[2:6, 5:12, 6:10] = 1
    mask = Volume(arr, (2.0, 2.0, 3.0), (-10.0, 4.0, 7.0))
    shift = sitk.TranslationTransform(3, (4.0, 0.0, 3.0))  # fixed point + (2, 0, 1) voxels -> moving point
    expected = np.zeros_like(arr)
    expected[1:5, 5:12, 4:8] = 1
    for kind in ("linear", "nearest"):
        np.testing.assert_array_equal(resample_mask(mask, mask, shift, kind).array, expected)
