"""`cmedl data import` of cohorts: images/ + labels/ folders, nnU-Net raw data sets, DICOM cohorts
(one folder per patient), layout detection, bad inputs (one-line errors, nothing written), and the
real sarcoma cohort (CT + MR per patient) when ../shared is there."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import require_shared
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.cohort_import import binary_label, import_data
from cmedl.data.dicom_cohort import match_rois, series_modality
from cmedl.data.import_layouts import (
    choose_label,
    detect_layout,
    modality_from_channel,
    nnunet_labels,
)
from cmedl.data.manifest import Manifest
from cmedl.errors import InputError
from cmedl.io import Volume, read_volume, write_volume
from cmedl.io.dicom import read_dicom_series, write_dicom_series
from cmedl.io.rtstruct import RoiInfo, write_rtstruct

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(res, path: Path, text: str) -> None:
    """Exit 1 with exactly one stderr line, starting with the offending path and holding ``text``."""
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {path}"), lines[0]
    assert text in lines[0], lines[0]


def _no_files(out: Path) -> bool:
    """Nothing written (no file at all, temporaries included)."""
    return not out.exists() or not any(p.is_file() for p in out.rglob("*"))


# ------------------------------------------------------------------------------- image files
def _image(shape=(4, 6, 8), spacing=(0.9, 0.8, 2.5), origin=(-5.0, 3.0, 10.0), fill=0) -> Volume:
    arr = np.arange(np.prod(shape), dtype=np.int16).reshape(shape) + fill
    return Volume(arr, spacing, origin)


def _label(values: list[tuple[tuple, int]], like: Volume) -> Volume:
    arr = np.zeros(like.shape, np.uint8)
    for index, v in values:
        arr[index] = v
    return like.with_array(arr)


@pytest.fixture
def folder_set(tmp_path) -> Path:
    """images/: a (NIfTI, label 0/1 with 6 voxels), b (NRRD, MHA label with 2 voxels), c (no label)."""
    src = tmp_path / "set"
    a, b, c = _image(), _image(fill=100), _image(fill=200)
    write_volume(a, src / "images" / "a.nii.gz")
    write_volume(_label([((1, slice(0, 2), slice(0, 3)), 1)], a), src / "labels" / "a.nii.gz")
    write_volume(b, src / "images" / "b.nrrd")
    write_volume(_label([((2, 3, slice(4, 6)), 1)], b), src / "labels" / "b.mha")
    write_volume(c, src / "images" / "c.nii.gz")
    return src


def test_folder_layout_pairs_by_case_id(tmp_path, folder_set):
    out = tmp_path / "ds"
    assert detect_layout(folder_set) == "folders"
    res = _run("data", "import", folder_set, "--out", out, "--modality", "ct")
    assert res.exit_code == 0, res.output
    assert "images/ + labels/ folder, 3 image(s), 2 with a label; modality ct" in res.stdout
    assert "a: imported (ct, 4 slices, label 6 voxels, split train)" in res.stdout
    assert "c: imported (ct, 4 slices, no label, split train)" in res.stdout
    assert "imported 3 case(s) of 3 patient(s), 2 labelled (0 skipped, 0 failed)" in res.stdout
    man = Manifest.load(out)
    assert [(c.id, c.patient_id, c.modality, c.label) for c in man.cases] == [
        ("a", "a", "ct", "labels/a.nii.gz"), ("b", "b", "ct", "labels/b.nii.gz"), ("c", "c", "ct", None)]
    b_image, b_label = read_volume(out / "images" / "b.nii.gz"), read_volume(out / "labels" / "b.nii.gz")
    np.testing.assert_array_equal(b_image.array, _image(fill=100).array)  # NRRD -> NIfTI, same voxels
    assert b_label.array.dtype == np.uint8 and b_label.array.sum() == 2 and b_label.array[2, 3, 4:6].all()
    assert b_label.geometry_difference(b_image, atol=1e-6) is None
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.nii.gz", "b.nii.gz"]

    # again without --replace: refused before any work; with --replace and a's label gone: a loses it
    before = (out / "manifest.json").read_text()
    res = _run("data", "import", folder_set, "--out", out, "--modality", "ct")
    _one_error_line(res, out / "manifest.json", "case ids already in the manifest: a, b, c; pass --replace")
    assert (out / "manifest.json").read_text() == before
    (folder_set / "labels" / "a.nii.gz").unlink()
    res = _run("data", "import", folder_set, "--out", out, "--modality", "mr", "--replace")
    assert res.exit_code == 0, res.output
    man = Manifest.load(out)
    assert [(c.id, c.modality, c.label is None) for c in man.cases] == [("a", "mr", True), ("b", "mr", False),
                                                                         ("c", "mr", True)]
    assert not (out / "labels" / "a.nii.gz").exists()  # the replaced case's label went with it


def test_folder_label_values(tmp_path):
    src, out = tmp_path / "set", tmp_path / "ds"
    img = _image()
    write_volume(img, src / "images" / "x.nii.gz")
    write_volume(_label([((0, 0, slice(0, 3)), 1), ((1, 1, slice(0, 5)), 2)], img), src / "labels" / "x.nii.gz")
    res = _run("data", "import", src, "--out", out, "--modality", "ct")
    _one_error_line(res, src / "labels" / "x.nii.gz", "label has values other than 0 and 1 (2); pass --label-value")
    assert _no_files(out)
    res = _run("data", "import", src, "--out", out, "--modality", "ct", "--label-value", "2")
    assert res.exit_code == 0, res.output
    mask = read_volume(out / "labels" / "x.nii.gz").array
    assert mask.sum() == 5 and mask[1, 1, :5].all()  # only the value-2 voxels
    # no --modality for image files: the modality cannot be guessed
    res = _run("data", "import", src, "--out", tmp_path / "ds2")
    _one_error_line(res, src / "images", "pass --modality ct, cbct or mr")


def test_binary_label_refuses_non_label_maps(tmp_path):
    f = tmp_path / "l.nii.gz"
    with pytest.raises(InputError, match="non-integer"):
        binary_label(np.array([0.0, 0.5, 1.0]), None, f)
    with pytest.raises(InputError, match="NaN"):
        binary_label(np.array([0.0, np.nan]), (1,), f)
    np.testing.assert_array_equal(binary_label(np.array([0, 1, 2, 3]), (2, 3), f), [0, 0, 1, 1])
    assert binary_label(np.array([0.0, 1.0]), None, f).dtype == np.uint8


@pytest.mark.parametrize("case", ["orphan", "duplicate", "geometry", "not_image"])
def test_folder_bad_inputs(tmp_path, folder_set, case):
    out = tmp_path / "ds"
    if case == "orphan":
        bad = folder_set / "labels" / "z.nii.gz"
        write_volume(_image(), bad)
        text = f"has no image 'z' in {folder_set / 'images'}"
    elif case == "duplicate":
        bad = folder_set / "images" / "a.nrrd"
        write_volume(_image(), bad)
        text = "duplicate case id 'a': also a.nii.gz"
    elif case == "geometry":
        bad = folder_set / "images" / "c.nii.gz"
        write_volume(_image(origin=(0.0, 0.0, 0.0)), folder_set / "labels" / "c.nii.gz")
        text = f"and {folder_set / 'labels' / 'c.nii.gz'} are on different voxel grids: origin"
    else:
        bad = folder_set / "images" / "notes.txt"
        bad.write_text("x")
        text = "is not an image file"
    _one_error_line(_run("data", "import", folder_set, "--out", out, "--modality", "ct"), bad, text)
    assert _no_files(out)


# ------------------------------------------------------------------------------- nnU-Net
def _nnunet(root: Path, labels=None, channels=None, test_cases=("t1",)) -> Path:
    """Dataset001: imagesTr case_a/case_b (labels 0 bg, 1 organ, 2 tumour) and imagesTs."""
    root.mkdir(parents=True, exist_ok=True)
    meta = {"channel_names": channels or {"0": "CT"},
            "labels": labels or {"background": 0, "lung": 1, "tumour": 2},
            "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    for k, name in enumerate(("case_a", "case_b")):
        img = _image(fill=10 * k)
        write_volume(img, root / "imagesTr" / f"{name}_0000.nii.gz")
        write_volume(_label([((1, slice(0, 3), slice(0, 3)), 1), ((2, 0, slice(0, 2 + k)), 2)], img),
                     root / "labelsTr" / f"{name}.nii.gz")
    for name in test_cases:
        write_volume(_image(fill=50), root / "imagesTs" / f"{name}_0000.nii.gz")
    return root


def test_nnunet_layout(tmp_path):
    src, out = _nnunet(tmp_path / "Dataset001_Lung"), tmp_path / "ds"
    assert detect_layout(src) == "nnunet"
    res = _run("data", "import", src, "--out", out)
    assert res.exit_code == 0, res.output
    assert "nnU-Net raw data set, 3 image(s); channel 'CT' -> ct, tumour = label 'tumour' (named like a tumour)" \
        in res.stdout
    man = Manifest.load(out)
    assert [(c.id, c.modality, c.split, c.label is not None) for c in man.cases] == [
        ("case_a", "ct", "train", True), ("case_b", "ct", "train", True), ("t1", "ct", "test", False)]
    for name, n in (("case_a", 2), ("case_b", 3)):  # only the tumour (value 2) voxels, as 0/1
        mask = read_volume(out / "labels" / f"{name}.nii.gz").array
        assert mask.max() == 1 and mask.sum() == n and mask[2, 0, :n].all()
    np.testing.assert_array_equal(read_volume(out / "images" / "case_b.nii.gz").array, _image(fill=10).array)


def test_nnunet_v1_labels_and_mr_channel(tmp_path):
    src = _nnunet(tmp_path / "Task02", labels={"background": 0, "lesion": 2}, channels={"0": "T2"}, test_cases=())
    raw = json.loads((src / "dataset.json").read_text())
    raw["labels"] = {"0": "background", "2": "lesion"}  # v1: value -> name
    raw["modality"] = raw.pop("channel_names")
    (src / "dataset.json").write_text(json.dumps(raw))
    result = import_data(src, tmp_path / "ds")
    assert [(c.id, c.modality) for c in result.cases] == [("case_a", "mr"), ("case_b", "mr")]
    assert read_volume(tmp_path / "ds" / "labels" / "case_a.nii.gz").array.sum() == 2


def test_label_and_channel_choice():
    p = Path("dataset.json")
    assert choose_label({"background": (0,), "GTV": (1,)}, None, p) == ((1,), "label 'GTV'")
    assert choose_label({"background": (0,), "liver": (1,), "liver tumor": (2,)}, None, p)[0] == (2,)
    assert choose_label({"background": (0,), "whole": (1, 2), "core": (2,)}, 1, p)[0] == (1,)
    with pytest.raises(InputError, match="cannot tell which label is the tumour .*pass --label-value"):
        choose_label({"background": (0,), "liver": (1,), "spleen": (2,)}, None, p)
    assert nnunet_labels({"labels": {"background": 0, "whole": [1, 2], "core": 2}}, p) == {
        "background": (0,), "whole": (1, 2), "core": (2,)}  # v2 region-based labels
    assert [modality_from_channel(n) for n in ("CT", "T2", "ADC", "CBCT", "noNorm", "T1w MRI")] == [
        "ct", "mr", "mr", "cbct", None, "mr"]


@pytest.mark.parametrize("case", ["missing_label", "multi_channel", "channel_file", "geometry", "unreadable",
                                  "duplicate", "orphan_label", "no_dataset_json"])
def test_nnunet_bad_inputs(tmp_path, case):
    src, out = _nnunet(tmp_path / "Dataset001"), tmp_path / "ds"
    if case == "missing_label":
        (src / "labelsTr" / "case_b.nii.gz").unlink()
        bad, text = src / "imagesTr" / "case_b_0000.nii.gz", "has no label"
    elif case == "multi_channel":
        raw = json.loads((src / "dataset.json").read_text())
        raw["channel_names"] = {"0": "T2", "1": "ADC"}
        (src / "dataset.json").write_text(json.dumps(raw))
        bad, text = src / "dataset.json", "has 2 channels (0: T2, 1: ADC); cmedl imports single-channel"
    elif case == "channel_file":
        bad = src / "imagesTr" / "case_a_0001.nii.gz"
        write_volume(_image(), bad)
        text = "is channel 1 of case 'case_a': cmedl imports single-channel data sets only"
    elif case == "geometry":
        bad = src / "imagesTr" / "case_b_0000.nii.gz"
        write_volume(_image(spacing=(1.0, 1.0, 2.5)), bad)
        text = "are on different voxel grids: spacing"
    elif case == "unreadable":  # the last case: earlier cases are already in temporaries when it fails
        bad = src / "imagesTs" / "t1_0000.nii.gz"
        data = gzip.decompress(bad.read_bytes())
        bad.write_bytes(gzip.compress(data[: len(data) // 2]))
        text = "truncated"
    elif case == "duplicate":
        bad = src / "imagesTs" / "case_a_0000.nii.gz"
        write_volume(_image(), bad)
        text = "duplicate case id 'case_a'"
    elif case == "orphan_label":
        bad = src / "labelsTr" / "case_z.nii.gz"
        write_volume(_image(), bad)
        text = "has no image imagesTr/case_z_0000.nii.gz"
    else:
        bad = src / "dataset.json"
        bad.unlink()
        text = "missing: an nnU-Net raw data set needs its dataset.json"
    res = _run("data", "import", src, "--out", out)
    _one_error_line(res, bad, text)
    assert _no_files(out)


# ------------------------------------------------------------------------------- DICOM cohort
def _ct(fill_block=True, modality="CT") -> Volume:
    arr = np.full((6, 16, 18), -1000 if modality == "CT" else 0, np.int16)
    if fill_block:
        arr[2:4, 4:8, 5:9] = 40
    return Volume(arr, (0.8, 0.7, 2.5), (-30.0, 12.0, -200.0))


def _series(folder: Path, patient: str, modality="CT", frame=None, description="") -> Volume:
    write_dicom_series(_ct(modality=modality), folder, modality=modality, patient_id=patient,
                       rescale_intercept=-1024.0 if modality == "CT" else 0.0, frame_of_reference_uid=frame,
                       series_description=description)
    return read_dicom_series(folder)


def _square(vol: Volume, z: float, x0: float, y0: float, n: int) -> np.ndarray:
    """Contour around n x n voxel centres starting at (x0, y0) on slice z."""
    a, b = x0 - 0.5, x0 + n - 0.5
    c, d = y0 - 0.5, y0 + n - 0.5
    return vol.index_to_physical(np.array([[a, c, z], [b, c, z], [b, d, z], [a, d, z]], dtype=float))


@pytest.fixture
def dicom_cohort(tmp_path) -> Path:
    """P1: CT + RS (GTV_p 2x16 voxels, GTV_n 4, Heart); P2: CT and MR in one frame of reference, each
    with an RS referencing its series (GTV: CT 16, MR 9); P3: CT, no RS; P4: CT + MR (own folders, one
    frame of reference), the CT's RS references a series that is not there (re-exported, as the
    sarcoma data); P5: like P4 but the RS at the patient level, so the series cannot be told."""
    root = tmp_path / "cohort"
    ct = _series(root / "P1" / "study" / "ct", "ID1")
    write_rtstruct(root / "P1" / "study" / "rs.dcm", ct, {
        "GTV_p": [_square(ct, 2, 5, 4, 4), _square(ct, 3, 5, 4, 4)],
        "GTV_n": [_square(ct, 1, 12, 10, 2)], "Heart": [_square(ct, 4, 1, 1, 3)]})
    frame = generate_uid()
    ct = _series(root / "P2" / "ct", "ID2", frame=frame)
    mr = _series(root / "P2" / "mr", "ID2", modality="MR", frame=frame)
    write_rtstruct(root / "P2" / "rs_ct.dcm", ct, {"GTV": [_square(ct, 2, 5, 4, 4)]})
    write_rtstruct(root / "P2" / "rs_mr.dcm", mr, {"GTV": [_square(mr, 3, 5, 4, 3)]})
    _series(root / "P3" / "ct", "ID3")
    for name in ("P4", "P5"):
        frame = generate_uid()
        ct = _series(root / name / "CT" / "image", name, frame=frame)
        _series(root / name / "MR" / "image", name, modality="MR", frame=frame)
        rs = root / name / ("CT/mask/RS.dcm" if name == "P4" else "RS.dcm")
        write_rtstruct(rs, ct, {"GTV": [_square(ct, 2, 5, 4, 2)]}, series_uid=generate_uid())
    return root


def test_dicom_cohort(tmp_path, dicom_cohort):
    out = tmp_path / "ds"
    assert detect_layout(dicom_cohort) == "dicom-cohort"
    res = _run("data", "import", dicom_cohort, "--out", out, "--roi-pattern", "gtv.*")
    lines = res.stdout.strip().splitlines()
    assert lines[0] == f"{dicom_cohort}: DICOM cohort, 5 patient folder(s)"
    assert lines[1].startswith("P1: imported P1 (ct, 6 slices, label 36 voxels; ROI GTV_p+GTV_n of study/rs.dcm "
                               "on study/ct [series by referenced series])")
    assert lines[2].startswith("P2: imported P2_ct (ct, 6 slices, label 16 voxels; ROI GTV of rs_ct.dcm on ct "), \
        lines[2]
    assert "P2_mr (mr, 6 slices, label 9 voxels; ROI GTV of rs_mr.dcm on mr [series by referenced series])" in lines[2]
    assert lines[3].startswith("P3: skipped: no RTSTRUCT (1 image series; --include-unlabelled")
    assert lines[4].startswith("P4: imported P4_ct (ct, 6 slices, label 4 voxels; ROI GTV of CT/mask/RS.dcm on "
                               "CT/image [series by frame of reference + nearest folder: its referenced series is "
                               "not here]); mr series in MR/image has no RTSTRUCT here"), lines[4]
    assert lines[5].startswith(f"P5: failed: {dicom_cohort / 'P5' / 'RS.dcm'}: cannot tell which of 2 image series")
    assert len(lines) == 6
    _one_error_line(res, dicom_cohort, "1 of 5 patients failed (P5; each reported above); 4 case(s) imported")
    man = Manifest.load(out)  # written although P5 failed; it names only files that exist
    assert [(c.id, c.patient_id, c.modality, c.split) for c in man.cases] == [
        ("P1", "P1", "ct", "train"), ("P2_ct", "P2", "ct", "train"), ("P2_mr", "P2", "mr", "train"),
        ("P4_ct", "P4", "ct", "train")]
    assert all(man.image_path(c).exists() and man.label_path(c).exists() for c in man.cases)
    p1 = read_volume(out / "labels" / "P1.nii.gz").array
    assert p1[2:4, 4:8, 5:9].all() and p1[1, 10:12, 12:14].all() and p1.sum() == 36  # GTV_p + GTV_n, no Heart
    mr = read_volume(out / "images" / "P2_mr.nii.gz")
    assert mr.array.max() == 40 and mr.array.min() == 0  # the MR series, not the CT (HU)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["P1.nii.gz", "P2_ct.nii.gz", "P2_mr.nii.gz",
                                                                  "P4_ct.nii.gz"]

    # --modality mr, unlabelled series too, into another data set: ids do not change with the filter
    res = _run("data", "import", dicom_cohort, "--out", tmp_path / "mr", "--roi", "gtv", "--modality", "mr",
               "--include-unlabelled")
    assert res.exit_code == 1  # P5 still fails
    man = Manifest.load(tmp_path / "mr")
    assert [(c.id, c.label is not None) for c in man.cases] == [("P2_mr", True), ("P4_mr", False)]
    assert "P1: skipped: study/rs.dcm: 2 ROIs match 'gtv' (GTV_p, GTV_n); ct series in study/ct left out" \
        in res.stdout
    assert "P3: skipped: ct series in ct left out (--modality mr)" in res.stdout
    assert "P4: imported P4_mr (mr, 6 slices, no label; series in MR/image); ct series in CT/image left out" \
        in res.stdout


def test_dicom_cohort_broken_patient_and_no_rtstruct(tmp_path):
    root = tmp_path / "cohort"
    for name in ("A", "B"):
        ct = _series(root / name / "ct", name)
        write_rtstruct(root / name / "rs.dcm", ct, {"GTV": [_square(ct, 2, 5, 4, 2)]})
    (root / "B" / "ct" / "slice_0002.dcm").write_bytes(b"\0" * 200)  # unreadable middle slice
    out = tmp_path / "ds"
    res = _run("data", "import", root, "--out", out)
    assert "A: imported A (ct, 6 slices, label 4 voxels" in res.stdout
    assert f"B: failed: {root / 'B' / 'ct'}: " in res.stdout
    _one_error_line(res, root, "1 of 2 patients failed (B; each reported above); 1 case(s) imported")
    assert [c.id for c in Manifest.load(out).cases] == ["A"]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["A.nii.gz", "A.nii.gz", "manifest.json"]

    # no RTSTRUCT anywhere: one error, nothing written; --include-unlabelled imports the images
    bare = tmp_path / "bare"
    _series(bare / "X" / "s1", "X")
    _series(bare / "Y" / "s1", "Y", description="kV CBCT")
    res = _run("data", "import", bare, "--out", tmp_path / "ds2")
    _one_error_line(res, bare, "no RTSTRUCT in any of the 2 patient folders")
    assert _no_files(tmp_path / "ds2")
    res = _run("data", "import", bare, "--out", tmp_path / "ds2", "--include-unlabelled")
    assert res.exit_code == 0, res.output
    assert [(c.id, c.modality, c.label) for c in Manifest.load(tmp_path / "ds2").cases] == [
        ("X", "ct", None), ("Y", "cbct", None)]  # cone-beam told from the series description


def test_newest_rtstruct_labels_a_series(tmp_path):
    root = tmp_path / "cohort"
    ct = _series(root / "A" / "ct", "A")
    old = write_rtstruct(root / "A" / "rs_z_old.dcm", ct, {"GTV": [_square(ct, 2, 5, 4, 2)]})
    new = write_rtstruct(root / "A" / "rs_a_new.dcm", ct, {"GTV": [_square(ct, 2, 5, 4, 3)]})
    for path, date in ((old, "20200101"), (new, "20240101")):
        ds = pydicom.dcmread(path)
        ds.StructureSetDate = date
        ds.save_as(path)
    result = import_data(root, tmp_path / "ds", on_line=(lines := []).append)
    assert read_volume(tmp_path / "ds" / result.cases[0].label).array.sum() == 9  # the newer one (3 x 3)
    assert "rs_z_old.dcm not used (older than rs_a_new.dcm)" in lines[1]


def test_duplicate_case_ids_and_wrong_options(tmp_path, dicom_cohort):
    (dicom_cohort / "P5").rename(dicom_cohort / "P 1")
    ct = _series(dicom_cohort / "P_1" / "ct", "X")
    write_rtstruct(dicom_cohort / "P_1" / "rs.dcm", ct, {"GTV": [_square(ct, 2, 5, 4, 2)]})
    (dicom_cohort / "P 1" / "RS.dcm").unlink()  # "P 1" -> id P_1_ct (CT + MR), "P_1" -> P_1: distinct
    res = _run("data", "import", dicom_cohort, "--out", tmp_path / "ok", "--roi", "GTV", "--include-unlabelled")
    assert res.exit_code == 0, res.output
    patients = {c.id: c.patient_id for c in Manifest.load(tmp_path / "ok").cases}
    assert (patients["P_1_ct"], patients["P_1_mr"], patients["P_1"]) == ("P 1", "P 1", "P_1")
    write_rtstruct(dicom_cohort / "P4" / "rs2.dcm", read_dicom_series(dicom_cohort / "P4" / "MR" / "image"),
                   {"GTV": [_square(ct, 2, 5, 4, 2)]})  # P4 gets 2 cases: P4_ct, P4_mr
    (dicom_cohort / "P4_ct").mkdir()  # a patient folder named like another patient's case
    _series(dicom_cohort / "P4_ct" / "s", "Z")
    res = _run("data", "import", dicom_cohort, "--out", tmp_path / "dup", "--roi", "GTV", "--include-unlabelled")
    assert res.exit_code == 1 and "duplicate case id 'P4_ct'" in res.stderr
    assert _no_files(tmp_path / "dup")
    res = _run("data", "import", dicom_cohort, "--out", tmp_path / "x", "--id", "a", "--layout", "dicom-cohort")
    _one_error_line(res, dicom_cohort, "--id cannot be used with a dicom-cohort layout")
    res = _run("data", "import", dicom_cohort, "--out", tmp_path / "x", "--id", "a")  # --id: one series, as before
    _one_error_line(res, dicom_cohort, "no DICOM image files; it has sub-folders")
    res = _run("data", "import", dicom_cohort / "P2" / "ct", "--out", tmp_path / "x", "--id", "a",
               "--roi-pattern", "G.*")
    _one_error_line(res, dicom_cohort / "P2" / "ct", "--roi-pattern cannot be used with a dicom-series layout")
    res = _run("data", "import", dicom_cohort, "--out", tmp_path / "x", "--layout", "nnunett")
    assert res.exit_code == 1 and "unknown layout 'nnunett'; did you mean 'nnunet'?" in res.stderr
    res = _run("data", "import", dicom_cohort, "--out", dicom_cohort)
    assert res.exit_code == 1 and "is an input of this command" in res.stderr
    assert not (tmp_path / "x").exists()


def test_roi_matching_rules():
    rois = [RoiInfo(1, "GTV_Mass_CT", 3, ""), RoiInfo(2, "gtv_node", 2, ""), RoiInfo(3, "GTV_empty", 0, ""),
            RoiInfo(4, "Heart", 5, "")]
    import re

    assert match_rois(rois, None, re.compile("gtv.*", re.I))[0] == ["GTV_Mass_CT", "gtv_node"]  # empty one left out
    assert match_rois(rois, "GTV_Mass", None)[0] == ["GTV_Mass_CT"]  # name + separator suffix
    assert match_rois(rois, "heart", None)[0] == ["Heart"]
    names, why = match_rois(rois, None, None)
    assert names == [] and "has 4 ROIs" in why
    names, why = match_rois(rois, "Lung", None)
    assert names == [] and why.startswith("no ROI 'Lung' (ROIs: GTV_Mass_CT, gtv_node")


def test_cbct_detection_from_headers():
    from pydicom.dataset import Dataset

    def header(**kw):
        ds = Dataset()
        for k, v in kw.items():
            setattr(ds, k, v)
        return ds

    assert series_modality(header(Modality="CT", SeriesDescription="CBCT Thorax")) == "cbct"
    assert series_modality(header(Modality="CT", ManufacturerModelName="XVI")) == "cbct"
    assert series_modality(header(Modality="CT", SeriesDescription="Thorax 3mm")) == "ct"
    assert series_modality(header(Modality="MR")) == "mr"
    assert series_modality(header(Modality="PT")) is None


def test_layout_detection_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot tell the layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(InputError, match="no such folder"):
        detect_layout(tmp_path / "missing")


# ------------------------------------------------------------------------------- real data
def _check_sarcoma(result, nifti: Path, out: Path) -> None:
    """Every imported label equals MIRP's NIfTI mask voxel for voxel, on MIRP's image grid."""
    for case in result.cases:
        folder = nifti / case.patient_id / ("CT" if case.modality == "ct" else "MR_T1")
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.nii.gz")))
        got = read_volume(out / case.label)
        np.testing.assert_array_equal(got.array, ref)
        assert got.geometry_difference(read_volume(folder / "image.nii.gz"), atol=1e-3) is None


@pytest.mark.shared_data
def test_real_sarcoma_cohort_mr(tmp_path):
    """3 STS patients, each with a CT and an MR series and their own RTSTRUCTs whose referenced series
    UIDs are not there (re-exported): the MR series found by frame of reference + nearest folder,
    ids suffixed _mr because the patients also have CT, labels equal to MIRP's masks."""
    src, nifti = require_shared("sts_dicom"), require_shared("sts_nifti")
    result = import_data(src, tmp_path / "ds", modality="mr", roi="GTV_Mass")
    assert [c.id for c in result.cases] == ["STS_001_mr", "STS_002_mr", "STS_003_mr"]
    _check_sarcoma(result, nifti, tmp_path / "ds")


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_sarcoma_cohort_both_modalities(tmp_path):
    src, nifti = require_shared("sts_dicom"), require_shared("sts_nifti")
    result = import_data(src, tmp_path / "ds")
    assert [c.id for c in result.cases] == [f"STS_00{i}_{m}" for i in (1, 2, 3) for m in ("ct", "mr")]
    assert {c.patient_id for c in result.cases} == {"STS_001", "STS_002", "STS_003"}
    _check_sarcoma(result, nifti, tmp_path / "ds")
