"""The VAE translators inside CMEDL (``cmedl.translator: drit | unit``): config sections, the G/D step
separation, every loss switch and weight, gradients of the CMEDL terms into the translator, learning
on a fixed batch, shared blocks, the test-time translation, and trainer checkpoints used by
``cmedl translate`` and ``cmedl segment``."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cmedl.errors import ConfigError
from cmedl.methods import CMEDL, build_generator_from_checkpoint, build_method, load_config
from cmedl.methods.translators import TRANSLATORS, DRITConfig, DRITTranslator, UNITConfig
from cmedl.nets.drit import DRITTranslation

P = 32
COMMON = ["model.seg_base_width=4", f"data.patch_size={P}", "training.batch_size=2", "data.samples_per_epoch=4",
          "data.val_samples=4", "training.device=cpu", "training.precision=fp32", "training.progress=false",
          "augmentation.elastic_prob=0.0"]
#: tiny networks per translator (width 4, one residual block where there are several)
TINY = {
    "drit": ["drit.gen_base_width=4", "drit.gen_n_blocks=1", "drit.content_private_blocks=1", "drit.attr_base_width=4",
             "drit.attr_n_blocks=2", "drit.disc_base_width=4", "drit.disc_n_layers=2", "drit.content_disc_layers=2"],
    "unit": ["unit.gen_base_width=4", "unit.enc_private_blocks=1", "unit.gen_private_blocks=1",
             "unit.disc_base_width=4", "unit.disc_n_layers=2"],
}
#: every network each translator trains in its G step / D step
G_NETS = {"drit": ("g_ct2mr", "g_mr2ct", "e_attr_ct", "e_attr_mr"), "unit": ("g_ct2mr", "g_mr2ct")}
D_NETS = {"drit": ("d_ct", "d_mr", "d_content"), "unit": ("d_ct", "d_mr")}
TERMS = {"drit": {"adv_g", "content_adv", "vae_recon", "kl", "cross_cycle", "latent_reg"},
         "unit": {"adv_g", "recon", "kl", "cycle", "kl_cycle"}}

pytestmark = pytest.mark.usefixtures("one_thread")


def config(translator: str, *overrides: str):
    return load_config("cpu-demo", [*COMMON, *TINY[translator], f"cmedl.translator={translator}", *overrides])


def make_batch(seed: int = 0, b: int = 2) -> dict[str, torch.Tensor]:
    """Unpaired batch: dark CT-like and brighter MRI-like images, each with a bright disc and its mask."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    out: dict[str, list[torch.Tensor]] = {"ct": [], "ct_label": [], "mr": [], "mr_label": []}
    for _ in range(b):
        for mod, base in (("ct", -0.6), ("mr", -0.2)):
            cy, cx = torch.randint(8, P - 8, (2,), generator=g).tolist()
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= 16).float()
            out[mod].append((base + 0.9 * mask + 0.1 * torch.randn(P, P, generator=g)).clamp(-1, 1)[None])
            out[f"{mod}_label"].append(mask[None])
    batch = {k: torch.stack(v) for k, v in out.items()}
    batch["mr_has_label"] = torch.ones(b, dtype=torch.bool)
    return batch


def snapshot(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def changed(net: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p.detach(), b) for p, b in zip(net.parameters(), before, strict=True))


@pytest.fixture(scope="module", params=["drit", "unit"])
def method(request, one_thread) -> CMEDL:
    torch.manual_seed(0)
    m = build_method(config(request.param), "cpu")
    assert isinstance(m, CMEDL)
    return m


