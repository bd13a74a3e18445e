"""`cmedl study`: study files (families, grids, seeds), the resumable runner and the papers' tables."""

from __future__ import annotations

import csv
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.cli.study import parse_devices
from cmedl.data.phantom import generate_cohort
from cmedl.errors import ConfigError, InputError
from cmedl.study import load_study, parse_study, run_study, study_presets, write_tables

TINY = [
    "training.max_epochs=1", "data.samples_per_epoch=8", "data.val_samples=4", "data.patch_size=32",
    "model.seg_base_width=4", "training.batch_size=4", "training.image_grid=false",
    "cyclegan.gen_base_width=4", "cyclegan.gen_n_blocks=1", "cyclegan.disc_base_width=4",
]


def test_grid_and_runs_expand_with_names_seeds_and_overrides():
    spec = parse_study({
        "name": "s", "config": "cpu-demo", "seeds": [0, 2], "set": {"training.max_epochs": 3},
        "families": {
            "arch": {"reference": "ct-only", "runs": {
                "cmedl": {"method": "cmedl", "set": {"cmedl.hint_layers": "mid"}},
                "ct-only": {"method": "ct-only"}}},
            "grid": {"grid": {"method": ["ct-only", "cmedl"], "model.arch": ["unet", "mrrn"], "cmedl.use_hint": [False]}},
        },
    })
    keys = [r.key for r in spec.runs()]
    assert keys[:4] == ["arch/cmedl/seed0", "arch/cmedl/seed2", "arch/ct-only/seed0", "arch/ct-only/seed2"]
    assert spec.family("arch").run_names == ["ct-only", "cmedl"]  # the reference first
    grid = spec.family("grid")
    assert [r[0] for r in grid.runs] == ["ct-only,arch=unet", "ct-only,arch=mrrn", "cmedl,arch=unet", "cmedl,arch=mrrn"]
    assert grid.runs[3][2] == ("model.arch=mrrn", "cmedl.use_hint=false")
    run = spec.runs()[0]
    assert run.all_overrides() == ["training.max_epochs=3", "cmedl.hint_layers=mid", "training.method=cmedl",
                                   "training.seed=0"]
    configs = spec.configs()
    assert configs["arch/cmedl/seed2"].training.seed == 2 and configs["arch/cmedl/seed2"].cmedl.hint_layers == "mid"
    assert configs["grid/cmedl,arch=mrrn/seed0"].model.arch == "mrrn"


@pytest.mark.parametrize("raw, match", [
    ({"families": {}}, "no families"),
    ({"families": {"f": {"runs": {"a": {"method": "ct-only"}}}}, "familys": 1}, "did you mean .families."),
    ({"families": {"f": {"runs": {"a": {"methd": "ct-only"}}}}}, "expected a mapping with 'method'"),
    ({"families": {"f": {"runs": {"a": {"method": "ct-only"}}, "reference": "b"}}}, "reference"),
    ({"families": {"f": {"grid": {"model.arch": ["unet"]}}}}, "include 'method'"),
    ({"families": {"f/g": {"runs": {"a": {"method": "ct-only"}}}}}, "folder name"),
    ({"seeds": [-1], "families": {"f": {"runs": {"a": {"method": "ct-only"}}}}}, "seeds"),
])
def test_bad_study_files_are_one_line_config_errors(raw, match):
    with pytest.raises(ConfigError, match=match) as exc:
        parse_study(raw)
    assert "\n" not in str(exc.value)


def test_presets_load_and_validate_every_run():
    assert {"table2", "table5"} <= set(study_presets())
    t2 = load_study("table2")
    assert [f.name for f in t2.families] == ["unet", "densefcn57", "mrrn"]
    assert len(t2.configs()) == 6
    t5 = load_study("table5")
    cfg = t5.configs()
    assert cfg["losses/no-cycle/seed0"].section("cyclegan").lambda_cycle == 0
    assert cfg["losses/no-seg-pmri/seed0"].cmedl.use_seg_pmri is False
    assert cfg["hint-layers/hint_layers=low/seed0"].cmedl.hint_layers == "low"
    with pytest.raises(ConfigError, match="did you mean 'table2'"):
        load_study("tabel2")
    bad = parse_study({"families": {"f": {"runs": {"a": {"method": "cmedl", "set": {"cmedl.lambda_hnt": 1}}}}}})
    with pytest.raises(ConfigError, match="study run f/a/seed0"):
        bad.configs()


