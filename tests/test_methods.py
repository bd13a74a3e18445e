"""Methods: CMEDL's alternating G/D/S updates, loss switches, hint detach, ct-only overfit, model loading."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cmedl.errors import ConfigError, InputError
from cmedl.methods import (
    CMEDL,
    CTOnly,
    ImagePool,
    build_generator_from_checkpoint,
    build_method,
    build_student_from_checkpoint,
)
from cmedl.methods import load_config

P = 32  # patch side (pixels)

#: tiny networks: every width 4, generator with one residual block, cheap contextual layer
TINY = [
    "model.seg_base_width=4", "cyclegan.gen_base_width=4", "cyclegan.gen_n_blocks=1", "cyclegan.disc_base_width=4",
    "cyclegan.disc_n_layers=2", f"data.patch_size={P}", "training.batch_size=2", "data.samples_per_epoch=4",
    "cyclegan.contextual_layers=[conv1_2]", "cyclegan.contextual_max_positions=64", "training.device=cpu", "training.precision=fp32",
]


def tiny_config(*overrides: str, method: str = "cmedl"):
    return load_config("cpu-demo", [*TINY, f"training.method={method}", *overrides])


def make_batch(seed: int = 0, b: int = 2) -> dict[str, torch.Tensor]:
    """Unpaired batch: CT-like and MRI-like images with a bright disc 'tumour' and its mask."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    out: dict[str, list[torch.Tensor]] = {"ct": [], "ct_label": [], "mr": [], "mr_label": []}
    for _ in range(b):
        for mod in ("ct", "mr"):
            cy, cx = (torch.randint(8, P - 8, (2,), generator=g)).tolist()
            r = float(torch.randint(3, 6, (), generator=g))
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
            base = -0.6 if mod == "ct" else -0.2
            img = base + 0.9 * mask + 0.1 * torch.randn(P, P, generator=g)
            out[mod].append(img.clamp(-1, 1)[None])
            out[f"{mod}_label"].append(mask[None])
    batch = {k: torch.stack(v) for k, v in out.items()}
    batch["mr_has_label"] = torch.ones(b, dtype=torch.bool)
    return batch


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p.detach(), b) for p, b in zip(module.parameters(), before, strict=True))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def method(one_thread) -> CMEDL:
    torch.manual_seed(0)
    m = build_method(tiny_config(), "cpu")
    assert isinstance(m, CMEDL)
    return m


# ------------------------------------------------------------------------ alternating updates
def test_generator_step_leaves_discriminators_and_segmenters_unchanged(method: CMEDL) -> None:
    fwd = method.forward_losses(make_batch(1))
    d = {k: snapshot(method.networks[k]) for k in ("d_ct", "d_mr", "student_ct", "teacher_mr")}
    g = {k: snapshot(method.networks[k]) for k in ("g_ct2mr", "g_mr2ct")}
    method.translator.generator_step(fwd["loss_g"])
    for k, before in d.items():
        assert not changed(method.networks[k], before), k
        assert all(p.grad is None for p in method.networks[k].parameters()), f"{k} got a gradient in the G step"
    for k, before in g.items():
        assert changed(method.networks[k], before), k
    method.segmentation_step(fwd)  # the retained graph still serves the S step
    assert not changed(method.networks["d_mr"], d["d_mr"])


def test_discriminator_step_leaves_generators_unchanged(method: CMEDL) -> None:
    fwd = method.forward_losses(make_batch(2))
    g = {k: snapshot(method.networks[k]) for k in ("g_ct2mr", "g_mr2ct", "student_ct", "teacher_mr")}
    d = {k: snapshot(method.networks[k]) for k in ("d_ct", "d_mr")}
    logs = method.translator.discriminator_step(fwd["translation"], fwd["ct"], fwd["mr"])
    assert set(logs) == {"d_mr", "d_ct", "loss_d"}
    for k, before in g.items():
        assert not changed(method.networks[k], before), k
    for k, before in d.items():
        assert changed(method.networks[k], before), k
    # the pool received the (detached) fakes
    assert len(method.translator.pools["mr"].images) > 0 and not method.translator.pools["mr"].images[0].requires_grad


