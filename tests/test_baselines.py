"""The papers' baselines (issue 15, part 2): pmri-cycle / pmri-unit (translator alone, then a segmenter
on its pMRI), ct-pmri and ct-pmri-weighted (CT + pMRI fused; eq. 11 with a ResNet18 alpha), pmri-cmedl
(a CMEDL checkpoint's generator and teacher), and the teacher's pMRI-only batch-norm statistics.

Known answers: each recipe's mask and probabilities equal the networks composed by hand; the phases
touch only their own networks; exact resume across the phase switch; validation scores the recipe;
the ResNet18 has torchvision's parameter count; the teacher's running statistics ignore real MRI."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_methods import changed, make_batch, snapshot
from torch import nn

from cmedl.data.phantom import generate_cohort
from cmedl.errors import ConfigError, InputError
from cmedl.inference import segment_files, segment_volume
from cmedl.io import Volume, read_volume, write_volume
from cmedl.losses import dice_of_volume
from cmedl.methods import (
    TRANSLATORS,
    build_generator_from_checkpoint,
    build_method,
    build_test_time_model,
    describe_methods,
    load_config,
    method_names,
)
from cmedl.methods.checkpoint_as import checkpoint_as_method
from cmedl.methods.cmedl import TEACHER_BN_PMRI_ONLY
from cmedl.methods.pmri import TwoPhaseMethod
from cmedl.nets.predict import predict_slices
from cmedl.nets.resnet import ResNet18Alpha, WeightedFusionNet
from cmedl.training import train
from cmedl.training.checkpoint import load_checkpoint, save_checkpoint
from cmedl.training.data import build_training_data

LEGACY = Path(__file__).parent / "data" / "legacy-cmedl-checkpoint-v1.pt"

#: tiny networks, one step per epoch (2 samples, batch 2), no VGG
TINY = [
    "model.seg_base_width=4", "cyclegan.gen_base_width=4", "cyclegan.gen_n_blocks=1", "cyclegan.disc_base_width=4",
    "cyclegan.disc_n_layers=2", "cyclegan.use_contextual=false", "data.patch_size=32", "training.batch_size=2",
    "data.samples_per_epoch=2", "data.val_samples=2", "training.device=cpu", "training.precision=fp32",
    "training.progress=false", "augmentation.elastic_prob=0.0", "optim.lr_segmentation=0.01",
    "model.dropout=0.0",  # two methods step in turn on one global RNG: dropout masks would differ
]
TWO_PHASE = ["pmri-cycle", "pmri-unit", "ct-pmri", "ct-pmri-weighted"]
#: tiny settings of the VAE translators (their sections exist once they are registered)
TINY_TRANSLATOR = {
    "unit": ["unit.gen_base_width=4", "unit.enc_private_blocks=1", "unit.gen_private_blocks=1",
             "unit.disc_base_width=4", "unit.disc_n_layers=2"],
    "drit": ["drit.gen_base_width=4", "drit.gen_n_blocks=1", "drit.content_private_blocks=1", "drit.attr_base_width=4",
             "drit.attr_n_blocks=2", "drit.disc_base_width=4", "drit.disc_n_layers=2", "drit.content_disc_layers=2"],
}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(method: str, *overrides: str):
    extra = [f"{method}.translator_epochs=1"] if method in TWO_PHASE else []
    for name, settings in TINY_TRANSLATOR.items():
        if name in TRANSLATORS:
            extra += settings
    if method == "ct-pmri-weighted":
        extra += [f"{method}.alpha_base_width=4", f"{method}.alpha_hidden=8"]
    return load_config("cpu-demo", [*TINY, f"training.method={method}", *extra, *overrides])


def payload(m, cfg) -> dict:
    s, mr = cfg.preprocess_configs()
    return {"method": m.name, "config": cfg.to_dict(), "preprocess": {"student": s.to_dict(), "mr": mr.to_dict()},
            **m.state_dict(), "epoch": 1, "global_step": m.global_step}


def ct_volume(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = np.full((3, 36, 40), -1000.0, np.float32)
    yy, xx = np.mgrid[:36, :40]
    arr[:, ((yy - 18) / 15) ** 2 + ((xx - 20) / 17) ** 2 < 1] = 40.0
    arr[1, 14:20, 16:22] = 300.0
    arr += rng.normal(0, 10, arr.shape).astype(np.float32)
    return Volume(arr, spacing=(0.9, 0.8, 2.5), origin=(-10.0, 5.0, 30.0))


class ByHand(nn.Module):
    """A recipe composed by hand from the method's networks (eval copies)."""

    def __init__(self, kind: str, g: nn.Module, seg: nn.Module) -> None:
        super().__init__()
        self.kind, self.g, self.seg = kind, g, seg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.g(x)
        if self.kind == "pmri":
            return self.seg(p)
        if self.kind == "concat":
            return self.seg(torch.cat([x, p], 1))
        alpha = self.seg.alpha_net(torch.cat([x, p], 1)).reshape(-1, 1, 1, 1)  # eq. 11, written out
        return self.seg.segmenter(torch.cat([(1 - alpha) * x, alpha * p], 1))


