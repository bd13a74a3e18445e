"""`cmedl data import | info | split` in-process: exit codes, outputs, manifests, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.manifest import Case, Manifest
from cmedl.io import Volume, read_volume, write_volume
from cmedl.io.dicom import read_dicom_series, write_dicom_series
from cmedl.io.rtstruct import write_rtstruct

runner = CliRunner()


def _oblique() -> tuple[float, ...]:
    a = np.deg2rad(15.0)
    c, s = np.cos(a), np.sin(a)
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def dicom_case(tmp_path) -> tuple[Path, Path]:
    """An oblique CT series (6 x 16 x 18, HU) and an RTSTRUCT with ROIs 'GTV' (2 x 16 voxels),
    'far' (outside the image) and 'empty' (no contours)."""
    arr = np.full((6, 16, 18), -1000, np.int16)
    arr[2:4, 4:8, 5:9] = 40
    vol = Volume(arr, (0.8, 0.7, 2.5), (-30.0, 12.0, -200.0), _oblique())
    ct_dir = tmp_path / "dicom" / "ct"
    write_dicom_series(vol, ct_dir, rescale_intercept=-1024.0, patient_id="PAT-1")
    ct = read_dicom_series(ct_dir)

    def square(z: float, x0: float = 4.5, y0: float = 3.5) -> np.ndarray:
        idx = np.array([[x0, y0, z], [x0 + 4, y0, z], [x0 + 4, y0 + 4, z], [x0, y0 + 4, z]])
        return ct.index_to_physical(idx)

    rs = write_rtstruct(
        tmp_path / "dicom" / "rs.dcm",
        ct,
        {"GTV": [square(2.0), square(3.0)], "far": [square(40.0)], "empty": []},
    )
    return ct_dir, rs


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_import_writes_image_label_and_manifest(tmp_path, dicom_case):
    ct_dir, rs = dicom_case
    out = tmp_path / "ds"
    res = _run(
        "data", "import", ct_dir, "--out", out, "--id", "case_01", "--rtstruct", rs, "--roi", "GTV"
    )
    assert res.exit_code == 0, res.output
    image = read_volume(out / "images" / "case_01.nii.gz")
    label = read_volume(out / "labels" / "case_01.nii.gz")
    dicom = read_dicom_series(ct_dir)
    assert image.geometry_difference(dicom, atol=1e-5) is None  # oblique geometry kept
    assert label.geometry_difference(dicom, atol=1e-5) is None
    np.testing.assert_array_equal(image.array, dicom.array)
    assert image.array.min() == -1000 and image.array.max() == 40  # HU, intercept applied
    assert label.array.dtype == np.uint8 and label.array.sum() == 32
    assert label.array[2:4, 4:8, 5:9].all()  # the contours outline exactly the 40 HU block
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["cases"] == [
        {
            "id": "case_01",
            "patient_id": "PAT-1",
            "modality": "ct",
            "image": "images/case_01.nii.gz",
            "label": "labels/case_01.nii.gz",
            "split": "train",
        }
    ]
    # re-import as CBCT under the same id (--replace) replaces the entry; another id is added
    res = _run(
        "data",
        "import",
        ct_dir,
        "--out",
        out,
        "--id",
        "case_01",
        "--modality",
        "cbct",
        "--patient-id",
        "P9",
        "--replace",
    )
    assert res.exit_code == 0, res.output
    assert not (out / "labels" / "case_01.nii.gz").exists()  # the replaced case's label went with it
    res = _run(
        "data", "import", ct_dir, "--out", out, "--id", "case_02", "--rtstruct", rs, "--roi", "GTV"
    )
    assert res.exit_code == 0, res.output
    man = Manifest.load(out / "manifest.json")
    assert [(c.id, c.modality, c.patient_id, c.label is not None) for c in man.cases] == [
        ("case_01", "cbct", "P9", False),
        ("case_02", "ct", "PAT-1", True),
    ]


def test_import_to_manifest_elsewhere_uses_relative_paths(tmp_path, dicom_case):
    ct_dir, rs = dicom_case
    man_path = tmp_path / "meta" / "all.json"
    res = _run(
        "data",
        "import",
        ct_dir,
        "--out",
        tmp_path / "ds",
        "--id",
        "c1",
        "--rtstruct",
        rs,
        "--manifest",
        man_path,
    )
    assert res.exit_code != 0 and "has 3 ROIs; choose one with --roi: GTV, far, empty" in res.stderr
    res = _run(
        "data",
        "import",
        ct_dir,
        "--out",
        tmp_path / "ds",
        "--id",
        "c1",
        "--rtstruct",
        rs,
        "--roi",
        "GTV",
        "--manifest",
        man_path,
    )
    assert res.exit_code == 0, res.output
    man = Manifest.load(man_path)
    assert man.cases[0].image == "../ds/images/c1.nii.gz"
    assert man.image_path(man.cases[0]).exists() and man.label_path(man.cases[0]).exists()


@pytest.mark.parametrize(
    ("roi", "message"),
    [
        ("GTVV", "unknown ROI 'GTVV'; did you mean 'GTV'?"),
        ("empty", "'empty' is empty"),
        ("far", "ROI 'far': a contour lies at slice position 40.00, outside the image's slices 0-5"),
    ],
)
def test_import_errors_leave_no_output(tmp_path, dicom_case, roi, message):
    ct_dir, rs = dicom_case
    out = tmp_path / "ds"
    res = _run(
        "data", "import", ct_dir, "--out", out, "--id", "bad", "--rtstruct", rs, "--roi", roi
    )
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {rs}") and message in lines[0]
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))  # no image, no manifest


def test_import_bad_arguments(tmp_path, dicom_case):
    ct_dir, _ = dicom_case
    res = _run("data", "import", ct_dir, "--out", tmp_path / "ds", "--id", "x", "--modality", "pet")
    assert res.exit_code == 1 and "unknown modality 'pet'" in res.stderr
    res = _run("data", "import", ct_dir, "--out", tmp_path / "ds", "--id", "../x")
    assert res.exit_code == 1 and "invalid case id" in res.stderr
    res = _run("data", "import", tmp_path / "nowhere", "--out", tmp_path / "ds", "--id", "x")
    assert res.exit_code == 1 and "no such folder" in res.stderr
    assert not (tmp_path / "ds").exists()


def test_info_on_every_kind_of_path(tmp_path, dicom_case):
    ct_dir, rs = dicom_case
    res = _run("data", "info", ct_dir)
    assert res.exit_code == 0, res.output
    assert "shape (z, y, x): (6, 16, 18)" in res.stdout
    assert "spacing (x, y, z) mm: (0.8, 0.7, 2.5)" in res.stdout
    assert "dtype: int16" in res.stdout and "min: -1000" in res.stdout and "max: 40" in res.stdout
    assert "orientation: " in res.stdout and "PatientID: PAT-1" in res.stdout
    res = _run("data", "info", rs)
    assert (
        res.exit_code == 0
        and "GTV (2 contours)" in res.stdout
        and "empty (0 contours)" in res.stdout
    )
    nii = tmp_path / "axial.nii.gz"
    write_volume(Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5)), nii)
    res = _run("data", "info", nii)
    assert res.exit_code == 0 and "orientation: LPS" in res.stdout and "p50=29.5" in res.stdout
    # a folder with two series lists them instead of guessing
    write_dicom_series(
        Volume(np.zeros((3, 4, 5), np.int16)),
        ct_dir,
        modality="MR",
        series_uid="1.2.3.4.5",
        file_names=["mr0.dcm", "mr1.dcm", "mr2.dcm"],
    )
    res = _run("data", "info", ct_dir)
    assert (
        res.exit_code == 0 and "1.2.3.4.5  MR  3 files" in res.stdout and "shape" not in res.stdout
    )
    res = _run("data", "info", tmp_path / "missing.nii.gz")
    assert res.exit_code == 1 and "no such file" in res.stderr


def _cohort(root: Path, n: int = 10) -> Path:
    cases = [
        Case(f"ct_{i}", f"P{i}", "ct", f"images/ct_{i}.nii.gz", f"labels/ct_{i}.nii.gz")
        for i in range(n)
    ]
    cases += [Case(f"mr_{i}", f"M{i}", "mr", f"images/mr_{i}.nii.gz") for i in range(n // 2)]
    cases.append(Case("ct_0b", "P0", "cbct", "images/ct_0b.nii.gz"))  # second scan of patient P0
    return Manifest(cases, name="cohort").save(root / "manifest.json")


def test_split_and_manifest_info(tmp_path):
    path = _cohort(tmp_path)
    res = _run(
        "data", "split", path, "--train", "0.6", "--val", "0.2", "--test", "0.2", "--seed", "3"
    )
    assert res.exit_code == 0, res.output
    man = Manifest.load(path)  # re-validates: every patient in exactly one split
    assert man.seed == 3
    ct_splits = [c.split for c in man.cases if c.modality == "ct"]
    assert (
        ct_splits.count("train") == 6
        and ct_splits.count("val") == 2
        and ct_splits.count("test") == 2
    )
    assert man.get("ct_0b").split == man.get("ct_0").split
    first = path.read_text()
    other = tmp_path / "elsewhere" / "split.json"
    res = _run(
        "data",
        "split",
        path,
        "--train",
        "0.6",
        "--val",
        "0.2",
        "--test",
        "0.2",
        "--seed",
        "3",
        "--out",
        other,
    )
    assert (
        res.exit_code == 0 and path.read_text() == first
    )  # same seed, same split; source unchanged
    moved = Manifest.load(other)
    assert moved.cases[0].image == "../images/ct_0.nii.gz"
    assert moved.image_path(moved.cases[0]) == man.image_path(man.cases[0])
    assert [c.split for c in moved.cases] == [c.split for c in man.cases]
    res = _run("data", "info", path)
    assert res.exit_code == 0
    assert (
        "cases: 16" in res.stdout and "patients: 15" in res.stdout and "labelled: 10" in res.stdout
    )
    assert "ct: train=6 val=2 test=2" in res.stdout
    res = _run("data", "split", path, "--train", "0", "--val", "0", "--test", "0")
    assert res.exit_code == 1 and "fractions" in res.stderr
    assert path.read_text() == first


def test_single_roi_needs_no_name_and_failed_import_keeps_dataset(tmp_path, dicom_case):
    ct_dir, rs = dicom_case
    ct = read_dicom_series(ct_dir)
    idx = np.array([[1.5, 1.5, 1.0], [3.5, 1.5, 1.0], [3.5, 3.5, 1.0], [1.5, 3.5, 1.0]])
    single = write_rtstruct(tmp_path / "one.dcm", ct, {"only": [ct.index_to_physical(idx)]})
    out = tmp_path / "ds"
    res = _run("data", "import", ct_dir, "--out", out, "--id", "a", "--rtstruct", single)
    assert res.exit_code == 0, res.output
    assert read_volume(out / "labels" / "a.nii.gz").array.sum() == 4
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    manifest_text = (out / "manifest.json").read_text()
    res = _run(
        "data", "import", ct_dir, "--out", out, "--id", "b", "--rtstruct", rs, "--roi", "far"
    )
    assert res.exit_code == 1
    assert (
        sorted(p.relative_to(out) for p in out.rglob("*")) == before
    )  # no b.nii.gz, no temp files
    assert (out / "manifest.json").read_text() == manifest_text


def test_python_dash_m_cmedl_runs_the_cli(tmp_path):
    """``python -m cmedl`` works where the console script is not on PATH (e.g. a remote job)."""
    res = subprocess.run([sys.executable, "-m", "cmedl", "data", "info", str(tmp_path / "missing.nii.gz")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip() == f"error: {tmp_path / 'missing.nii.gz'}: no such file or folder"
