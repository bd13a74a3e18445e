"""Training: configs and presets, checkpoints, the trainer (resume, divergence, checks) and ``cmedl train``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.errors import ConfigError, InputError
from cmedl.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from cmedl.config import TrainConfig, list_presets, parse_override
from cmedl.methods import load_config, parse_config
from cmedl.training import TrainingDiverged, train

TINY = [
    "model.seg_base_width=4", "cyclegan.gen_base_width=4", "cyclegan.gen_n_blocks=1", "cyclegan.disc_base_width=4",
    "cyclegan.disc_n_layers=2", "data.patch_size=32", "training.batch_size=2", "data.samples_per_epoch=4",
    "data.val_samples=4", "cyclegan.contextual_layers=[conv1_2]", "cyclegan.contextual_max_positions=32",
    "training.device=cpu", "training.precision=fp32", "training.progress=false", "augmentation.elastic_prob=0.0",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cmedl.data.phantom import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("phantom"), n_ct=5, n_cbct=0, n_mr=3, seed=0,
                           shape=(12, 48, 48), workers=1)


def tiny(*overrides: str, method: str = "cmedl") -> TrainConfig:
    return load_config("cpu-demo", [*TINY, f"training.method={method}", *overrides])


# ------------------------------------------------------------------------ config
def test_presets_load_with_paper_values() -> None:
    assert {"cpu-demo", "paper-ct", "paper-cbct", "paper-ct-densefcn57", "paper-ct-mrrn"} <= set(list_presets())
    ct, cbct = load_config("paper-ct"), load_config("paper-cbct")
    assert (ct.data.patch_size, ct.training.batch_size, ct.training.max_epochs) == (256, 2, 100)
    assert (ct.cyclegan.lr, ct.optim.lr_segmentation) == (1e-4, 2e-4)
    assert (ct.cyclegan.lambda_adv, ct.cyclegan.lambda_cycle, ct.cyclegan.lambda_contextual, ct.cmedl.lambda_hint,
            ct.cmedl.lambda_seg) == (1, 10, 1, 1, 5)
    assert ct.model.seg_base_width is None and ct.cyclegan.gen_n_blocks == 9 and ct.cyclegan.pool_size == 50
    assert (ct.data.modality, ct.evaluation.surface_tolerance_mm) == ("ct", 2.0)
    assert (cbct.data.modality, cbct.evaluation.surface_tolerance_mm) == ("cbct", 4.38)
    assert load_config("paper-ct-mrrn").model.arch == "mrrn"
    assert load_config("paper-ct-densefcn57").model.arch == "densefcn57"
    demo = load_config("cpu-demo")
    assert (demo.data.patch_size, demo.model.seg_base_width, demo.cyclegan.gen_base_width, demo.training.batch_size) \
        == (64, 16, 16, 8)
    # the demo trains in bf16 only where the hardware has it (cmedl.devices.native_bf16), else fp32
    assert demo.training.precision == "auto" and demo.training.device == "cpu"


def test_unknown_key_and_preset_give_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'training.max_epoch'; did you mean 'training.max_epochs'"):
        load_config("cpu-demo", ["training.max_epoch=3"])
    with pytest.raises(ConfigError, match="did you mean 'cpu-demo'"):
        load_config("cpu-dem")
    with pytest.raises(ConfigError, match="did you mean 'loss'"):
        load_config("cpu-demo", ["los.lambda_hint=2"])
    with pytest.raises(ConfigError, match="cmedl.lambda_hint: expected a number"):
        load_config("cpu-demo", ["cmedl.lambda_hint=abc"])
    with pytest.raises(ConfigError, match="did you mean 'ct-only'"):
        load_config("cpu-demo", ["training.method=ctonly"])
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("training.max_epochs")


def test_overrides_types_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config("paper-ct", ["training.max_epochs=7", "cyclegan.contextual_layers=[conv2_2, conv3_1]",
                                   "cmedl.use_hint=off", "optim.lr_segmentation=1e-3", "model.seg_base_width=8"])
    assert cfg.training.max_epochs == 7 and cfg.cyclegan.contextual_layers == ["conv2_2", "conv3_1"]
    assert cfg.cmedl.use_hint is False and cfg.optim.lr_segmentation == 1e-3 and cfg.model.seg_base_width == 8
    assert parse_config(cfg.to_dict()) == cfg
    # a user file extending a preset, by name
    user = tmp_path / "mine.yaml"
    user.write_text("extends: paper-cbct\ntraining:\n  patience: 3\n")
    mine = load_config(user)
    assert (mine.data.modality, mine.training.patience, mine.data.patch_size) == ("cbct", 3, 256)
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


# ------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    net = torch.nn.Conv2d(1, 2, 3)
    path = save_checkpoint(tmp_path / "a.pt", {"method": "ct-only", "config": {"x": 1}, "preprocess": {},
                                               "networks": {"student_ct": net.state_dict()}, "epoch": 3})
    ck = load_checkpoint(path)
    assert ck["format"] == "cmedl-checkpoint/1" and ck["epoch"] == 3
    assert torch.equal(ck["networks"]["student_ct"]["weight"], net.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp files left
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.pt: not a readable cmedl checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(InputError, match="not a cmedl checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    # a failing write leaves the previous checkpoint intact
    with pytest.raises(Exception):  # noqa: B017 - lambdas cannot be pickled
        save_checkpoint(path, {"method": "x", "config": {}, "preprocess": {}, "networks": {}, "bad": lambda: 0})
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "junk.pt", "plain.pt"]


def test_rng_state_round_trip_is_weights_only_safe(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expect = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


# ------------------------------------------------------------------------ trainer
def _record(store: list):
    return lambda step, losses: store.append(dict(losses))


def _stop_at_step(n: int, store: list):
    """Step callback recording the losses into ``store`` that stops the run (as Ctrl-C would) at step ``n``."""
    record = _record(store)

    def callback(step: int, losses: dict) -> None:
        if step == n:
            raise KeyboardInterrupt
        record(step, losses)

    return callback


def test_resume_reproduces_the_uninterrupted_run(phantom: Path, tmp_path: Path) -> None:
    cfg2 = tiny("training.max_epochs=2", "cyclegan.pool_size=2")
    full: list[dict] = []
    r_full = train(cfg2, phantom, out_dir=tmp_path / "full", step_callback=_record(full))
    assert r_full.epochs == 2 and len(full) == 4

    # the same run stopped by the user at its third step (cpu-demo decays the learning rate over
    # max_epochs, so the resumed steps must also see the same schedule)
    part: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        train(cfg2, phantom, out_dir=tmp_path / "part", step_callback=_stop_at_step(3, part))
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    r_res = train(cfg2, phantom, out_dir=tmp_path / "part", resume=True, step_callback=_record(part))
    assert len(part) == 4 and r_res.epochs == 2
    for a, b in zip(full, part, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert r_full.history[-1]["val_loss"] == pytest.approx(r_res.history[-1]["val_loss"], abs=1e-6)
    # the CSV holds both epochs after the resume, like the uninterrupted run
    rows = (tmp_path / "part" / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,")
    # changing a setting that alters the steps is refused on resume
    with pytest.raises(ConfigError, match="cannot resume with a different configuration"):
        train(tiny("training.max_epochs=3", "optim.lr_segmentation=0.1"), phantom, out_dir=tmp_path / "part",
              resume=True)


def test_run_folder_contents_and_checkpoint_model(phantom: Path, tmp_path: Path) -> None:
    from cmedl.methods import build_student_from_checkpoint

    out = tmp_path / "run"
    r = train(tiny(method="ct-only"), phantom, out_dir=out)
    for name in ("config.yaml", "best.pt", "last.pt", "log.csv", "images/epoch_001.png"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert parse_config(saved) == tiny(method="ct-only")
    ck = load_checkpoint(r.best_checkpoint)
    assert ck["method"] == "ct-only" and ck["preprocess"]["mr"] is None
    assert ck["epoch"] == r.best_epoch and math.isfinite(ck["metrics"]["val_loss"])
    net, pp = build_student_from_checkpoint(ck)
    assert pp.modality == "ct" and not net.training
    # a second run into the same folder without --resume is refused
    with pytest.raises(InputError, match="already holds a training run"):
        train(tiny(method="ct-only"), phantom, out_dir=out)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmedl.methods import CTOnly

    calls = {"n": 0}
    original = CTOnly.training_step

    def flaky(self, batch):  # finite for the first epoch (2 steps), NaN afterwards
        calls["n"] += 1
        out = original(self, batch)
        return out if calls["n"] <= 2 else {**out, "seg_ct": float("nan")}

    monkeypatch.setattr(CTOnly, "training_step", flaky)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss seg_ct=nan at epoch 2, step 3.*last good checkpoint kept"):
        train(tiny("training.max_epochs=3", method="ct-only"), phantom, out_dir=out)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert len((out / "log.csv").read_text().splitlines()) == 2


def test_mri_from_the_same_patients_is_refused(phantom: Path, tmp_path: Path) -> None:
    raw = json.loads(phantom.read_text())
    ct_patient = next(c["patient_id"] for c in raw["cases"] if c["modality"] == "ct")
    split = next(x["split"] for x in raw["cases"] if x["patient_id"] == ct_patient)
    for c in raw["cases"]:
        c["image"] = str(phantom.parent / c["image"])
        c["label"] = str(phantom.parent / c["label"]) if c["label"] else None
        if c["modality"] == "mr":
            c["patient_id"], c["split"] = ct_patient, split
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="share patients"):
        train(tiny(), bad, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # no partial output


def test_cli_train_in_process(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["train", "--config", "cpu-demo", "--data", str(phantom), "--method", "cmedl", "--out", str(out),
            "--seed", "3", "--device", "cpu", "-q"]
    for s in TINY:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "best checkpoint" in res.output
    for name in ("config.yaml", "best.pt", "last.pt", "log.csv"):
        assert (out / name).is_file(), name
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"train_hint", "train_contextual", "train_cycle", "train_adv_g", "val_loss", "val_dice"} <= set(header)
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["seed"] == 3
    ck = load_checkpoint(out / "last.pt")
    assert set(ck["networks"]) == {"student_ct", "teacher_mr", "g_ct2mr", "g_mr2ct", "d_ct", "d_mr"}
    assert set(ck["optimizers"]) == {"g", "d", "s"}
    bad = CliRunner().invoke(app, ["train", "--config", "cpu-dem", "--data", str(phantom), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "did you mean 'cpu-demo'" in bad.output


@pytest.mark.slow
def test_short_cmedl_training_on_a_small_phantom(tmp_path: Path) -> None:
    """End to end: 120 cmedl steps at width 8 on 48x48 phantom patches: the cycle loss falls, the student's
    Dice loss falls, and the best checkpoint gives a working student."""
    from cmedl.data.phantom import generate_cohort
    from cmedl.methods import build_student_from_checkpoint

    manifest = generate_cohort(tmp_path / "ph", n_ct=8, n_cbct=0, n_mr=4, seed=1, shape=(16, 64, 64), workers=1)
    cfg = load_config("cpu-demo", ["model.seg_base_width=8", "cyclegan.gen_base_width=8", "cyclegan.disc_base_width=8",
                                   "data.patch_size=48", "data.samples_per_epoch=160", "training.max_epochs=6", "data.tumour_fraction=0.8",
                                   "training.patience=6", "training.progress=false"])
    r = train(cfg, manifest, out_dir=tmp_path / "run")
    assert r.epochs == 6 and (tmp_path / "run" / "best.pt").is_file()
    first, last = r.history[0], r.history[-1]
    assert last["train_cycle"] < 0.8 * first["train_cycle"]  # the generators learn to translate back
    assert last["train_seg_ct"] < first["train_seg_ct"]  # the student moves (slowly: Dice on tiny tumours)
    assert all(math.isfinite(h["val_loss"]) for h in r.history)
    net, _pp = build_student_from_checkpoint(load_checkpoint(r.best_checkpoint))
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 48, 48)).shape == (1, 1, 48, 48)



def test_cmedl_without_hint_trains_exactly_the_ct_only_student(phantom: Path, tmp_path: Path) -> None:
    """The control behind every CMEDL-vs-ct-only comparison: with ``lambda_hint`` 0 and no dropout, CMEDL's
    student sees the same initial weights, batches (augmentation included), loss, optimiser and schedule as
    ct-only, so the two runs give bit-identical students; whatever CMEDL adds is then the hint alone. (With
    dropout on, the two runs differ only in their dropout draws, which the translator and teacher share.)"""
    common = ("model.dropout=0", "cmedl.lambda_hint=0", "training.max_epochs=2")
    seg = {"ct-only": [], "cmedl": []}
    for method in seg:
        train(tiny(*common, method=method), phantom, out_dir=tmp_path / method,
              step_callback=lambda step, losses, m=method: seg[m].append(losses["seg_ct"]))
    assert len(seg["ct-only"]) == 4 and seg["ct-only"] == seg["cmedl"]
    a, c = (load_checkpoint(tmp_path / m / "last.pt")["networks"]["student_ct"] for m in seg)
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    # and the hint does reach the student: at lambda_hint 1 the run departs from ct-only
    hinted: list[float] = []
    train(tiny("model.dropout=0", "training.max_epochs=1", method="cmedl"), phantom, out_dir=tmp_path / "hint",
          step_callback=lambda step, losses: hinted.append(losses["seg_ct"]))
    assert hinted[0] == seg["ct-only"][0] and hinted[1] != seg["ct-only"][1]

class _ConstantStudent(torch.nn.Module):
    """A 'network' whose logit is the same everywhere (all foreground or all background)."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(float(logit)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit.expand_as(x).clone()


