"""Issue 13, data side: never lose or silently corrupt a user's data.

Phantom overwrite (D2), import over an existing case (D4), RTSTRUCT contours outside the image or
malformed (W7), non-binary training labels (W8), manifest field types and the manifest's real file
name, config files and overrides, phantom sizes, and actionable hints (frame of reference,
``data info --series-uid``). Every user error is one line starting with the offending path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.config import apply_overrides, read_yaml
from cmedl.data.datasets import VolumeCache, load_case
from cmedl.data.manifest import Case, Manifest
from cmedl.data.phantom import cohort, generate_case, generate_cohort, staging
from cmedl.data.preprocess import PreprocessConfig
from cmedl.errors import ConfigError, InputError
from cmedl.io import Volume, read_volume, write_volume
from cmedl.io.dicom import read_dicom_series, write_dicom_series
from cmedl.io.rtstruct import rasterize_roi, write_rtstruct
from cmedl.methods import load_config

runner = CliRunner()
TINY = (16, 48, 48)  # z, y, x


def _run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, starts: object) -> str:
    """The CLI failed with exactly one ``error: <starts>...`` line; returns it."""
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {starts}"), res.stderr
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ D2: phantom overwrite
PHANTOM_ARGS = ("--ct", "2", "--cbct", "0", "--mr", "1", "--size", "48x48x16", "--workers", "1")


@pytest.fixture
def old_cohort(tmp_path) -> Path:
    out = tmp_path / "cohort"
    res = _run("data", "phantom", "--out", out, *PHANTOM_ARGS)
    assert res.exit_code == 0, res.output
    return out


def test_phantom_overwrite_with_a_folder_in_the_way_keeps_the_old_cohort(old_cohort):
    victim = old_cohort / "images" / "ct_P001.nii.gz"
    victim.unlink()
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    before = _snapshot(old_cohort)
    res = _run("data", "phantom", "--out", old_cohort, *PHANTOM_ARGS, "--overwrite", "--seed", "1")
    assert "is a folder where the cohort writes a file" in _one_line_error(res, victim)
    assert _snapshot(old_cohort) == before  # the other images, labels and the manifest are untouched
    assert sorted(p.name for p in old_cohort.parent.iterdir()) == ["cohort"]  # no staging folder left


def test_phantom_overwrite_failing_midway_keeps_the_old_cohort(old_cohort, monkeypatch):
    before = _snapshot(old_cohort)
    real = cohort.generate_case

    def flaky(modality, index, *a, **k):
        if modality == "mr":
            raise RuntimeError("boom")
        return real(modality, index, *a, **k)

    monkeypatch.setattr(cohort, "generate_case", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate_cohort(old_cohort, 2, 0, 1, seed=1, shape=TINY, workers=1, overwrite=True)
    assert _snapshot(old_cohort) == before
    assert sorted(p.name for p in old_cohort.parent.iterdir()) == ["cohort"]


def test_phantom_overwrite_failing_while_moving_in_puts_the_old_files_back(old_cohort, monkeypatch):
    before = _snapshot(old_cohort)
    real_replace = staging.os.replace
    calls = []

    def failing_replace(src, dst):
        if Path(dst).is_relative_to(old_cohort):  # a move into the cohort (not a write in staging)
            calls.append(dst)
            if len(calls) == 3:  # after two images were swapped in
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(staging.os, "replace", failing_replace)
    with pytest.raises(InputError, match="old files were kept") as exc:
        generate_cohort(old_cohort, 2, 0, 1, seed=1, shape=TINY, workers=1, overwrite=True)
    assert str(exc.value).startswith(str(old_cohort)) and len(calls) > 3  # 3 moves, then the undo
    assert _snapshot(old_cohort) == before
    assert sorted(p.name for p in old_cohort.parent.iterdir()) == ["cohort"]


def test_phantom_overwrite_replaces_the_cohort_and_keeps_other_files(old_cohort):
    (old_cohort / "notes.txt").write_text("my notes")
    before = _snapshot(old_cohort)
    res = _run("data", "phantom", "--out", old_cohort, *PHANTOM_ARGS, "--overwrite", "--seed", "1")
    assert res.exit_code == 0, res.output
    after = _snapshot(old_cohort)
    assert after["notes.txt"] == b"my notes" and set(after) == set(before)
    assert after["images/ct_P000.nii.gz"] != before["images/ct_P000.nii.gz"]  # seed 1, new images
    m = Manifest.load(old_cohort)
    assert m.seed == 1 and all(m.image_path(c).is_file() for c in m.cases)
    assert sorted(p.name for p in old_cohort.parent.iterdir()) == ["cohort"]


def test_phantom_refuses_existing_cohort_files_without_overwrite(tmp_path):
    out = tmp_path / "c"
    (out / "images").mkdir(parents=True)
    (out / "images" / "ct_P000.nii.gz").write_bytes(b"someone else's image")
    with pytest.raises(InputError, match="already exists; choose another folder or pass overwrite"):
        generate_cohort(out, 1, 0, 0, shape=TINY, workers=1)
    assert (out / "images" / "ct_P000.nii.gz").read_bytes() == b"someone else's image"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file: is not a folder, so the cohort folder"):
        generate_cohort(tmp_path / "file" / "sub", 1, 0, 0, shape=TINY, workers=1)
    (out / "labels").write_text("not a folder")
    with pytest.raises(InputError, match="labels: is not a folder but the cohort writes files into it"):
        generate_cohort(out, 1, 0, 0, shape=TINY, workers=1, overwrite=True)


def test_phantom_size_and_spacing_limits(tmp_path):
    res = _run("data", "phantom", "--out", tmp_path / "big", "--size", "100000x100000x100000")
    assert "at most 2147483648" in _one_line_error(res, "--size 100000x100000x100000")
    res = _run("data", "phantom", "--out", tmp_path / "nan", "--spacing", "nanx1x1")
    assert "finite positive" in _one_line_error(res, "--spacing")
    res = _run("data", "phantom", "--out", tmp_path / "inf", "--mr-spacing", "1x1xinf")
    _one_line_error(res, "--mr-spacing")
    assert not any(tmp_path.iterdir())
    with pytest.raises(InputError, match=r"CT grid: spacing must be 3 finite positive"):
        generate_case("ct", 0, 0, TINY, spacing=(float("nan"), 1.0, 1.0))
    with pytest.raises(InputError, match=r"voxels per image; at most"):
        generate_cohort(tmp_path / "x", 1, 0, 0, shape=(4096, 1024, 1024))
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ DICOM fixtures
@pytest.fixture
def dicom_case(tmp_path) -> tuple[Path, Path]:
    """A CT series (6 x 16 x 18) of patient PAT-1 and an RTSTRUCT with ROI 'GTV' (2 slices)."""
    arr = np.full((6, 16, 18), -1000, np.int16)
    arr[2:4, 4:8, 5:9] = 40
    ct_dir = tmp_path / "dicom" / "ct"
    write_dicom_series(Volume(arr, (0.8, 0.7, 2.5), (-30.0, 12.0, -200.0)), ct_dir, patient_id="PAT-1")
    ct = read_dicom_series(ct_dir)
    rs = write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"GTV": [_square(ct, 2.0), _square(ct, 3.0)]})
    return ct_dir, rs


def _square(vol: Volume, z: float, x0: float = 4.5, y0: float = 3.5) -> np.ndarray:
    idx = np.array([[x0, y0, z], [x0 + 4, y0, z], [x0 + 4, y0 + 4, z], [x0, y0 + 4, z]])
    return vol.index_to_physical(idx)


# ------------------------------------------------------------------------------ D4: import over a case
def test_import_refuses_an_existing_case_id_unless_replace(tmp_path, dicom_case):
    ct_dir, rs = dicom_case
    out = tmp_path / "ds"
    assert _run("data", "import", ct_dir, "--out", out, "--id", "c1", "--rtstruct", rs).exit_code == 0
    before = _snapshot(out)
    res = _run("data", "import", ct_dir, "--out", out, "--id", "c1", "--patient-id", "OTHER")
    line = _one_line_error(res, out / "manifest.json")
    assert "case id 'c1' is already in the manifest (patient PAT-1" in line and "--replace" in line
    assert _snapshot(out) == before
    # an image file of that name that the manifest does not know is not overwritten either
    res = _run("data", "import", ct_dir, "--out", out, "--id", "c2", "--manifest", tmp_path / "other.json")
    assert res.exit_code == 0, res.output
    res = _run("data", "import", ct_dir, "--out", out, "--id", "c2")
    assert "is not in" in _one_line_error(res, out / "images" / "c2.nii.gz")
    # --replace without a label: the entry loses its label and the old label file goes
    res = _run("data", "import", ct_dir, "--out", out, "--id", "c1", "--patient-id", "OTHER", "--replace")
    assert res.exit_code == 0, res.output
    case = Manifest.load(out).get("c1")
    assert (case.patient_id, case.label) == ("OTHER", None)
    assert not (out / "labels" / "c1.nii.gz").exists()
    # --replace with a label writes it again
    res = _run("data", "import", ct_dir, "--out", out, "--id", "c1", "--rtstruct", rs, "--replace")
    assert res.exit_code == 0 and read_volume(out / "labels" / "c1.nii.gz").array.sum() == 32


def test_frame_of_reference_error_names_a_cli_option(tmp_path, dicom_case):
    ct_dir, _ = dicom_case
    ct = read_dicom_series(ct_dir)
    other = write_rtstruct(tmp_path / "other.dcm", ct, {"GTV": [_square(ct, 2.0)]},
                           frame_of_reference_uid="1.2.3.999")
    out = tmp_path / "ds"
    res = _run("data", "import", ct_dir, "--out", out, "--id", "c1", "--rtstruct", other)
    assert "--no-reference-check" in _one_line_error(res, other)
    res = _run("data", "import", ct_dir, "--out", out, "--id", "c1", "--rtstruct", other, "--no-reference-check")
    assert res.exit_code == 0, res.output
    assert read_volume(out / "labels" / "c1.nii.gz").array.sum() == 16


# ------------------------------------------------------------------------------ W7: RTSTRUCT contours
def test_contours_beyond_the_image_slices_are_refused(tmp_path, dicom_case):
    ct_dir, _ = dicom_case
    ct = read_dicom_series(ct_dir)  # 6 slices: indices 0..5, accepted up to half a slice beyond
    rs = write_rtstruct(tmp_path / "rs.dcm", ct, {
        "inside": [_square(ct, -0.45), _square(ct, 5.45)],
        "partly_outside": [_square(ct, z) for z in (3.0, 4.0, 5.0, 6.0, 7.0)],
    })
    assert rasterize_roi(rs, "inside", ct).sum() == 32
    with pytest.raises(InputError, match=r"ROI 'partly_outside': a contour lies at slice position 6\.00, "
                                         r"outside the image's slices 0-5") as exc:
        rasterize_roi(rs, "partly_outside", ct)
    assert str(exc.value).startswith(str(rs)) and "\n" not in str(exc.value)
    res = _run("data", "import", ct_dir, "--out", tmp_path / "ds", "--id", "c", "--rtstruct", rs,
               "--roi", "partly_outside")
    _one_line_error(res, rs)
    assert not (tmp_path / "ds").exists() or not any(p.is_file() for p in (tmp_path / "ds").rglob("*"))


def _corrupt_contour(rs: Path, values: list[str]) -> Path:
    ds = pydicom.dcmread(rs)
    ds.ROIContourSequence[0].ContourSequence[1].ContourData = values
    ds.save_as(rs)
    return rs


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["1.0"] * 10, "contour 2 has 10 coordinates, not x, y, z triples"),
        (["1.0", "2.0", "NaN"] * 4, "contour 2 has a NaN or infinite coordinate"),
        (["1.0", "2.0", "inf"] * 4, "contour 2 has a NaN or infinite coordinate"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_malformed_contours_are_refused(dicom_case, values, message):
    ct_dir, rs = dicom_case
    rs = _corrupt_contour(rs, values)
    with pytest.raises(InputError, match=f"ROI 'GTV': {message}") as exc:
        rasterize_roi(rs, "GTV", read_dicom_series(ct_dir))
    assert str(exc.value).startswith(str(rs))
    res = _run("data", "info", rs)  # inspecting still works: counts the well-formed contours
    assert res.exit_code == 0 and "GTV (1 contours)" in res.output


# ------------------------------------------------------------------------------ W8: training labels
def _labelled_manifest(root: Path, label: np.ndarray, name: str = "manifest.json") -> Manifest:
    img = np.full((6, 32, 32), -1000.0, np.float32)
    img[:, 6:26, 6:26] = 40.0
    geo = {"spacing": (2.0, 2.0, 3.0)}
    write_volume(Volume(img, **geo), root / "images" / "a.nii.gz")
    write_volume(Volume(label, **geo), root / "labels" / "a.nii.gz")
    m = Manifest([Case("a", "P0", "ct", "images/a.nii.gz", "labels/a.nii.gz")])
    m.save(root / name)
    return Manifest.load(root / name)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (np.full((6, 32, 32), -1000.0, np.float32), r"label is not binary \(values -1000 besides 0 and 1\)"),
        (np.where(np.arange(6 * 32 * 32).reshape(6, 32, 32) % 7 == 0, 255, 0).astype(np.uint8),
         r"label is not binary \(values 255"),
        (np.where(np.arange(6 * 32 * 32).reshape(6, 32, 32) % 7 == 0, np.nan, 1.0).astype(np.float32),
         "label contains NaN or infinite voxels"),
    ],
    ids=["ct-as-label", "0-255", "nan"],
)
def test_training_cache_refuses_non_binary_labels(tmp_path, label, message):
    m = _labelled_manifest(tmp_path, label)
    with pytest.raises(InputError, match=message) as exc:
        load_case(m, m.cases[0], PreprocessConfig("ct", body_margin=2))
    assert str(exc.value).startswith(str(tmp_path / "labels" / "a.nii.gz")) and "\n" not in str(exc.value)


def test_training_cache_accepts_binary_labels(tmp_path):
    label = np.zeros((6, 32, 32), np.float32)
    label[2:4, 10:14, 10:14] = 1.0
    m = _labelled_manifest(tmp_path, label)
    cache = VolumeCache.load(m, m.cases, PreprocessConfig("ct", body_margin=2))
    assert cache[0].label.sum() == 32


# ------------------------------------------------------------------------------ manifests
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image", 42, "image: expected a file path (a non-empty string), got 42"),
        ("label", ["a"], "label: expected a file path (a non-empty string), got ['a']"),
        ("patient_id", None, "patient_id: expected a non-empty string, got None"),
        ("modality", None, "modality: expected a string, got None"),
        ("split", 3, "split: expected a string, got 3"),
        ("image", "", "image: expected a file path"),
        ("imgae", "x", "unknown key 'imgae'; did you mean 'image'?"),
    ],
)
def test_bad_manifest_fields_name_the_file_and_the_case(tmp_path, field, value, message):
    path = tmp_path / "test_ct.json"
    good = {"id": "ok", "patient_id": "P0", "modality": "ct", "image": "a.nii.gz"}
    bad = {"id": "ct_7", "patient_id": "P1", "modality": "ct", "image": "b.nii.gz", field: value}
    path.write_text(json.dumps({"cases": [good, bad]}))
    with pytest.raises(InputError) as exc:
        Manifest.load(path)
    assert str(exc.value) == f"{path}: case 1 ('ct_7'): {message}" or (
        str(exc.value).startswith(f"{path}: case 1 ('ct_7'): {message}")
    )
    assert "\n" not in str(exc.value)


def test_manifest_other_shapes_and_integer_ids(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"cases": [5]}))
    with pytest.raises(InputError, match=r"m\.json: case 0: expected a JSON object, got 5"):
        Manifest.load(path)
    path.write_text(json.dumps({"cases": [{"id": "a", "modality": "ct", "image": "x"}]}))
    with pytest.raises(InputError, match=r"case 0 \('a'\): missing patient_id"):
        Manifest.load(path)
    path.write_text(json.dumps({"seed": "zero", "cases": []}))
    with pytest.raises(InputError, match="'seed' must be an integer or null"):
        Manifest.load(path)
    path.write_text(json.dumps({"cases": [{"id": 7, "patient_id": 12, "modality": "ct", "image": "x"}]}))
    assert (Manifest.load(path).cases[0].id, Manifest.load(path).cases[0].patient_id) == ("7", "12")


def test_manifest_messages_name_the_real_file(tmp_path):
    m = Manifest([Case("a", "P0", "ct", "a.nii.gz")])
    m.save(tmp_path / "test_ct.json")
    loaded = Manifest.load(tmp_path / "test_ct.json")
    assert loaded.path == m.path == tmp_path / "test_ct.json"
    with pytest.raises(InputError) as exc:
        VolumeCache.load(loaded, [], PreprocessConfig("ct"))
    assert str(exc.value) == f"{tmp_path / 'test_ct.json'}: no cases selected"
    with pytest.raises(InputError, match=r"test_ct\.json: unknown case id 'b'"):
        loaded.get("b")
    with pytest.raises(InputError, match=r"test_ct\.json: case id 'a' is already in the manifest"):
        loaded.add(Case("a", "P0", "ct", "b.nii.gz"))


# ------------------------------------------------------------------------------ configs
def test_binary_config_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: not a text file (not UTF-8); a config must be a YAML file"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr_segmentation=.nan", "optim.lr_segmentation: must be a finite number"),
        ("optim.betas_segmentation=[0.5, .inf]", r"optim.betas_segmentation\[1\]: must be a finite number"),
        ("evaluation.surface_tolerance_mm=-.inf", "evaluation.surface_tolerance_mm: must be a finite number"),
        ("cyclegan.lr=.nan", "cyclegan.lr: must be a finite number"),
        ("training.seed=-1", r"training.seed: must be >= 0"),
        ("training.method=cmdl", "training.method: unknown method 'cmdl'; did you mean 'cmedl'"),
        ("training.batch_size=100000", r"data.samples_per_epoch \(400\) must be >= training.batch_size"),
    ],
)
def test_override_errors_name_the_override_not_the_preset(override, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_config("cpu-demo", ["training.max_epochs=2", override])
    assert str(exc.value).startswith(f"override '{override}': ") and "cpu-demo.yaml" not in str(exc.value)


def test_non_finite_values_set_in_code_are_refused_on_validation():
    cfg = load_config("cpu-demo")
    cfg.optim.lr_segmentation = float("nan")
    with pytest.raises(ConfigError, match=r"optim.lr_segmentation: must be a finite number, got nan"):
        cfg.validate()
    cfg.optim.lr_segmentation = 1e-3
    cfg.optim.betas_segmentation = [0.5, float("inf")]
    with pytest.raises(ConfigError, match=r"optim.betas_segmentation\[1\]: must be a finite number"):
        cfg.validate()


def test_errors_in_the_file_still_name_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: cpu-demo\ntraining:\n  seed: -3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, ["training.max_epochs=2"])
    assert str(exc.value).startswith(f"{path}: training.seed: must be >= 0")
    raw = read_yaml(path)
    apply_overrides(raw, ["training.seed=4"])
    assert raw["training"]["seed"] == -3  # overrides never change what was read


# ------------------------------------------------------------------------------ data info --series-uid
def test_info_takes_the_series_uid_it_suggests(tmp_path):
    folder = tmp_path / "two"
    for k, uid in enumerate(("1.2.3.1", "1.2.3.2")):
        vol = Volume(np.full((3 + k, 8, 8), 10 * k, np.int16))
        write_dicom_series(vol, tmp_path / uid, series_uid=uid)
        for f in (tmp_path / uid).iterdir():
            folder.mkdir(exist_ok=True)
            shutil.copy(f, folder / f"{uid}_{f.name}")
    res = _run("data", "info", folder)
    assert res.exit_code == 0 and "pass --series-uid to choose one" in res.output
    res = _run("data", "info", folder, "--series-uid", "1.2.3.2")
    assert res.exit_code == 0, res.output
    assert "shape (z, y, x): (4, 8, 8)" in res.output
    res = _run("data", "info", folder / "1.2.3.1_slice_0000.dcm", "--series-uid", "1.2.3.1")
    _one_line_error(res, folder / "1.2.3.1_slice_0000.dcm")