def test_segmentation_step_moves_only_teacher_and_student(method: CMEDL) -> None:
    fwd = method.forward_losses(make_batch(3))
    others = {k: snapshot(method.networks[k]) for k in ("g_ct2mr", "g_mr2ct", "d_ct", "d_mr")}
    seg = {k: snapshot(method.networks[k]) for k in ("student_ct", "teacher_mr")}
    method.segmentation_step(fwd)
    for k, before in others.items():
        assert not changed(method.networks[k], before), k
    for k, before in seg.items():
        assert changed(method.networks[k], before), k


def test_training_step_logs_every_term(method: CMEDL) -> None:
    logs = method.training_step(make_batch(4))
    expected = {"adv_g", "cycle", "contextual", "hint", "seg_pmri", "seg_ct", "seg_rmri", "loss_g", "loss_s",
                "d_mr", "d_ct", "loss_d"}
    assert set(logs) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    lc, cg = method.config.cmedl, method.config.cyclegan
    # loss_s = lambda_hint hint + seg_ct + seg_pmri + seg_rmri; loss_g uses all the lambdas
    assert logs["loss_s"] == pytest.approx(lc.lambda_hint * logs["hint"] + logs["seg_ct"] + logs["seg_pmri"] + logs["seg_rmri"], rel=1e-5)
    assert logs["loss_g"] == pytest.approx(
        cg.lambda_adv * logs["adv_g"] + cg.lambda_cycle * logs["cycle"] + cg.lambda_contextual * logs["contextual"]
        + lc.lambda_hint * logs["hint"] + lc.lambda_seg * logs["seg_pmri"], rel=1e-5)


# ------------------------------------------------------------------------ switches (Table V)
@pytest.mark.parametrize(
    ("switch", "term"),
    [("use_contextual", "contextual"), ("use_cycle", "cycle"), ("use_hint", "hint"),
     ("use_seg_pmri", "seg_pmri"), ("use_seg_real_mri", "seg_rmri"), ("use_adversarial", "adv_g")],
)
def test_each_switch_removes_its_term(switch: str, term: str) -> None:
    torch.manual_seed(0)
    m = build_method(tiny_config(f"loss.{switch}=false"), "cpu")
    logs = m.training_step(make_batch(5))
    assert term not in logs
    if switch == "use_contextual":
        assert m.translator.contextual is None  # no VGG at all
    if switch == "use_adversarial":
        assert "loss_d" not in logs


def test_cycle_and_adversarial_off_cut_the_mr2ct_generator() -> None:
    torch.manual_seed(0)
    m = build_method(tiny_config("cyclegan.use_cycle=false", "cyclegan.use_adversarial=false"), "cpu")
    before = snapshot(m.networks["g_mr2ct"])
    before_ct2mr = snapshot(m.networks["g_ct2mr"])
    m.training_step(make_batch(6))
    assert not changed(m.networks["g_mr2ct"], before)  # its only gradient paths are gone
    assert changed(m.networks["g_ct2mr"], before_ct2mr)  # still moved by CX, hint and L_seg^pM


def test_only_hint_reaches_the_generator_and_hint_off_leaves_it() -> None:
    only = ["cyclegan.use_cycle=false", "cyclegan.use_adversarial=false", "cyclegan.use_contextual=false",
            "cmedl.use_seg_pmri=false"]
    for hint, expect in (("true", True), ("false", False)):
        torch.manual_seed(0)
        m = build_method(tiny_config(*only, f"cmedl.use_hint={hint}"), "cpu")
        before = snapshot(m.networks["g_ct2mr"])
        m.training_step(make_batch(7))
        assert changed(m.networks["g_ct2mr"], before) is expect, hint


