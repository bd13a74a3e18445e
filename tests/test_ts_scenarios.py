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
    for res in results:
        assert set(res["teachers"]) == {"box-teacher", "point-teacher"}
        assert all(0.0 <= d <= 1.0 for d in res["teachers"]["box-teacher"])
        assert len(res["pseudo_label_dsc"]) == res["scenario"]["box"]
        for student in ("ts-baseline", "ts-student", "ts-student-do"):
            rows = res["students"][student]
            assert len(rows["dsc"]) == 2 and all(0.0 <= d <= 1.0 for d in rows["dsc"])
            assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in rows["f1"])
    pseudo = tmp_path / "scarce" / "pseudo" / "manifest.json"
    assert pseudo.exists() and '"label_source": "pseudo"' in pseudo.read_text()
    out = capsys.readouterr().out
    assert "| Box guided |" in out and "| DO Student |" in out
    # a rerun reuses every finished run and prints the same tables
    again = module.main(args)
    assert again[0]["students"]["ts-student"]["dsc"] == results[0]["students"]["ts-student"]["dsc"]