# ------------------------------------------------------------------------------ registry and config
def test_baselines_are_registered_with_their_recipes() -> None:
    assert {"pmri-cycle", "pmri-unit", "ct-pmri", "ct-pmri-weighted", "pmri-cmedl"} <= set(method_names())
    rows = {r["method"]: r for r in describe_methods()}
    assert rows["pmri-cycle"]["test time"] == "seg_pmri(g_ct2mr(CT))"
    assert rows["ct-pmri"]["test time"] == rows["ct-pmri-weighted"]["test time"] == "seg_fused([CT, g_ct2mr(CT)])"
    assert rows["pmri-cmedl"]["test time"] == "teacher_mr(g_ct2mr(CT))"
    assert all(rows[m]["translate"] == "ct2mr, mr2ct" for m in ("pmri-cycle", "ct-pmri", "pmri-cmedl"))
    cfg = load_config("cpu-demo", ["training.method=pmri-cycle"])
    assert cfg.active_sections == ("pmri-cycle", "cyclegan") and cfg.section("pmri-unit").translator == "unit"
    assert load_config("cpu-demo", ["training.method=pmri-cmedl"]).active_sections == ("cmedl", "cyclegan")


def test_two_phase_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="pmri-cycle.translator: unknown translator 'cyclegn'; did you mean 'cyclegan'"):
        tiny("pmri-cycle", "pmri-cycle.translator=cyclegn")
    with pytest.raises(ConfigError, match=r"translator_epochs \(6\) must be below training.patience \(6\)"):
        tiny("ct-pmri", "ct-pmri.translator_epochs=6")
    with pytest.raises(ConfigError, match=r"must be below training.max_epochs \(3\)"):
        tiny("pmri-cycle", "pmri-cycle.translator_epochs=3", "training.max_epochs=3")
    with pytest.raises(ConfigError, match="ct-pmri-weighted.alpha_hidden"):
        tiny("ct-pmri-weighted", "ct-pmri-weighted.alpha_hidden=0")
    assert tiny("pmri-unit").section("pmri-unit").translator == "unit"


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize(("name", "translator"), [(n, None) for n in TWO_PHASE] + [("pmri-cycle", "drit")])
def test_translator_alone_then_segmenter_alone(name: str, translator: str | None) -> None:
    torch.manual_seed(0)
    m = build_method(tiny(name, *([f"{name}.translator={translator}"] if translator else [])), "cpu")
    assert m.translator.name == (translator or ("unit" if name == "pmri-unit" else "cyclegan"))
    assert isinstance(m, TwoPhaseMethod) and m.switch_step == 1  # 1 epoch of 1 step
    seg = m.recipe.segmenter
    translator = [k for k in m.networks if k != seg]
    batch = make_batch(0)
    before = {k: snapshot(n) for k, n in m.networks.items()}
    logs = m.training_step(batch)  # phase 1: the translator's G and D steps only
    assert logs["phase"] == 1.0 and "loss_g" in logs and "seg_pmri" not in logs
    assert not changed(m.networks[seg], before[seg])
    assert all(changed(m.networks[k], before[k]) for k in translator if k.startswith("g_ct2mr"))
    before = {k: snapshot(n) for k, n in m.networks.items()}
    alpha_before = snapshot(m.networks[seg].alpha_net) if name == "ct-pmri-weighted" else None
    losses = [m.training_step(batch) for _ in range(3)]  # phase 2 on a fixed batch
    assert all(x["phase"] == 2.0 and "loss_g" not in x for x in losses)
    assert changed(m.networks[seg], before[seg])
    for k in translator:
        assert not changed(m.networks[k], before[k]), f"{k} moved in phase 2"
    assert losses[-1]["seg_pmri"] < losses[0]["seg_pmri"]
    if name == "ct-pmri-weighted":
        assert changed(m.networks[seg].alpha_net, alpha_before)  # alpha is learnt with the segmenter