# ------------------------------------------------------------------------ config
def test_sections_are_registered_with_paper_defaults() -> None:
    assert {"cyclegan", "drit", "unit"} <= set(TRANSLATORS)
    cfg = load_config("paper-ct", ["cmedl.translator=drit"])
    assert isinstance(cfg.section("drit"), DRITConfig) and cfg.active_sections == ("cmedl", "drit")
    assert "drit" in cfg.to_dict() and "cyclegan" not in cfg.to_dict()  # only the sections the run reads
    d = cfg.drit
    assert (d.gen_n_blocks, d.lambda_content_adv, d.lambda_vae, d.lambda_cc, d.lambda_lr) == (6, 1, 10, 10, 1)
    assert (d.lr, d.betas, d.attr_dim) == (1e-4, [0.5, 0.999], 8)
    u = load_config("paper-ct", ["cmedl.translator=unit"]).section("unit")
    assert isinstance(u, UNITConfig)
    assert (u.lambda_adv, u.lambda_recon, u.lambda_kl, u.lambda_cycle, u.lambda_kl_cycle) == (1, 10, 0.01, 10, 0.01)
    with pytest.raises(ConfigError, match="did you mean 'drit'"):
        load_config("cpu-demo", ["cmedl.translator=dirt"])
    with pytest.raises(ConfigError, match="lambda_vae"):
        load_config("cpu-demo", ["drit.lambda_vae=-1"])
    with pytest.raises(ConfigError, match="content_adv_mode"):
        load_config("cpu-demo", ["drit.content_adv_mode=maximal"])


# ------------------------------------------------------------------------ alternating updates
def test_generator_step_leaves_discriminators_and_segmenters_unchanged(method: CMEDL) -> None:
    name = method.own.translator
    fwd = method.forward_losses(make_batch(1))
    frozen = {k: snapshot(method.networks[k]) for k in (*D_NETS[name], "student_ct", "teacher_mr")}
    moving = {k: snapshot(method.networks[k]) for k in G_NETS[name]}
    method.translator.generator_step(fwd["loss_g"])
    for k, before in frozen.items():
        assert not changed(method.networks[k], before), k
        assert all(p.grad is None for p in method.networks[k].parameters()), f"{k} got a gradient in the G step"
    for k, before in moving.items():
        assert changed(method.networks[k], before), k
    method.segmentation_step(fwd)  # the retained graph still serves the S step


def test_discriminator_step_leaves_generators_and_encoders_unchanged(method: CMEDL) -> None:
    name = method.own.translator
    fwd = method.forward_losses(make_batch(2))
    frozen = {k: snapshot(method.networks[k]) for k in (*G_NETS[name], "student_ct", "teacher_mr")}
    moving = {k: snapshot(method.networks[k]) for k in D_NETS[name]}
    logs = method.translator.discriminator_step(fwd["translation"], fwd["ct"], fwd["mr"])
    assert set(logs) == {"d_mr", "d_ct", "loss_d"} | ({"d_content"} if name == "drit" else set())
    assert logs["loss_d"] == pytest.approx(sum(v for k, v in logs.items() if k != "loss_d"), rel=1e-6)
    for k, before in frozen.items():
        assert not changed(method.networks[k], before), k
    for k, before in moving.items():
        assert changed(method.networks[k], before), k


def test_training_step_logs_every_term_and_loss_g_is_their_weighted_sum(method: CMEDL) -> None:
    name = method.own.translator
    logs = method.training_step(make_batch(4))
    assert TERMS[name] | {"hint", "seg_pmri", "seg_ct", "seg_rmri", "loss_g", "loss_s", "loss_d"} <= set(logs)
    assert all(math.isfinite(v) for v in logs.values())
    c, lc = method.config.section(name), method.config.cmedl
    w = ({"adv_g": c.lambda_adv, "content_adv": c.lambda_content_adv, "kl": c.lambda_vae * c.vae_kl_weight,
          "vae_recon": c.lambda_vae, "cross_cycle": c.lambda_cc, "latent_reg": c.lambda_lr} if name == "drit" else
         {"adv_g": c.lambda_adv, "recon": c.lambda_recon, "kl": c.lambda_kl, "cycle": c.lambda_cycle,
          "kl_cycle": c.lambda_kl_cycle})
    expected = (sum(w[k] * logs[k] for k in TERMS[name]) + lc.lambda_hint * logs["hint"]
                + lc.lambda_seg * logs["seg_pmri"])
    assert logs["loss_g"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["drit", "unit"])
def test_bf16_autocast_step_is_finite(name: str) -> None:
    torch.manual_seed(0)
    logs = build_method(config(name, "training.precision=bf16"), "cpu").training_step(make_batch(9, b=1))
    assert TERMS[name] <= set(logs) and all(math.isfinite(v) for v in logs.values())


