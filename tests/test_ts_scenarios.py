"""The scenario benchmark (benchmarks/ts_scenarios.py) end to end at minimal size (slow)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ts_scenarios.py"


def test_scenarios_run_and_print_tables(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ts_scenarios", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    args = ["--out", str(tmp_path), "--vast", "2,3", "--scarce", "1,4", "--val", "1", "--test", "2",
            "--shape", "24,48,48", "--steps-per-epoch", "8", "--epochs", "1", "--set", "model.seg_base_width=4",
            "--set", "data.patch_size_3d=[16,32,32]", "--set", "data.val_samples=2"]
    results = module.main(args)
    assert [r["scenario"]["name"] for r in results] == ["vast", "scarce"]
    from cmedl.data.manifest import Manifest
    from cmedl.evaluation.metrics import dice
    from cmedl.io.volume import read_volume

    for res in results:
        name = res["scenario"]["name"]
        assert set(res["teachers"]) == {"box-teacher", "point-teacher"}
        assert all(len(res["teachers"][t]) == 2 for t in res["teachers"])  # one DSC per test case
        assert len(res["pseudo_label_dsc"]) == res["scenario"]["box"]
        assert all(v > 0 and math.isfinite(v) for v in res["train_seconds"].values())  # every run trained
        assert {k: r["steps"] for k, r in res["runs"].items()} == {k: 8 for k in res["train_seconds"]}
        m = Manifest.load(tmp_path / name / "data" / "manifest.json")
        tests = sorted(c.id for c in m.cases if c.split == "test")
        for student in ("ts-baseline", "ts-student", "ts-student-do"):
            rows = res["students"][student]
            # the table's DSC is the DSC of the mask the student wrote for each test case
            pred = tmp_path / name / "pred" / student
            assert sorted(f.name.removesuffix(".nii.gz") for f in pred.glob("*.nii.gz")
                          if not f.name.endswith("_prob.nii.gz")) == tests
            expected = [dice(read_volume(pred / f"{cid}.nii.gz").array != 0,
                             read_volume(m.label_path(next(c for c in m.cases if c.id == cid))).array != 0)
                        for cid in tests]
            assert sorted(rows["dsc"]) == pytest.approx(sorted(expected))
            assert len(rows["f1"]) == 2
            assert rows["kind"] == [next(c for c in m.cases if c.id == cid).tumour_kind for cid in rows["case"]]
            # the clean-up was chosen on validation (the best mean val DSC) and scored on the masks it wrote
            pp = rows["postprocess"]
            assert pp["val_dsc"][pp["chosen"]] == max(pp["val_dsc"].values()) and len(pp["val_dsc"]) == 12
            chosen = [dice(read_volume(pred / "chosen" / f"{cid}.nii.gz").array != 0,
                           read_volume(m.label_path(next(c for c in m.cases if c.id == cid))).array != 0)
                      for cid in rows["chosen"]["case"]]
            assert sorted(rows["chosen"]["case"]) == tests and rows["chosen"]["dsc"] == pytest.approx(chosen)
    pseudo = tmp_path / "scarce" / "pseudo" / "manifest.json"
    assert pseudo.exists() and '"label_source": "pseudo"' in pseudo.read_text()
    out = capsys.readouterr().out
    assert "| Box guided |" in out and "| DO Student |" in out and "reused runs" not in out
    assert "ts-student-do 8 steps, best epoch 1/1" in out
    assert "DSC % per tumour kind" in out and "clean-up each chose on the validation split" in out
    # a rerun trains nothing (every run finished) and prints the same tables
    again = module.main(args)
    assert all(math.isnan(v) for res in again for v in res["train_seconds"].values())
    assert again[0]["students"]["ts-student"]["dsc"] == results[0]["students"]["ts-student"]["dsc"]
    assert "training time: reused runs" in capsys.readouterr().out