def test_exact_resume_across_the_phase_switch() -> None:
    cfg = tiny("pmri-cycle", "cyclegan.pool_size=2")
    torch.manual_seed(0)
    a = build_method(cfg, "cpu")
    a.training_step(make_batch(1))
    state = copy.deepcopy(a.state_dict())
    assert state["method_state"]["switch_step"] == 1 and state["method_state"]["global_step"] == 1
    torch.manual_seed(99)
    b = build_method(cfg, "cpu")
    b.switch_step = 1000  # the checkpoint's switch wins
    b.load_state_dict(state)
    assert b.switch_step == 1 and b.phase == 2
    for i in range(2):
        la, lb = a.training_step(make_batch(2 + i)), b.training_step(make_batch(2 + i))
        assert la == pytest.approx(lb, abs=1e-6)


# ------------------------------------------------------------------------------ test-time recipes
@pytest.mark.parametrize(("name", "kind"), [("pmri-cycle", "pmri"), ("pmri-unit", "pmri"), ("ct-pmri", "concat"),
                                            ("ct-pmri-weighted", "weighted")])
def test_each_recipe_segments_through_segment_files(name: str, kind: str, tmp_path: Path) -> None:
    cfg = tiny(name)
    torch.manual_seed(0)
    m = build_method(cfg, "cpu")
    for i in range(2):
        m.training_step(make_batch(i))
    ckpt = save_checkpoint(tmp_path / "m.pt", payload(m, cfg))
    vol = ct_volume()
    write_volume(vol, tmp_path / "in" / "ct.nii.gz")
    (mask_path,) = segment_files(ckpt, [tmp_path / "in" / "ct.nii.gz"], tmp_path / "out", probabilities=True,
                                 progress=False)
    m.eval()
    by_hand = ByHand(kind, m.networks[m.recipe.translator], m.segmenter).eval()
    s_pp, _ = cfg.preprocess_configs()
    want = segment_volume(vol, by_hand, s_pp, return_probabilities=True).probabilities.array
    got = read_volume(tmp_path / "out" / "ct_prob.nii.gz")
    np.testing.assert_allclose(got.array, want, atol=1e-5)
    mask = read_volume(mask_path)
    assert mask.shape == vol.shape and mask.spacing == pytest.approx(vol.spacing) and mask.origin == pytest.approx(vol.origin)
    np.testing.assert_array_equal(mask.array, (got.array >= 0.5).astype(mask.array.dtype))
    # cmedl translate: the method's CT -> pMRI generator
    g, gpp = build_generator_from_checkpoint(load_checkpoint(ckpt), "ct2mr")
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(g(x), m.networks[m.recipe.translator](x))
    assert gpp.modality == "ct"


