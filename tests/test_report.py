"""cmedl report on tiny synthetic folders (no training): sources, tables, curves, raters, missing inputs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.manifest import Case, Manifest
from cmedl.data.phantom.raters import rater_mask, write_rater_masks
from cmedl.errors import InputError
from cmedl.evaluation.metrics import dice
from cmedl.io import Volume, write_volume
from cmedl.report import build_report
from cmedl.report.raters import consensus
from cmedl.report.sources import find_inputs

SHAPE = (12, 32, 32)
SPACING = (1.5, 1.5, 3.0)  # x, y, z mm


def _ball(centre: tuple[int, int, int], r: float) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    return (((z - centre[0]) * 2) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r).astype(np.uint8)


def _vol(arr: np.ndarray) -> Volume:
    return Volume(arr, spacing=SPACING)


def make_cohort(root: Path, n: int = 4) -> Path:
    """A manifest with ``n`` labelled CT test cases (two tumour kinds) and two training cases."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n + 2):
        cid = f"ct_{i}"
        label = _ball((6, 14 + i % 3, 15), 5 + i % 2)
        ct = (rng.normal(0, 20, SHAPE) + 40 + 40 * label).astype(np.int16)
        write_volume(_vol(ct), root / "images" / f"{cid}.nii.gz")
        write_volume(_vol(label), root / "labels" / f"{cid}.nii.gz")
        cases.append(Case(cid, f"P{i}", "ct", f"images/{cid}.nii.gz", f"labels/{cid}.nii.gz",
                          "test" if i < n else "train", tumour_kind="lung" if i % 2 else "mediastinal"))
    return Manifest(cases, name="tiny").save(root / "manifest.json")


def write_preds(folder: Path, manifest: Path, shift: int = 0, skip: tuple[str, ...] = ()) -> Path:
    m = Manifest.load(manifest)
    for c in m.select(split="test"):
        if c.id in skip:
            continue
        from cmedl.io import read_volume

        lab = read_volume(m.label_path(c)).array
        write_volume(_vol(np.roll(lab, shift, axis=2)), folder / f"{c.id}.nii.gz")
    return folder


def write_log(run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.csv").write_text("epoch,step,train_seg_ct,train_loss_s,val_loss,val_dice,best,time_s\n"
                                 "1,10,0.9,0.9,0.8,0.2,1,1.0\n2,20,0.7,0.7,0.6,0.4,1,1.0\n")
    (run / "config.yaml").write_text("training:\n  method: ct-only\n")


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return make_cohort(tmp_path / "data")


def test_simulated_raters_perturb_the_boundary_only_and_are_seeded():
    mask = np.zeros((16, 48, 48), np.uint8)
    mask[4:12, 12:36, 12:36] = 1
    sp = (3.0, 1.0, 1.0)
    a = rater_mask(mask, sp, rater=0, case_seed=7)
    assert np.array_equal(a, rater_mask(mask, sp, rater=0, case_seed=7))  # seeded
    b = rater_mask(mask, sp, rater=1, case_seed=7)
    assert not np.array_equal(a, b)
    for m in (a, b):
        assert 0.75 < dice(m, mask) < 0.99  # close to the expert, not equal
        core = np.zeros_like(mask)
        core[6:10, 18:30, 18:30] = 1
        assert m[core > 0].all()  # the tumour's core is kept
        assert not m[:, :4, :].any()  # nothing far from the tumour
    assert not rater_mask(np.zeros_like(mask), sp, 0, 0).any()
    votes = consensus([mask, a, b])
    assert dice(votes, mask) > max(dice(a, mask), dice(b, mask)) - 0.02