def test_volume_validation_scores_whole_scans_known_answer(phantom: Path) -> None:
    """validation=volumes: per-volume Dice of the whole scan, so over-segmenting is punished."""
    from types import SimpleNamespace

    from cmedl.data.batches import BatchKind
    from cmedl.training.data import build_training_data
    from cmedl.training.validation import validate_volumes

    cfg = tiny(method="ct-only")
    data = build_training_data(cfg, BatchKind.LABELLED_SLICES, phantom)
    labels = [c.label.astype(np.float64) for c in data.val_cache.cases]
    assert labels and all(y.any() for y in labels)
    everything = SimpleNamespace(student=_ConstantStudent(20.0), dims=lambda: 2, precision="fp32", config=cfg)
    got = validate_volumes(everything, data.val_cache, torch.device("cpu"))
    want = np.mean([2 * y.sum() / (y.size + y.sum()) for y in labels])  # all voxels predicted tumour
    assert got["val_dice"] == pytest.approx(want, rel=1e-9) and want < 0.2
    assert got["val_loss"] == pytest.approx(1 - want, rel=1e-4)
    nothing = SimpleNamespace(student=_ConstantStudent(-20.0), dims=lambda: 2, precision="fp32", config=cfg)
    got = validate_volumes(nothing, data.val_cache, torch.device("cpu"))
    assert got["val_dice"] == 0.0 and got["val_loss"] == pytest.approx(1.0, abs=1e-6)