def test_shared_blocks_are_one_module_optimised_once(method: CMEDL) -> None:
    g1, g2 = method.networks["g_ct2mr"], method.networks["g_mr2ct"]
    if isinstance(g1, DRITTranslation):
        assert g1.shared is g2.shared and g1.encoder is not g2.encoder and g1.generator is not g2.generator
    else:
        assert g1.enc_shared is g2.enc_shared and g1.gen_shared is g2.gen_shared and g1.encoder is not g2.encoder
    params = [p for group in method.optimizers["g"].param_groups for p in group["params"]]
    assert len(params) == len({id(p) for p in params})
    nets = [method.networks[k] for k in G_NETS[method.own.translator]]
    assert {id(p) for p in params} == {id(p) for net in nets for p in net.parameters()}


# ------------------------------------------------------------------------ switches and weights
SWITCHES = [
    ("drit", "drit.use_adversarial=false", {"adv_g"}), ("drit", "drit.lambda_adv=0", {"adv_g"}),
    ("drit", "drit.use_content_adversarial=false", {"content_adv"}),
    ("drit", "drit.lambda_content_adv=0", {"content_adv"}),
    ("drit", "drit.use_vae=false", {"kl", "vae_recon"}), ("drit", "drit.lambda_vae=0", {"kl", "vae_recon"}),
    ("drit", "drit.vae_kl_weight=0", {"kl"}),
    ("drit", "drit.use_cross_cycle=false", {"cross_cycle"}), ("drit", "drit.lambda_cc=0", {"cross_cycle"}),
    ("drit", "drit.use_latent_regression=false", {"latent_reg"}), ("drit", "drit.lambda_lr=0", {"latent_reg"}),
    ("unit", "unit.use_adversarial=false", {"adv_g"}), ("unit", "unit.lambda_adv=0", {"adv_g"}),
    ("unit", "unit.use_vae=false", {"recon", "kl"}), ("unit", "unit.lambda_recon=0", {"recon"}),
    ("unit", "unit.lambda_kl=0", {"kl"}), ("unit", "unit.use_cycle=false", {"cycle", "kl_cycle"}),
    ("unit", "unit.lambda_cycle=0", {"cycle"}), ("unit", "unit.lambda_kl_cycle=0", {"kl_cycle"}),
]


@pytest.mark.parametrize(("name", "override", "removed"), SWITCHES)
def test_each_switch_and_zero_weight_removes_its_term(name: str, override: str, removed: set[str]) -> None:
    torch.manual_seed(0)
    m = build_method(config(name, override), "cpu")
    fwd = m.forward_losses(make_batch(5, b=1))
    assert set(fwd["translation"].terms) == TERMS[name] - removed
    assert set(fwd["translation"].weights) == TERMS[name] - removed
    assert torch.isfinite(fwd["loss_g"])


@pytest.mark.parametrize("name", ["drit", "unit"])
def test_without_adversarial_terms_there_is_no_discriminator_step(name: str) -> None:
    off = (["drit.use_adversarial=false", "drit.use_content_adversarial=false"] if name == "drit"
           else ["unit.use_adversarial=false"])
    torch.manual_seed(0)
    m = build_method(config(name, *off), "cpu")
    before = {k: snapshot(m.networks[k]) for k in D_NETS[name]}
    logs = m.training_step(make_batch(6))
    assert not {"d_ct", "d_mr", "d_content", "loss_d"} & set(logs)
    assert not any(changed(m.networks[k], b) for k, b in before.items())