def test_weighted_fusion_follows_eq_11_and_resnet18_has_torchvision_size() -> None:
    alpha_net = ResNet18Alpha(2, 64, 256)
    convs = sum(p.numel() for k, p in alpha_net.named_parameters() if not k.startswith("fc"))
    assert convs == 11_176_512 - 3 * 64 * 49 + 2 * 64 * 49  # torchvision resnet18 minus its fc, 2 input channels
    assert sum(p.numel() for p in alpha_net.fc.parameters()) == 512 * 256 + 256 + 256 + 1
    torch.manual_seed(0)
    seg = nn.Conv2d(2, 1, 1)
    net = WeightedFusionNet(ResNet18Alpha(2, 4, 8), seg).eval()
    x = torch.rand(3, 2, 24, 24)
    with torch.no_grad():
        out = net(x)
        alpha = net.last_alpha
        assert alpha.shape == (3,) and torch.all((alpha > 0) & (alpha < 1))
        a = alpha.reshape(-1, 1, 1, 1)
        torch.testing.assert_close(out, seg(torch.cat([(1 - a) * x[:, :1], a * x[:, 1:]], 1)))
        net.alpha_net.fc[-1].bias.fill_(40.0)  # alpha -> 1: the CT channel is switched off
        torch.testing.assert_close(net(x), seg(torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], 1)))


# ------------------------------------------------------------------------------ pmri-cmedl and BN statistics
def test_pmri_cmedl_runs_a_saved_cmedl_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny("cmedl")
    torch.manual_seed(0)
    m = build_method(cfg, "cpu")
    m.training_step(make_batch(3))
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "cmedl.pt", payload(m, cfg)))
    assert ckpt["method_state"][TEACHER_BN_PMRI_ONLY] == 1
    as_p = checkpoint_as_method(ckpt, "pmri-cmedl", source=tmp_path / "cmedl.pt")
    assert as_p["method"] == "pmri-cmedl" and as_p["config"]["training"]["method"] == "pmri-cmedl"
    assert ckpt["method"] == "cmedl"  # the loaded checkpoint is not modified
    model, _, _ = build_test_time_model(as_p)
    assert model.recipe.networks == ("g_ct2mr", "teacher_mr")
    path = save_checkpoint(tmp_path / "as_pmri_cmedl.pt", as_p)
    vol = ct_volume(1)
    write_volume(vol, tmp_path / "in" / "ct.nii.gz")
    segment_files(path, [tmp_path / "in" / "ct.nii.gz"], tmp_path / "out", probabilities=True, progress=False)
    m.eval()
    want = segment_volume(vol, ByHand("pmri", m.networks["g_ct2mr"], m.networks["teacher_mr"]),
                          cfg.preprocess_configs()[0], return_probabilities=True).probabilities.array
    np.testing.assert_allclose(read_volume(tmp_path / "out" / "ct_prob.nii.gz").array, want, atol=1e-5)
    # the same straight from the cmedl checkpoint with segment_files(recipe=...) (`cmedl segment --recipe`)
    segment_files(tmp_path / "cmedl.pt", [tmp_path / "in" / "ct.nii.gz"], tmp_path / "out2", probabilities=True,
                  progress=False, recipe="pmri-cmedl")
    np.testing.assert_allclose(read_volume(tmp_path / "out2" / "ct_prob.nii.gz").array, want, atol=1e-5)
    # refusals, one line each
    with pytest.raises(InputError, match="did you mean 'pmri-cmedl'"):
        checkpoint_as_method(ckpt, "pmri-cmdl")
    ct_only = build_method(tiny("ct-only"), "cpu")
    with pytest.raises(InputError, match="method 'pmri-cmedl' cannot run a 'ct-only' checkpoint"):
        checkpoint_as_method(payload(ct_only, tiny("ct-only")), "pmri-cmedl")
    with pytest.raises(InputError, match="for a 'cmedl' checkpoint use pmri-cmedl"):
        checkpoint_as_method(ckpt, "ct-pmri")
    with pytest.raises(InputError, match="has no 'teacher_mr' network, which method 'pmri-cmedl' runs"):
        checkpoint_as_method(load_checkpoint(LEGACY), "pmri-cmedl", source=LEGACY)  # saved without the teacher
    # a checkpoint from before the pMRI-only teacher statistics runs, with a warning
    old = {**ckpt, "method_state": {k: v for k, v in ckpt["method_state"].items() if k != TEACHER_BN_PMRI_ONLY}}
    with caplog.at_level(logging.WARNING, logger="cmedl.methods.pmri_cmedl"):
        checkpoint_as_method(old, "pmri-cmedl", source=tmp_path / "old.pt")
    assert "mix pMRI and real MRI" in caplog.text and "old.pt" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cmedl.methods.pmri_cmedl"):
        checkpoint_as_method(ckpt, "pmri-cmedl")
    assert not caplog.text