def test_parse_devices():
    assert parse_devices("cpu") == ["cpu"]
    assert parse_devices("0,1") == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda:1, cuda:3") == ["cuda:1", "cuda:3"]
    for bad in ("", "gpu", "0,0"):
        with pytest.raises(InputError, match="--devices"):
            parse_devices(bad)


@pytest.mark.slow
def test_study_end_to_end_resumes_and_writes_tables(tmp_path):
    manifest = generate_cohort(tmp_path / "data", 8, 0, 3, seed=3, shape=(8, 48, 48), workers=1,
                               fractions=(0.5, 0.15, 0.35))
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({
        "name": "mini", "config": "cpu-demo", "seeds": [0, 1], "set": dict(o.split("=") for o in TINY),
        "families": {"methods": {"reference": "ct-only", "runs": {
            "ct-only": {"method": "ct-only"}, "cmedl": {"method": "cmedl"}}}},
    }))
    out = tmp_path / "out"
    spec = load_study(study)
    outcomes = run_study(spec, manifest, out, log=lambda s: None)
    assert len(outcomes) == 4 and all(o.error is None and o.trained for o in outcomes.values())
    text = write_tables(spec, out, manifest)
    assert "ct-only" in text and "cmedl" in text and "mean DSC per seed" in text
    table = list(csv.DictReader((out / "tables" / "methods.csv").read_text().splitlines()))
    assert [r["method"] for r in table] == ["ct-only", "cmedl"] and table[1]["difference"] != ""
    kinds = {p.name for p in (out / "tables").glob("methods.*.csv")}
    assert kinds and kinds <= {"methods.lung.csv", "methods.mediastinal.csv", "methods.chest-wall.csv"}
    rows = list(csv.DictReader((out / "all_cases.csv").read_text().splitlines()))
    assert {(r["run"], r["seed"]) for r in rows} == {("ct-only", "0"), ("ct-only", "1"), ("cmedl", "0"), ("cmedl", "1")}
    assert (out / "tables" / "translation_quality.csv").exists()
    # an interrupted run (no DONE, no results, last.pt kept) is resumed; finished ones are skipped
    run = out / "runs" / "methods" / "cmedl" / "seed1"
    (run / "DONE").unlink()
    (run / "results.csv").unlink()
    shutil.rmtree(run / "pred")
    again = run_study(spec, manifest, out, log=lambda s: None)
    assert [k for k, o in again.items() if o.trained] == ["methods/cmedl/seed1"]
    assert (run / "results.csv").exists()
    # the same folder with other overrides is refused before any work
    with pytest.raises(InputError, match="another study"):
        run_study(spec, manifest, out, overrides=["training.max_epochs=2"], log=lambda s: None)
    res = CliRunner().invoke(app, ["study", str(study), "--data", str(manifest), "--out", str(out), "--tables-only"])
    assert res.exit_code == 0, res.output
    assert "methods" in res.output