# ------------------------------------------------------------------------ CMEDL gradients into the translator
@pytest.mark.parametrize("name", ["drit", "unit"])
def test_hint_and_pmri_segmentation_reach_encoder_and_generator(name: str) -> None:
    """With every translator term off, the G step still moves the CT encoder, the shared blocks and the
    MR generator (and DRIT's MR attribute encoder): the pseudo-MRI is differentiable through all of them."""
    off = ([f"drit.use_{k}=false" for k in ("adversarial", "content_adversarial", "vae", "cross_cycle",
                                             "latent_regression")] if name == "drit" else
           [f"unit.use_{k}=false" for k in ("adversarial", "vae", "cycle")])
    torch.manual_seed(0)
    m = build_method(config(name, *off), "cpu")
    fwd = m.forward_losses(make_batch(7))
    assert fwd["translation"].terms == {} and set(fwd["g_terms"]) == {"hint", "seg_pmri"}
    g = m.networks["g_ct2mr"]
    parts = {"ct encoder": g.encoder, "mr generator": g.generator,
             "shared": g.shared if name == "drit" else g.enc_shared}
    if name == "drit":
        parts["mr attribute encoder"] = m.networks["e_attr_mr"]
    for what in ("hint", "seg_pmri"):
        for part, net in parts.items():
            grads = torch.autograd.grad(fwd["g_terms"][what], list(net.parameters()), retain_graph=True,
                                        allow_unused=True)
            assert any(gr is not None and float(gr.abs().sum()) > 0 for gr in grads), f"{what} -> {part}"
    before = snapshot(m.networks["g_mr2ct"].generator)  # the CT generator plays no part in the pMRI
    m.translator.generator_step(fwd["loss_g"])
    assert not changed(m.networks["g_mr2ct"].generator, before)


@pytest.mark.parametrize("name", ["drit", "unit"])
def test_losses_fall_on_a_fixed_batch(name: str) -> None:
    torch.manual_seed(0)
    m = build_method(config(name, f"{name}.lr=1e-3"), "cpu")
    batch = make_batch(8)
    hist = [m.training_step(batch) for _ in range(10)]
    assert all(math.isfinite(v) for h in hist for v in h.values())
    recon = ("vae_recon", "cross_cycle") if name == "drit" else ("recon", "cycle")
    for k in (*recon, "loss_g", "seg_ct", "loss_s"):
        first, last = np.mean([h[k] for h in hist[:3]]), np.mean([h[k] for h in hist[-3:]])
        assert last < 0.9 * first if k in recon else last < first, (k, first, last)


# ------------------------------------------------------------------------ test-time translation and state
def test_drit_test_time_translation_uses_the_zero_attribute_at_any_size() -> None:
    torch.manual_seed(0)
    g = DRITTranslator.build_networks(config("drit").drit, ["g_ct2mr"])["g_ct2mr"].eval()
    x = torch.rand(2, 1, 30, 34) * 2 - 1
    with torch.no_grad():
        y = g(x)
        assert y.shape == x.shape and float(y.abs().max()) <= 1.0
        assert torch.equal(y, g(x))  # deterministic
        xp = torch.nn.functional.pad(x, (0, 2, 0, 2), mode="reflect")
        ref = g.decode(g.encode(xp), torch.zeros(2, g.attr_dim))[..., :30, :34]
        assert torch.allclose(y, ref, atol=1e-6)
        assert not torch.allclose(y, g(x, torch.ones(2, g.attr_dim)), atol=1e-4)  # the attribute matters


@pytest.mark.parametrize("name", ["drit", "unit"])
def test_state_dict_round_trip_gives_identical_next_step(name: str) -> None:
    cfg = config(name)
    torch.manual_seed(0)
    a = build_method(cfg, "cpu")
    a.training_step(make_batch(20))
    state = copy.deepcopy(a.state_dict())
    torch.manual_seed(123)
    b = build_method(cfg, "cpu")
    b.load_state_dict(state)
    assert b.networks["g_ct2mr"].encoder is not a.networks["g_ct2mr"].encoder
    rng = torch.get_rng_state()
    la = a.training_step(make_batch(21))
    torch.set_rng_state(rng)
    lb = b.training_step(make_batch(21))
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k] == pytest.approx(lb[k], abs=1e-6), k


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cmedl.data.phantom import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("phantom"), n_ct=5, n_cbct=0, n_mr=3, seed=0,
                           shape=(10, 48, 48), workers=1)


