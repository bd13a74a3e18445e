"""End-to-end demo at minimal size (slow: run with ``pytest -m slow``; CI runs it)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.manifest import Manifest
from cmedl.io import read_volume

TINY = [
    "training.max_epochs=1",
    "data.samples_per_epoch=16",
    "data.val_samples=8",
    "data.patch_size=32",
    "model.seg_base_width=4",
    "cyclegan.gen_base_width=4",
    "cyclegan.gen_n_blocks=1",
    "cyclegan.disc_base_width=4",
    "training.image_grid=false",
]


@pytest.mark.slow
def test_demo_end_to_end_minimal(tmp_path):
    args = ["demo", "--out", str(tmp_path / "demo"), "--ct", "10", "--mr", "6", "--seed", "1"]
    for o in TINY:
        args += ["--set", o]
    result = CliRunner().invoke(app, args + ["--size", "48x48x12"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    assert "ct-only" in result.output and "cmedl" in result.output and "Wilcoxon" in result.output
    assert "cue cohort" in result.output and "[95% CI]" in result.output
    assert "tumour-vs-abutting-tissue AUC" in result.output and "teacher Dice on real MRI" in result.output
    assert "false-positive components per scan" in result.output
    timing = re.search(r"demo finished in [0-9.]+ min, peak RSS ([0-9.]+) GB", result.output.replace("\n", ""))
    # in GB: a wrong unit (bytes, MiB) would be 1000x off; this pytest process also holds earlier tests' peak
    assert timing and 0.05 < float(timing.group(1)) < 24.0, result.output[-400:]
    manifest = Manifest.load(out / "phantom" / "manifest.json")
    test_cases = manifest.select(split="test", modality="ct")
    assert test_cases
    # predicted masks line up with the CT they were computed from
    for method in ("ct-only", "cmedl"):
        for case in test_cases:
            pred = read_volume(out / method / "pred" / f"{case.id}.nii.gz")
            ct = read_volume(manifest.image_path(case))
            assert pred.same_geometry(ct)
            assert set(np.unique(pred.array)) <= {0, 1}
        rows = list(csv.DictReader((out / f"{method}.csv").read_text().splitlines()))
        assert sorted(r["case_id"] for r in rows) == sorted(c.id for c in test_cases)
        assert all(0.0 <= float(r["dsc"]) <= 1.0 for r in rows)
        assert (out / method / "best.pt").exists() and (out / method / "config.yaml").exists()
    table = list(csv.reader((out / "comparison.csv").read_text().splitlines()))
    assert [row[0] for row in table[1:]] == ["ct-only", "cmedl"]
    header = table[0]
    assert {"difference", "difference_ci_low", "f1_mean"} <= set(header)
    kinds = {c.tumour_kind for c in test_cases}
    assert kinds and {p.name for p in out.glob("comparison.*.csv")} == {f"comparison.{k}.csv" for k in kinds}
    assert (out / "demo_slices.png").stat().st_size > 10_000
    assert json.loads((out / "demo.json").read_text())["min_component_ml"] == 1.5  # cpu-demo's evaluation filter
    # the demo ends with its HTML report, with simulated raters for the inter-rater section
    assert f"report: {out / 'report' / 'index.html'}" in result.output.replace("\n", "")
    page = (out / "report" / "index.html").read_text()
    for key in ("cohort", "results", "training", "examples", "pmri", "tsne", "featuremaps", "dropout", "raters"):
        assert f'id="{key}"' in page
    assert 'id="raters" data-status="content"' in page and 'id="tsne" data-status="content"' in page
    assert sorted(p.name for p in (out / "raters").iterdir()) == ["rater1", "rater2", "rater3"]
    assert len(list((out / "raters" / "rater1").glob("*.nii.gz"))) == len(test_cases)
    assert (out / "report" / "figures" / "tsne.png").stat().st_size > 5_000
    # a second run reuses the finished steps instead of retraining
    again = CliRunner().invoke(app, args + ["--size", "48x48x12"])
    assert again.exit_code == 0, again.output
    assert "reusing finished run" in again.output
    # ... but refuses a folder made with other parameters rather than reporting stale results
    stale = CliRunner().invoke(app, args + ["--size", "48x48x12", "--ct", "9"])
    assert stale.exit_code == 1 and "other parameters" in stale.output


@pytest.mark.slow
def test_demo_on_cbct_uses_the_cbct_preset(tmp_path):
    args = ["demo", "--out", str(tmp_path / "demo"), "--ct", "8", "--mr", "4", "--seed", "2", "--modality", "cbct",
            "--cohort", "control", "--size", "48x48x12"]
    for o in TINY:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    manifest = Manifest.load(out / "phantom" / "manifest.json")
    assert manifest.select(modality="cbct") and not manifest.select(modality="ct")
    assert "control cohort" in result.output and "CBCT" in result.output
    rows = list(csv.DictReader((out / "cmedl.csv").read_text().splitlines()))
    assert {float(r["tolerance_mm"]) for r in rows} == {4.38}  # the CBCT paper's surface-Dice tolerance
    import yaml

    cfg = yaml.safe_load((out / "cmedl" / "config.yaml").read_text())
    assert cfg["data"]["modality"] == "cbct"
    student = cfg["preprocessing"]["student"]  # standardised CBCT, not cpu-demo's CT window
    assert student.get("clip_sd") == 1.0 and student.get("window") is None, student


def test_demo_rejects_bad_modality_and_cohort(tmp_path):
    for args, match in ((["--modality", "mri"], "demo modality"), (["--cohort", "strong"], "demo cohort")):
        res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), *args])
        assert res.exit_code == 1 and match in res.output and not (tmp_path / "d").exists()
