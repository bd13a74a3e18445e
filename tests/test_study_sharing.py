"""Runs with the same configuration are trained once and shared (cmedl.study.sharing), within a study and
from another study folder (``--reuse``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cmedl.config import save_config
from cmedl.data.manifest import Case, Manifest
from cmedl.errors import InputError
from cmedl.study import load_study, parse_study, run_study
from cmedl.study import runner as runner_mod
from cmedl.study.sharing import SHARED_FROM, config_signature, finished_runs, share, source_of, twins


def test_shipped_presets_repeat_exactly_the_expected_runs():
    t3 = load_study("table3")
    assert twins(list(t3.configs().items())) == {"translators/translator=cyclegan/seed0": "strategies/cmedl/seed0"}
    t5 = load_study("table5")
    assert twins(list(t5.configs().items())) == {"hint-layers/hint_layers=high/seed0": "losses/cmedl/seed0"}
    t2 = load_study("table2")
    assert twins(list(t2.configs().items())) == {}  # three architectures: nothing repeats


def test_signature_ignores_the_device_only():
    cfg = load_study("table5").configs()
    a, b = cfg["losses/cmedl/seed0"], cfg["hint-layers/hint_layers=high/seed0"]
    b.training.device = "cuda:1"
    assert config_signature(a) == config_signature(b)
    b.training.seed = 1
    assert config_signature(a) != config_signature(b)
    assert config_signature(a) != config_signature(cfg["hint-layers/hint_layers=mid/seed0"])


def _fake_cohort(tmp_path: Path) -> Path:
    cases = [Case(id=f"c{i}", patient_id=f"p{i}", modality="ct", image=f"c{i}.nii.gz", label=f"c{i}_l.nii.gz",
                  split="test") for i in range(2)]
    path = tmp_path / "manifest.json"
    Manifest(cases, name="fake").save(path)
    return path


def _spec(seeds=(0,)):
    return parse_study({
        "name": "s", "config": "cpu-demo", "seeds": list(seeds),
        "families": {
            "losses": {"reference": "cmedl", "runs": {"cmedl": {"method": "cmedl"}, "ct-only": {"method": "ct-only"}}},
            "hint": {"grid": {"method": ["cmedl"], "cmedl.hint_layers": ["high", "mid"]}},
        },
    })


@pytest.fixture()
def fake_training(monkeypatch):
    """run_one replaced by a stand-in that writes what a finished run holds (each call recorded)."""
    calls: list[str] = []

    def fake_run_one(run, config, data, mr, run_dir, device, log=print):
        if (run_dir / "results.csv").exists():  # as run_one: a finished run is skipped
            return runner_mod.RunOutcome(run.key, run_dir / "results.csv", False)
        assert not (run_dir / SHARED_FROM).exists(), "a shared run must never be trained"
        calls.append(run.key)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        (run_dir / "DONE").write_text("done\n")
        (run_dir / "results.csv").write_text(f"case_id,dsc\nc0,{len(calls) / 10}\n")
        return runner_mod.RunOutcome(run.key, run_dir / "results.csv", True)

    monkeypatch.setattr(runner_mod, "run_one", fake_run_one)
    return calls


def test_a_repeated_run_is_trained_once_and_shares_the_results(tmp_path, fake_training):
    data = _fake_cohort(tmp_path)
    out = tmp_path / "study"
    outcomes = run_study(_spec(), data, out, log=lambda s: None)
    assert fake_training == ["losses/cmedl/seed0", "losses/ct-only/seed0", "hint/hint_layers=mid/seed0"]
    twin = outcomes["hint/hint_layers=high/seed0"]
    assert twin.error is None and not twin.trained and twin.shared_from == out / "runs" / "losses/cmedl/seed0"
    run_dir = out / "runs" / "hint/hint_layers=high/seed0"
    assert source_of(run_dir) == (out / "runs" / "losses/cmedl/seed0").resolve()
    assert (run_dir / "results.csv").read_text() == (out / "runs" / "losses/cmedl/seed0" / "results.csv").read_text()
    assert source_of(out / "runs" / "losses/cmedl/seed0") == out / "runs" / "losses/cmedl/seed0"
    # a rerun trains nothing and keeps the shared run as it is
    fake_training.clear()
    again = run_study(_spec(), data, out, log=lambda s: None)
    assert fake_training == [] and all(o.error is None for o in again.values())


def test_a_twin_of_a_failed_run_fails_with_its_reason(tmp_path, monkeypatch):
    def failing(run, config, data, mr, run_dir, device, log=print):
        raise InputError("out of memory", run_dir)

    monkeypatch.setattr(runner_mod, "run_one", failing)
    outcomes = run_study(_spec(), _fake_cohort(tmp_path), tmp_path / "study", log=lambda s: None)
    twin = outcomes["hint/hint_layers=high/seed0"]
    assert twin.results is None and "losses/cmedl/seed0" in twin.error and "out of memory" in twin.error
    assert not (tmp_path / "study" / "runs" / "hint/hint_layers=high/seed0" / "results.csv").exists()


def test_reuse_shares_finished_runs_of_another_study(tmp_path, fake_training):
    data = _fake_cohort(tmp_path)
    first = tmp_path / "first"
    run_study(_spec(), data, first, log=lambda s: None)
    fake_training.clear()
    other = parse_study({"name": "other", "config": "cpu-demo", "seeds": [0, 1], "families": {
        "arms": {"reference": "ct-only", "runs": {"ct-only": {"method": "ct-only"}, "cmedl": {"method": "cmedl"}}}}})
    outcomes = run_study(other, data, tmp_path / "second", reuse=[first], log=lambda s: None)
    assert sorted(fake_training) == ["arms/cmedl/seed1", "arms/ct-only/seed1"]  # seed 0 of both was trained
    shared = outcomes["arms/cmedl/seed0"]
    assert shared.shared_from == (first / "runs" / "losses/cmedl/seed0").resolve()
    rows = list(csv.DictReader((tmp_path / "second/runs/arms/cmedl/seed0/results.csv").read_text().splitlines()))
    assert rows == [{"case_id": "c0", "dsc": "0.1"}]
    # a shared run is not offered for reuse (its source is), and a folder that is not a study is refused
    assert sorted(finished_runs([first]).values()) == sorted(
        (first / "runs" / k).resolve() for k in ("losses/cmedl/seed0", "losses/ct-only/seed0", "hint/hint_layers=mid/seed0"))
    with pytest.raises(InputError, match="not a study folder"):
        finished_runs([tmp_path])


def test_share_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(InputError, match="no results.csv"):
        share(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst" / SHARED_FROM).exists()