@pytest.mark.parametrize("name", ["drit", "unit"])
def test_checkpoint_generators_are_the_trained_translations(name: str) -> None:
    """``build_generator_from_checkpoint`` (``cmedl translate``) on a CMEDL checkpoint with this
    translator: each direction alone equals the method's network; ct2mr takes CT preprocessing."""
    cfg = config(name)
    torch.manual_seed(0)
    m = build_method(cfg, "cpu")
    m.training_step(make_batch(40))
    student, mr = cfg.preprocess_configs()
    ckpt = {"format": "cmedl-checkpoint/1", "method": "cmedl", "config": cfg.to_dict(),
            "preprocess": {"student": student.to_dict(), "mr": mr.to_dict()}, **m.state_dict()}
    x = make_batch(41)["ct"][:, :, :30, :27]  # any size
    m.eval()
    with torch.no_grad():
        for direction, modality in (("ct2mr", "ct"), ("mr2ct", "mr")):
            gen, pp = build_generator_from_checkpoint(ckpt, direction)
            assert pp.modality == modality and not gen.training
            assert torch.equal(gen(x), m.networks[f"g_{direction}"](x))


@pytest.mark.parametrize("name", ["drit", pytest.param("unit", marks=pytest.mark.slow)])
def test_trainer_checkpoint_translates_and_segments(name: str, phantom: Path, tmp_path: Path) -> None:
    """A run of ``cmedl`` with this translator writes a checkpoint whose ``g_ct2mr`` alone gives the
    method's test-time pMRI (``cmedl translate``) and whose student segments (``cmedl segment``)."""
    from cmedl.inference import segment_files
    from cmedl.inference.translate import translate_files
    from cmedl.io import read_volume
    from cmedl.training import train
    from cmedl.training.checkpoint import load_checkpoint

    r = train(config(name, "training.max_epochs=1"), phantom, out_dir=tmp_path / "run")
    ckpt = load_checkpoint(r.best_checkpoint)
    assert ckpt["config"]["cmedl"]["translator"] == name and name in ckpt["config"]
    assert set(G_NETS[name]) | set(D_NETS[name]) | {"student_ct", "teacher_mr"} == set(ckpt["networks"])
    gen, pp = build_generator_from_checkpoint(ckpt, "ct2mr")
    assert pp.modality == "ct" and not gen.training
    torch.manual_seed(0)
    m = build_method(config(name, "training.max_epochs=1"), "cpu")
    m.load_state_dict(ckpt)
    x = make_batch(30)["ct"]
    with torch.no_grad(), m.evaluating():
        assert torch.allclose(gen(x), m.networks["g_ct2mr"](x), atol=1e-6)
        back, mpp = build_generator_from_checkpoint(ckpt, "mr2ct")
        assert mpp.modality == "mr" and back(x).shape == x.shape
    cases = json.loads(phantom.read_text())["cases"]
    test_ct = next(phantom.parent / c["image"] for c in cases if c["split"] == "test" and c["modality"] == "ct")
    [pmri] = translate_files(r.best_checkpoint, [test_ct], tmp_path / "pmri", progress=False)
    [mask] = segment_files(r.best_checkpoint, [test_ct], tmp_path / "seg", progress=False, probabilities=True)
    ref, pm, mk = read_volume(test_ct), read_volume(pmri), read_volume(mask)
    for out in (pm, mk):
        assert out.array.shape == ref.array.shape and out.spacing == pytest.approx(ref.spacing)
    assert np.isfinite(pm.array).all() and pm.array.min() >= -1 and pm.array.max() <= 1 and pm.array.std() > 0
    assert set(np.unique(mk.array)) <= {0, 1}
    # the student alone segments at test time: the written probabilities are its own on the CT
    from cmedl.inference.segment import segment_volume
    from cmedl.methods.checkpoints import build_test_time_model

    model, spp, _ = build_test_time_model(ckpt, r.best_checkpoint)
    assert model.recipe.networks == ("student_ct",)
    direct = segment_volume(ref, model, spp, return_probabilities=True).probabilities.array
    prob = read_volume(tmp_path / "seg" / f"{Path(mask).name.removesuffix('.nii.gz')}_prob.nii.gz").array
    assert np.allclose(prob, direct, atol=1e-5)