def test_lr_schedules_known_values_and_applied_by_the_trainer(phantom: Path, tmp_path: Path) -> None:
    from cmedl.training.schedule import lr_factor

    assert lr_factor("constant", 0.9) == 1.0
    assert lr_factor("linear", 0.25) == 1.0 and lr_factor("linear", 0.75) == pytest.approx(0.5)
    assert lr_factor("cosine", 0.5) == 1.0 and lr_factor("cosine", 0.75) == pytest.approx(0.5)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("linear", 0.6, decay_start=0.2) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        tiny("optim.lr_schedule=cosin")
    # 2 epochs x 2 steps, linear decay from the start: the last step runs at 1/4 of the base rate
    r = train(tiny("optim.lr_schedule=linear", "optim.lr_decay_start=0.0", "training.max_epochs=2",
                   method="ct-only"), phantom, out_dir=tmp_path / "run")
    group = load_checkpoint(r.last_checkpoint)["optimizers"]["s"]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.25 * group["initial_lr"]) and group["initial_lr"] == pytest.approx(1e-3)


def test_resume_refuses_new_max_epochs_under_a_decaying_schedule(phantom: Path, tmp_path: Path) -> None:
    cfg = ("optim.lr_schedule=cosine", "training.max_epochs=1")
    train(tiny(*cfg, method="ct-only"), phantom, out_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="training.max_epochs"):
        train(tiny("optim.lr_schedule=cosine", "training.max_epochs=2", method="ct-only"), phantom,
              out_dir=tmp_path / "run", resume=True)
