"""`cmedl evaluate` / `cmedl compare` in-process, plus evaluate_folders / compare_results."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.evaluation import compare_results, evaluate_folders, read_results_csv
from cmedl.evaluation.evaluate import CSV_COLUMNS
from cmedl.io import Volume, write_volume

runner = CliRunner()
SPACING_XYZ = (0.8, 0.9, 2.5)


def mask(shift: int = 0, size: int = 6, shape=(10, 24, 24), dtype=np.uint8) -> np.ndarray:
    m = np.zeros(shape, dtype)
    m[2:2 + size // 2, 6 + shift:6 + shift + size, 6:6 + size] = 1
    return m


def write(path: Path, arr: np.ndarray, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> Path:
    return write_volume(Volume(arr, spacing=spacing, origin=origin), path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    ref, a, b = tmp_path / "ref", tmp_path / "pred_a", tmp_path / "pred_b"
    for i, shift in enumerate([0, 1, 2, 3]):
        write(ref / f"case_{i}.nii.gz", mask())
        write(a / f"case_{i}.nii.gz", mask(shift))  # method A: shifted by 0..3 voxels
        write(b / f"case_{i}.nii.gz", mask(shift + 2))  # method B: worse on every case
    return ref, a, b


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_evaluate_writes_per_case_csv_and_summary(folders, tmp_path: Path) -> None:
    ref, a, _ = folders
    out = tmp_path / "a.csv"
    res = run("evaluate", "--pred", a, "--ref", ref, "--out", out)
    assert res.exit_code == 0, res.output
    assert "DSC" in res.output and "HD95" in res.output and "±" in res.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["case_0", "case_1", "case_2", "case_3"]
    assert list(rows[0]) == list(CSV_COLUMNS)
    dsc = [float(r["dsc"]) for r in rows]
    np.testing.assert_allclose(dsc, [1.0, 5 / 6, 4 / 6, 3 / 6])
    assert float(rows[2]["hd"]) == pytest.approx(2 * 0.9)  # 2 voxels along y at 0.9 mm
    assert (float(rows[0]["spacing_z_mm"]), float(rows[0]["spacing_x_mm"])) == pytest.approx((2.5, 0.8))
    assert float(rows[0]["tolerance_mm"]) == 2.0 and rows[0]["n_voxels_ref"] == "108"


def test_modality_sets_default_tolerance_and_explicit_overrides(folders, tmp_path: Path) -> None:
    ref, a, _ = folders
    rows = evaluate_folders(a, ref, modality="cbct")
    assert {r["tolerance_mm"] for r in rows} == {4.38}
    rows = evaluate_folders(a, ref, modality="cbct", tolerance_mm=1.0)
    assert {r["tolerance_mm"] for r in rows} == {1.0}


def test_compare_two_methods(folders, tmp_path: Path) -> None:
    ref, a, b = folders
    ca, cb = tmp_path / "A.csv", tmp_path / "B.csv"
    evaluate_folders(a, ref, ca)
    evaluate_folders(b, ref, cb)
    comp = compare_results([ca, cb])
    assert comp.methods == ["A", "B"] and len(comp.cases) == 4
    assert comp.tests[1] is not None and comp.tests[1].median_difference < 0  # B worse than A
    assert comp.p_holm[1] == pytest.approx(comp.p_raw[1])  # family of one comparison
    assert "B" in comp.p_values
    text = comp.to_text()
    assert "HD95" in text and "Holm" in text
    out = tmp_path / "table.csv"
    res = run("compare", ca, cb, "--metric", "sdsc", "--out", out)
    assert res.exit_code == 0, res.output
    assert out.exists() and "sDSC" in res.output
    res = run("compare", ca, cb, "--metric", "dcs")
    assert res.exit_code == 1 and "did you mean 'dsc'" in res.output


def test_manifest_as_reference_and_split(folders, tmp_path: Path) -> None:
    _, a, _ = folders
    cases = [
        {"id": f"case_{i}", "patient_id": f"P{i}", "modality": "cbct", "image": f"ref/case_{i}.nii.gz",
         "label": f"ref/case_{i}.nii.gz", "split": "test" if i < 2 else "train"}
        for i in range(4)
    ]
    man = tmp_path / "manifest.json"
    man.write_text(json.dumps({"name": "t", "cases": cases}))
    res = run("evaluate", "--pred", a, "--ref", man, "--out", tmp_path / "m.csv")
    assert res.exit_code == 0, res.output
    rows = read_results_csv(tmp_path / "m.csv")
    assert {r["tolerance_mm"] for r in rows} == {4.38} and rows[0]["modality"] == "cbct"
    # a prediction folder with only the test cases: the manifest's train cases need --split
    only_test = tmp_path / "pred_test"
    for i in range(2):
        write(only_test / f"case_{i}.nii.gz", mask(i))
    res = run("evaluate", "--pred", only_test, "--ref", man, "--out", tmp_path / "t.csv")
    assert res.exit_code == 1 and "without a prediction" in res.output and "--split" in res.output
    assert not (tmp_path / "t.csv").exists()
    res = run("evaluate", "--pred", only_test, "--ref", man, "--split", "test", "--out", tmp_path / "t.csv")
    assert res.exit_code == 0, res.output


def test_parallel_workers_give_the_same_rows(folders, tmp_path: Path) -> None:
    ref, a, _ = folders
    serial = evaluate_folders(a, ref)
    res = run("evaluate", "--pred", a, "--ref", ref, "--workers", "2", "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    parallel = read_results_csv(tmp_path / "p.csv")
    for s, p in zip(serial, parallel):
        for k in ("dsc", "sdsc", "hd95", "assd", "f1"):
            assert float(s[k]) == pytest.approx(float(p[k]), rel=1e-9)


def test_missed_tumour_is_inf_and_counted(tmp_path: Path) -> None:
    write(tmp_path / "ref" / "c1.nii.gz", mask())
    write(tmp_path / "ref" / "c2.nii.gz", mask())
    write(tmp_path / "pred" / "c1.nii.gz", mask(1))
    write(tmp_path / "pred" / "c2.nii.gz", np.zeros((10, 24, 24), np.uint8))
    res = run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "r.csv")
    assert res.exit_code == 0, res.output
    assert "1 inf" in res.output
    rows = read_results_csv(tmp_path / "r.csv")
    assert math.isinf(rows[1]["hd95"]) and rows[1]["dsc"] == 0.0  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- bad input
def test_prediction_without_reference(folders, tmp_path: Path) -> None:
    ref, a, _ = folders
    write(a / "extra.nii.gz", mask())
    res = run("evaluate", "--pred", a, "--ref", ref, "--out", tmp_path / "x.csv")
    assert res.exit_code == 1
    assert "predictions without a reference" in res.output and "extra" in res.output
    assert not (tmp_path / "x.csv").exists()


def test_geometry_mismatch_and_resample(tmp_path: Path) -> None:
    write(tmp_path / "ref" / "c.nii.gz", mask())
    write(tmp_path / "pred" / "c.nii.gz", mask(), origin=(0.0, 0.0, 2.5))  # one slice off
    out = tmp_path / "g.csv"
    res = run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", out)
    assert res.exit_code == 1
    assert "different voxel grids" in res.output and "--resample-pred" in res.output
    assert "pred/c.nii.gz" in res.output and "ref/c.nii.gz" in res.output
    assert not out.exists()
    res = run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--resample-pred", "--out", out)
    assert res.exit_code == 0, res.output
    row = read_results_csv(out)[0]
    assert row["resampled"] == 1.0
    assert row["hd"] == pytest.approx(2.5)  # the resampled prediction sits one slice higher


def test_non_binary_needs_label(tmp_path: Path) -> None:
    labels = mask() * 2
    labels[0, 0, 0] = 1
    write(tmp_path / "ref" / "c.nii.gz", labels)
    write(tmp_path / "pred" / "c.nii.gz", labels)
    res = run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "l.csv")
    assert res.exit_code == 1 and "not binary" in res.output and "--label" in res.output
    res = run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--label", "2",
              "--out", tmp_path / "l.csv")
    assert res.exit_code == 0, res.output
    row = read_results_csv(tmp_path / "l.csv")[0]
    assert row["n_voxels_ref"] == 108 and row["dsc"] == 1.0


def test_nan_voxels_and_unreadable_file(tmp_path: Path) -> None:
    bad = mask().astype(np.float32)
    bad[1, 1, 1] = np.nan
    # (ITK's NIfTI reader turns NaN into 0, so the NaN case uses MetaImage)
    write(tmp_path / "ref" / "c.mha", mask())
    write(tmp_path / "pred" / "c.mha", bad)
    res = run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "n.csv")
    assert res.exit_code == 1 and "NaN" in res.output and "pred/c.mha" in res.output
    (tmp_path / "pred" / "c.mha").write_bytes(b"not an image")
    res = run("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "n.csv")
    assert res.exit_code == 1 and "cannot read" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_compare_errors(tmp_path: Path) -> None:
    one = tmp_path / "one.csv"
    one.write_text("case_id,dsc\nc1,0.5\n")
    other = tmp_path / "other.csv"
    other.write_text("case_id,dsc\nc2,0.7\n")
    res = run("compare", one, other, "--metric", "dsc")
    assert res.exit_code == 1 and "share no case ids" in res.output
    res = run("compare", one)
    assert res.exit_code == 1 and "at least two" in res.output