@pytest.mark.parametrize(
    ("hint", "mutual", "pmri", "rmri", "teacher_moves"),
    [
        (False, True, False, False, False),  # no loss reaches the teacher
        (True, False, False, False, False),  # hint detached from the teacher: one-way distillation
        (True, True, False, False, True),  # mutual hint moves the teacher
        (False, True, True, False, True),  # L_seg^pM
        (False, True, False, True, True),  # L_seg^rM
    ],
)
def test_teacher_gradient_paths(hint: bool, mutual: bool, pmri: bool, rmri: bool, teacher_moves: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_config("cyclegan.use_contextual=false", f"cmedl.use_hint={hint}", f"cmedl.hint_to_teacher={mutual}",
                      f"cmedl.use_seg_pmri={pmri}", f"cmedl.use_seg_real_mri={rmri}")
    m = build_method(cfg, "cpu")
    teacher, student = snapshot(m.networks["teacher_mr"]), snapshot(m.networks["student_ct"])
    m.training_step(make_batch(8))
    assert changed(m.networks["teacher_mr"], teacher) is teacher_moves
    assert changed(m.networks["student_ct"], student)


def test_unlabelled_mri_gives_no_real_mri_term() -> None:
    torch.manual_seed(0)
    m = build_method(tiny_config("cyclegan.use_contextual=false"), "cpu")
    batch = make_batch(9)
    batch["mr_has_label"] = torch.zeros(2, dtype=torch.bool)
    assert "seg_rmri" not in m.training_step(batch)


def test_bf16_autocast_step_runs() -> None:
    torch.manual_seed(0)
    m = build_method(tiny_config("cyclegan.use_contextual=false", "training.precision=bf16"), "cpu")
    logs = m.training_step(make_batch(10))
    assert all(math.isfinite(v) for v in logs.values())
    assert next(m.student.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------ ct-only
def test_ct_only_overfits_one_batch() -> None:
    """A tiny U-Net memorises one fixed batch of tumour slices (Dice > 0.9 in eval mode)."""
    torch.manual_seed(0)
    cfg = tiny_config("model.seg_base_width=8", "optim.lr_segmentation=0.01", method="ct-only")
    m = build_method(cfg, "cpu")
    assert isinstance(m, CTOnly) and set(m.networks) == {"student_ct"}
    b = make_batch(11, b=4)
    batch = {"image": b["ct"], "label": b["ct_label"]}
    first = m.training_step(batch)["seg_ct"]
    for _ in range(60):
        last = m.training_step(batch)["seg_ct"]
    assert last < first
    v = m.validation_step(batch)
    dice = 2 * v["intersection"] / (v["pred_sum"] + v["label_sum"])
    assert dice > 0.9, dice


# ------------------------------------------------------------------------ state and checkpoints
def _payload(m, cfg) -> dict:
    s, mr = cfg.preprocess_configs()
    return {"format": "cmedl-checkpoint/1", "method": m.name, "config": cfg.to_dict(),
            "preprocess": {"student": s.to_dict(), "mr": mr.to_dict()}, **m.state_dict(), "epoch": 1,
            "global_step": m.global_step}


def test_state_dict_round_trip_gives_identical_next_step() -> None:
    cfg = tiny_config("cyclegan.pool_size=2")
    torch.manual_seed(0)
    a = build_method(cfg, "cpu")
    for i in range(3):  # fill the pools past their size so the pool RNG matters
        a.training_step(make_batch(20 + i))
    state = copy.deepcopy(a.state_dict())
    torch.manual_seed(123)
    b = build_method(cfg, "cpu")
    b.load_state_dict(state)
    rng = torch.get_rng_state()
    la = a.training_step(make_batch(30))
    torch.set_rng_state(rng)
    lb = b.training_step(make_batch(30))
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k] == pytest.approx(lb[k], abs=1e-6), k


def test_build_student_and_generator_from_checkpoint() -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    m = build_method(cfg, "cpu")
    m.training_step(make_batch(40))
    ckpt = _payload(m, cfg)
    net, pp = build_student_from_checkpoint(ckpt)
    assert not net.training and pp.modality == "ct"
    x = make_batch(41)["ct"]
    with torch.no_grad():
        m.eval()
        assert torch.allclose(net(x), m.student(x))
        gen, gpp = build_generator_from_checkpoint(ckpt, "ct2mr")
        assert gpp.modality == "ct" and torch.allclose(gen(x), m.networks["g_ct2mr"](x))
        _, mpp = build_generator_from_checkpoint(ckpt, "mr2ct")
        assert mpp.modality == "mr"
    with pytest.raises(InputError, match="did you mean 'ct2mr'"):
        build_generator_from_checkpoint(ckpt, "ct2mri")


def test_ct_only_checkpoint_has_no_generator() -> None:
    cfg = tiny_config(method="ct-only")
    m = build_method(cfg, "cpu")
    ckpt = _payload(m, cfg)
    with pytest.raises(InputError, match="method 'ct-only' trains no ct2mr translator"):
        build_generator_from_checkpoint(ckpt)
    net, _ = build_student_from_checkpoint(ckpt)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in m.student.parameters())