def test_report_of_prediction_folders_run_logs_and_raters(tmp_path, cohort):
    perfect = write_preds(tmp_path / "perfect", cohort)
    shifted = write_preds(tmp_path / "shifted", cohort, shift=2)
    run = tmp_path / "runs" / "a"
    write_log(run)
    m = Manifest.load(cohort)
    labels = {c.id: m.label_path(c) for c in m.select(split="test")}
    raters = write_rater_masks(labels, tmp_path / "raters", n_raters=2, seed=1)
    (raters["rater2"] / "ct_3.nii.gz").unlink()  # a rater without one case
    res = build_report([f"perfect={perfect}", f"shifted={shifted}", f"perfect={run}"], tmp_path / "rep",
                       data=cohort, refs=[f"{k}={v}" for k, v in raters.items()], log=lambda _m: None)
    out = tmp_path / "rep"
    page = (out / "index.html").read_text()
    assert res.sections["results"] == "content" and res.sections["training"] == "content"
    assert res.sections["raters"] == "content" and res.sections["examples"] == "content"
    rows = list(csv.DictReader((out / "tables" / "cases_perfect.csv").open()))
    assert len(rows) == 4 and all(float(r["dsc"]) == 1.0 for r in rows)
    shifted_rows = list(csv.DictReader((out / "tables" / "cases_shifted.csv").open()))
    assert all(0.4 < float(r["dsc"]) < 0.95 for r in shifted_rows)
    comp = list(csv.DictReader((out / "tables" / "comparison_runs.csv").open()))
    assert [r["method"] for r in comp] == ["perfect", "shifted"] and float(comp[0]["dsc_mean"]) == 1.0
    assert (out / "tables" / "comparison_runs.lung.csv").exists()
    # networks are missing: said, not failed
    assert res.sections["tsne"] == "missing-only" and "no trained network" in page
    assert "1 case(s) not drawn by every rater" in page
    cv = list(csv.DictReader((out / "tables" / "raters_cv.csv").open()))
    assert {r["method"] for r in cv} == {"perfect", "shifted"}
    # every figure is embedded and also a PNG beside the page
    embedded = re.findall(r'src="data:image/png;base64,', page)
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(embedded) == len(pngs) >= 4
    assert "http://" not in page and "https://" not in page  # nothing from the network


def test_report_names_what_is_missing_and_fails_only_when_nothing_is_reported(tmp_path, cohort):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="nothing to report"):
        build_report([empty], tmp_path / "rep", data=cohort, log=lambda _m: None)
    assert not (tmp_path / "rep").exists()
    # a run folder without predictions or a checkpoint: its curves alone are a report
    run = tmp_path / "run"
    write_log(run)
    res = build_report([run], tmp_path / "rep2", data=cohort, log=lambda _m: None)
    page = (tmp_path / "rep2" / "index.html").read_text()
    assert res.sections["training"] == "content" and res.sections["results"] == "missing-only"
    assert "no per-case results and no predicted masks" in page
    # the CLI: exit status 1 with one line when nothing could be reported
    r = CliRunner().invoke(app, ["report", str(empty), "--out", str(tmp_path / "rep3"), "--data", str(cohort)])
    assert r.exit_code == 1 and "nothing to report" in r.output


def test_study_folder_with_mismatched_case_sets(tmp_path, cohort):
    study = tmp_path / "study"
    runs = {"fam/ref/seed0": ["ct-only"], "fam/other/seed0": ["cmedl"]}
    (study).mkdir()
    (study / "study.json").write_text(json.dumps({"name": "s", "config": "cpu-demo", "runs": runs}))
    m = Manifest.load(cohort)
    ids = [c.id for c in m.select(split="test")]
    for key, drop in (("fam/ref/seed0", ()), ("fam/other/seed0", (ids[0],))):
        run = study / "runs" / key
        write_preds(run / "pred", cohort, skip=drop)
    inputs = find_inputs([str(study)])
    assert [s.name for s in inputs.sources] == ["ref", "other"] and inputs.groups().keys() == {"study: fam"}
    res = build_report([study], tmp_path / "rep", data=cohort, log=lambda _m: None)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert res.sections["results"] == "content"
    assert "1 test case(s) without a mask" in page and f"{len(ids) - 1} common cases" in page