def test_tables_average_each_case_over_seeds_before_comparing(tmp_path):
    """Known answer: per case the seeds' DSCs are averaged, then the table takes mean and paired difference
    of those averages; each seed's own mean is listed under the table."""
    from cmedl.data.manifest import Case, Manifest
    from cmedl.evaluation.results_csv import write_results_csv

    cases = [Case(id=f"c{i}", patient_id=f"p{i}", modality="ct", image=f"c{i}.nii.gz", label=f"c{i}_l.nii.gz",
                  split="test", tumour_kind="lung" if i < 3 else "mediastinal") for i in range(6)]
    Manifest(cases, name="fake").save(tmp_path / "manifest.json")
    spec = parse_study({"name": "s", "config": "cpu-demo", "seeds": [0, 1], "families": {"methods": {
        "reference": "ct-only", "runs": {"ct-only": {"method": "ct-only"}, "cmedl": {"method": "cmedl"}}}}})
    dsc = {("ct-only", 0): [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], ("ct-only", 1): [0.3, 0.2, 0.1, 0.0, 0.1, 0.2],
           ("cmedl", 0): [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], ("cmedl", 1): [0.5, 0.4, 0.3, 0.2, 0.3, 0.2]}
    for (run, seed), values in dsc.items():
        rows = [{"case_id": c.id, "modality": "ct", "tumour_kind": c.tumour_kind, "dsc": v, "sdsc": v,
                 "hd95": 10 * (1 - v), "f1": 1.0} for c, v in zip(cases, values)]
        path = tmp_path / "out" / "runs" / "methods" / run / f"seed{seed}" / "results.csv"
        path.parent.mkdir(parents=True)
        write_results_csv(rows, path)
    text = write_tables(spec, tmp_path / "out", tmp_path / "manifest.json")
    table = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "tables" / "methods.csv").open())}
    ct_avg = [(a + b) / 2 for a, b in zip(dsc["ct-only", 0], dsc["ct-only", 1])]
    cm_avg = [(a + b) / 2 for a, b in zip(dsc["cmedl", 0], dsc["cmedl", 1])]
    assert float(table["ct-only"]["dsc_mean"]) == pytest.approx(sum(ct_avg) / 6)
    assert float(table["cmedl"]["dsc_mean"]) == pytest.approx(sum(cm_avg) / 6)
    assert float(table["cmedl"]["difference"]) == pytest.approx((sum(cm_avg) - sum(ct_avg)) / 6)  # 0.25
    lung = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "tables" / "methods.lung.csv").open())}
    assert float(lung["cmedl"]["dsc_mean"]) == pytest.approx(sum(cm_avg[:3]) / 3) and lung["cmedl"]["n"] == "3"
    assert "cmedl: mean DSC per seed 0.750, 0.317" in text  # (0.5+...+1.0)/6 and (0.5+...+0.2)/6


def test_tables_only_refuses_another_studys_folder_and_writes_nothing(tmp_path):
    from cmedl.data.manifest import Case, Manifest

    Manifest([Case(id="c0", patient_id="p0", modality="ct", image="c0.nii.gz", label="c0_l.nii.gz", split="test")],
             name="fake").save(tmp_path / "manifest.json")
    folder = tmp_path / "t3"
    (folder / "tables").mkdir(parents=True)
    (folder / "study.json").write_text('{"name": "table3", "config": "cpu-demo", "extra_overrides": [], "runs": {}}')
    (folder / "tables" / "summary.txt").write_text("table3's tables")
    args = ["study", "table2", "--data", str(tmp_path / "manifest.json"), "--config", "cpu-demo", "--tables-only"]
    res = CliRunner().invoke(app, [*args, "--out", str(folder)])
    assert res.exit_code == 1 and "holds another study" in res.output and str(folder / "study.json") in res.output
    assert (folder / "tables" / "summary.txt").read_text() == "table3's tables"
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "empty")])  # no study there at all
    assert res.exit_code == 1 and "no study here" in res.output and not (tmp_path / "empty").exists()


def test_runs_segment_with_the_configs_component_filter(tmp_path, monkeypatch):
    """The study scores each run with its preset's test-time recipe (cpu-demo: components < 1.5 ml dropped),
    as `cmedl demo` does, so study tables and the demo agree."""
    from cmedl.methods import load_config
    from cmedl.study import runner as runner_mod
    from cmedl.study.spec import RunSpec

    manifest = generate_cohort(tmp_path / "data", 3, 0, 0, seed=3, shape=(8, 32, 32), workers=1,
                               fractions=(0.34, 0.0, 0.66))
    seen: list[float] = []
    monkeypatch.setattr(runner_mod, "segment_files", lambda ckpt, inputs, out, **kw: seen.append(kw["min_component_ml"]))
    monkeypatch.setattr(runner_mod, "evaluate_folders", lambda pred, ref, tolerance_mm: [])
    for preset, override, expected in [("cpu-demo", [], 1.5), ("paper-ct", [], 0.0),
                                       ("cpu-demo", ["evaluation.min_component_ml=0.4"], 0.4)]:
        run_dir = tmp_path / f"run-{len(seen)}"
        run_dir.mkdir()
        (run_dir / "DONE").write_text("done\n")  # trained already: only segmentation and scoring run
        (run_dir / "best.pt").write_bytes(b"")
        run = RunSpec("f", "r", "ct-only", tuple(override), 0)
        runner_mod.run_one(run, load_config(preset, run.all_overrides()), manifest, None, run_dir, "cpu")
        assert seen[-1] == expected
    with pytest.raises(ConfigError, match="min_component_ml"):
        load_config("cpu-demo", ["evaluation.min_component_ml=-1"])