def test_teacher_bn_running_statistics_come_from_pmri_only() -> None:
    """Real MRI with a huge offset must leave the teacher's running statistics exactly as pMRI alone
    leaves them; the forward on real MRI still normalises with its batch statistics."""
    cfg = tiny("cmedl")
    stats = []
    for offset in (0.0, 1000.0):
        torch.manual_seed(0)
        m = build_method(cfg, "cpu")
        teacher = m.networks["teacher_mr"]
        bns = [x for x in teacher.modules() if isinstance(x, nn.BatchNorm2d)]
        start = [b.running_mean.clone() for b in bns]
        batch = make_batch(4)
        batch["mr"] = batch["mr"] + offset
        m.train()
        fwd = m.forward_losses(batch)
        assert math.isfinite(float(fwd["s_terms"]["seg_rmri"].detach()))  # batch statistics: finite at any offset
        assert all(int(b.num_batches_tracked) == 1 for b in bns)  # one update: the pMRI forward
        assert any(not torch.equal(b.running_mean, s) for b, s in zip(bns, start, strict=True))
        stats.append([(b.running_mean.clone(), b.running_var.clone()) for b in bns])
        assert all(b.track_running_stats for b in bns)  # switched back on
    for (mean0, var0), (mean1, var1) in zip(*stats, strict=True):
        torch.testing.assert_close(mean1, mean0, rtol=0, atol=0)
        torch.testing.assert_close(var1, var0, rtol=0, atol=0)


# ------------------------------------------------------------------------------ trainer
def test_trainer_validates_the_recipe_and_resumes_across_the_switch(tmp_path: Path) -> None:
    """Two epochs of pmri-cycle (translator, then segmenter): validation scores the composed recipe
    (recomputed by hand from last.pt), and a run stopped in phase 2 resumes to the same steps."""
    phantom = generate_cohort(tmp_path / "ph", n_ct=4, n_cbct=0, n_mr=2, seed=0, shape=(8, 48, 48), workers=1)
    cfg = tiny("pmri-cycle", "training.max_epochs=2", "cyclegan.pool_size=1")
    full: list[dict] = []
    r = train(cfg, phantom, out_dir=tmp_path / "full", step_callback=lambda s, x: full.append(dict(x)))
    assert [x["phase"] for x in full] == [1.0, 2.0] and r.epochs == 2
    ckpt = load_checkpoint(tmp_path / "full" / "last.pt")
    model, _, _ = build_test_time_model(ckpt)
    data = build_training_data(cfg, TwoPhaseMethod.batch_kind, phantom)
    losses = []
    for case in data.val_cache.cases:
        prob, _ = predict_slices(model, case.image, pad_value=float(case.prepared.pad_value))
        losses.append(dice_of_volume(torch.from_numpy(prob), torch.from_numpy(np.ascontiguousarray(case.label)))[0])
    assert r.history[-1]["val_loss"] == pytest.approx(float(np.mean(losses)), abs=1e-5)

    part: list[dict] = []

    def stop_in_phase_2(step: int, losses: dict) -> None:
        part.append(dict(losses))
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped after the epoch-1 checkpoint, in phase 2
        train(cfg, phantom, out_dir=tmp_path / "part", step_callback=stop_in_phase_2)
    part = part[:1]
    train(cfg, phantom, out_dir=tmp_path / "part", resume=True, step_callback=lambda s, x: part.append(dict(x)))
    assert len(part) == 2
    for a, b in zip(full, part, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