def test_unknown_method_is_a_config_error() -> None:
    cfg = tiny_config()
    cfg.training.method = "cmdl"
    with pytest.raises(ConfigError, match="did you mean 'cmedl'"):
        build_method(cfg, "cpu")


def test_image_pool_fills_then_mixes_and_round_trips() -> None:
    pool = ImagePool(size=3, seed=0)
    first = torch.arange(3.0).reshape(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned unchanged
    state = copy.deepcopy(pool.state_dict())
    new = torch.full((8, 1, 1, 1), 9.0)
    out = pool.query(new)
    assert out.shape == new.shape
    assert 0 < int((out != 9.0).sum()) < 8  # about half come from the pool
    clone = ImagePool(size=1, seed=5)
    clone.load_state_dict(state)
    assert torch.equal(clone.query(new), out)
    assert torch.equal(ImagePool(size=0).query(new), new)


def _is_channels_last(net: torch.nn.Module) -> bool:
    w = next(p for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1)
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@pytest.mark.parametrize(("setting", "seg_cl", "gan_cl"), [("auto", True, False), ("true", True, True),
                                                           ("false", False, False)])
def test_channels_last_setting_picks_the_networks(setting: str, seg_cl: bool, gan_cl: bool) -> None:
    m = build_method(tiny_config(f"training.channels_last={setting}"), "cpu")
    for name, net in m.networks.items():
        want = seg_cl if name in ("student_ct", "teacher_mr") else gan_cl
        assert _is_channels_last(net) == want, name
    logs = m.training_step(make_batch())
    assert all(math.isfinite(v) for v in logs.values())


def test_channels_last_auto_gives_the_same_step_as_contiguous() -> None:
    out = {}
    for setting in ("auto", "false"):
        torch.manual_seed(0)
        m = build_method(tiny_config(f"training.channels_last={setting}"), "cpu")
        out[setting] = [m.training_step(make_batch(i)) for i in range(2)]
    for a, b in zip(out["auto"], out["false"], strict=True):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-4), k


def test_channels_last_rejects_unknown_values() -> None:
    with pytest.raises(ConfigError, match="training.channels_last"):
        tiny_config("training.channels_last=sometimes")
    assert tiny_config("training.channels_last=yes").training.channels_last is True
    cfg = tiny_config()
    cfg.training.channels_last = "true"  # a string set in code, not parsed from YAML/CLI
    with pytest.raises(ConfigError, match="expected true, false or auto"):
        cfg.validate()
    assert tiny_config().training.channels_last == "auto"


def test_resume_into_another_memory_layout_keeps_the_adam_moments() -> None:
    # a checkpoint from a contiguous run loaded into channels_last networks: the Adam moments must follow
    # the parameters' layout (the fused CPU kernel reads parameter, gradient and moments as flat memory)
    torch.manual_seed(0)
    a = build_method(tiny_config("training.channels_last=false"), "cpu")
    for i in range(2):
        a.training_step(make_batch(40 + i))
    state = copy.deepcopy(a.state_dict())
    students = {}
    for setting in ("false", "auto"):
        b = build_method(tiny_config(f"training.channels_last={setting}"), "cpu")
        b.load_state_dict(copy.deepcopy(state))
        opt = b.optimizers["s"]
        for p, st in opt.state.items():
            assert st["exp_avg"].stride() == p.stride() and st["exp_avg_sq"].stride() == p.stride()
        for p in b.networks["student_ct"].parameters():  # same logical gradient in each layout
            p.grad = torch.linspace(-1, 1, p.numel()).reshape(p.shape).contiguous(
                memory_format=torch.channels_last if p.ndim == 4 and setting == "auto" else torch.contiguous_format)
        for p in b.networks["teacher_mr"].parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        students[setting] = [p.detach().clone() for p in b.networks["student_ct"].parameters()]
    assert any(p.ndim == 4 and not p.is_contiguous() for p in build_method(tiny_config(), "cpu").student.parameters())
    for x, y in zip(students["false"], students["auto"], strict=True):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
