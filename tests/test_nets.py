"""Tests of cmedl.nets: parameter counts, shapes, padding, hints, gradients, GAN nets, VGG19, 3D U-Net."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cmedl.errors import ConfigError, InputError
from cmedl.nets import (
    MRRN,
    DenseFCN57,
    PatchDiscriminator,
    ResnetGenerator,
    UNet2D,
    UNet3D,
    VGG19Features,
    build_segmentation_net,
    build_segmentation_net_3d,
    check_hint_compatible,
    count_parameters,
    sliding_window_predict_3d,
)
from cmedl.nets.vgg import VGG19_CONVS, VGG19_LAYERS, vgg19_state_dict_keys

# small widths used for forward passes (the paper widths are only counted)
SMALL = {"unet": 4, "densefcn57": 2, "mrrn": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def expected_hints(name: str, w: int, hint: str, h: int, wd: int) -> list[tuple[int, int, int]]:
    """The documented hint shapes (C, H, W) of each network at width w for input h x wd."""

    def sz(s: int) -> tuple[int, int]:
        return (-(-h // s), -(-wd // s))

    if name == "unet":
        table = {
            "high": [(w, *sz(2)), (w, *sz(1))],
            "mid": [(8 * w, *sz(16))] * 2,
            "low": [(w, *sz(1))] * 2,
        }
    elif name == "densefcn57":
        table = {
            "high": [(19 * w, *sz(2)), (16 * w, *sz(1))],
            "mid": [(24 * w, *sz(32)), (4 * w, *sz(32))],
            "low": [(4 * w, *sz(1)), (w, *sz(1))],
        }
    else:  # mrrn
        table = {
            "high": [(2 * w, *sz(2)), (w, *sz(1))],
            "mid": [(8 * w, *sz(16))] * 2,
            "low": [(w, *sz(1))] * 2,
        }
    return table[hint]


# ---------------------------------------------------------------- parameter counts (no forward)


def test_unet_parameter_count_matches_paper_exactly() -> None:
    # bilinear decoder, conv with bias + BN: 13,394,177 (papers: 13.39 M)
    assert count_parameters(UNet2D(base_width=64)) == 13_394_177


def test_densefcn57_parameter_count_within_5_percent() -> None:
    n = count_parameters(build_segmentation_net("densefcn57"))  # paper width by default
    assert abs(n - 1.37e6) / 1.37e6 < 0.05, n


def test_mrrn_parameter_count_within_10_percent() -> None:
    n = count_parameters(build_segmentation_net("mrrn"))
    assert abs(n - 25e6) / 25e6 < 0.10, n


def test_cyclegan_parameter_counts_match_reference_implementation() -> None:
    # junyanz/pytorch-CycleGAN-and-pix2pix, RGB, ngf = ndf = 64: G 11.378 M, D 2.765 M
    assert count_parameters(ResnetGenerator(3, 3)) == 11_378_179
    assert count_parameters(PatchDiscriminator(3)) == 2_764_737


# ---------------------------------------------------------------- segmentation nets


@pytest.mark.parametrize("name", ["unet", "densefcn57", "mrrn"])
@pytest.mark.parametrize("hint", ["high", "mid", "low"])
def test_output_and_hint_shapes_at_several_sizes(name: str, hint: str) -> None:
    w = SMALL[name]
    net = build_segmentation_net(name, base_width=w, hint_layers=hint).eval()
    assert net.name == name
    for h, wd in [(64, 64), (97, 80), (40, 71)]:
        x = torch.randn(2, 1, h, wd)
        with torch.no_grad():
            logits, feats = net(x, return_features=True)
            if h == 40:
                assert torch.equal(net(x), logits)
        assert logits.shape == (2, 1, h, wd)
        assert [tuple(f.shape[1:]) for f in feats] == expected_hints(name, w, hint, h, wd)
        assert all(f.shape[0] == 2 for f in feats)


def test_paper_hint_shapes_at_256() -> None:
    # the papers' shapes (CHW) at 256 x 256 input: checked at full width with hint_shapes
    # (DenseFCN57 is small enough to run at full width; the others follow the same formulas)
    net = build_segmentation_net("densefcn57")
    assert net.hint_shapes((1, 1, 256, 256)) == [(228, 128, 128), (192, 256, 256)]
    assert expected_hints("unet", 64, "high", 256, 256) == [(64, 128, 128), (64, 256, 256)]
    assert expected_hints("mrrn", 64, "high", 256, 256) == [(128, 128, 128), (64, 256, 256)]


@pytest.mark.parametrize("name", ["unet", "densefcn57", "mrrn"])
def test_padding_keeps_top_left_alignment(name: str) -> None:
    """A 37 x 45 input gives the top-left crop of the output on its explicitly padded version."""
    net = build_segmentation_net(name, base_width=SMALL[name]).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 1, 37, 45)
    s = net.stride
    ph, pw = (-37) % s, (-45) % s
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect" if max(ph, pw) < 37 else "replicate")
    with torch.no_grad():
        a, fa = net(x, return_features=True)
        b, fb = net(xp, return_features=True)
    torch.testing.assert_close(a, b[..., :37, :45])
    torch.testing.assert_close(fa[1], fb[1][..., :37, :45])
    torch.testing.assert_close(fa[0], fb[0][..., : fa[0].shape[2], : fa[0].shape[3]])


@pytest.mark.parametrize("name", ["unet", "densefcn57", "mrrn"])
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    net = build_segmentation_net(name, base_width=SMALL[name]).train()
    logits, feats = net(torch.randn(2, 1, 32, 32), return_features=True)
    loss = logits.square().mean() + sum(f.mean() for f in feats)
    loss.backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert dead == []


def test_hint_gradient_alone_reaches_the_encoder() -> None:
    net = build_segmentation_net("unet", base_width=4)
    _, feats = net(torch.randn(2, 1, 32, 32), return_features=True)
    sum(f.square().mean() for f in feats).backward()
    assert net.inc.conv1[0].weight.grad is not None and net.inc.conv1[0].weight.grad.abs().sum() > 0
    assert net.outc.weight.grad is None  # the head is not on the hint path


def test_teacher_student_compatibility() -> None:
    t = build_segmentation_net("unet", base_width=4)
    s = build_segmentation_net("unet", base_width=4)
    assert check_hint_compatible(t, s, (1, 1, 32, 32)) == [(4, 16, 16), (4, 32, 32)]
    with pytest.raises(ConfigError, match=r"hint features differ: .*\(4, 16, 16\).*\(38, 16, 16\)"):
        check_hint_compatible(t, build_segmentation_net("densefcn57", base_width=2), (1, 1, 32, 32))
    with pytest.raises(ConfigError, match="hint_layers=mid"):
        check_hint_compatible(
            t, build_segmentation_net("unet", base_width=4, hint_layers="mid"), (1, 1, 32, 32)
        )


def test_unknown_names_give_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        build_segmentation_net("unett")
    with pytest.raises(ConfigError, match="did you mean 'densefcn57'"):
        build_segmentation_net("densefcn")
    with pytest.raises(ConfigError, match="did you mean 'high'"):
        build_segmentation_net("unet", base_width=4, hint_layers="hgh")
    with pytest.raises(ConfigError, match="3D"):
        build_segmentation_net("unet3d", dims=2)
    with pytest.raises(ConfigError):
        build_segmentation_net("unet", dropout=1.5)


def test_construction_is_deterministic_from_the_seed() -> None:
    torch.manual_seed(3)
    a = build_segmentation_net("mrrn", base_width=4).state_dict()
    torch.manual_seed(3)
    b = build_segmentation_net("mrrn", base_width=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cls", [UNet2D, DenseFCN57, MRRN])
def test_mc_dropout_only_switches_dropout_on(cls: type) -> None:
    torch.manual_seed(0)
    net = cls(base_width=4, dropout=0.5).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        assert net.enable_mc_dropout() == 2
        bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        stats = bn.running_mean.clone()
        assert not torch.equal(net(x), net(x))
        assert torch.equal(bn.running_mean, stats)  # BN stays in eval
    assert cls(base_width=4).enable_mc_dropout() == 0


# ---------------------------------------------------------------- CycleGAN nets


@pytest.mark.parametrize("size", [(64, 64), (66, 70), (97, 45)])
def test_generator_shape_and_range(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(base_width=4, n_blocks=2)
    x = 50.0 * torch.randn(2, 1, *size)  # large inputs saturate tanh but never leave [-1, 1]
    y = g(x)
    assert y.shape == x.shape
    assert y.min() >= -1.0 and y.max() <= 1.0
    assert y.std() > 0


def test_generator_init_is_normal_0_002() -> None:
    torch.manual_seed(0)
    w = ResnetGenerator().model[1].weight
    assert abs(w.mean().item()) < 0.002 and abs(w.std().item() - 0.02) < 0.002


def test_discriminator_receptive_field_is_70() -> None:
    d = PatchDiscriminator(base_width=4, norm="batch").eval()  # eval BN: no coupling across pixels
    assert d.receptive_field() == 70
    x = torch.randn(1, 1, 160, 160, requires_grad=True)
    out = d(x)
    assert out.shape == (1, 1, 18, 18)  # 160 / 8 - 2
    out[0, 0, 9, 9].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert int(rows.max() - rows.min() + 1) == 70 and int(cols.max() - cols.min() + 1) == 70
    assert PatchDiscriminator(base_width=4)(torch.randn(1, 1, 33, 47)).shape == (1, 1, 2, 3)


def test_discriminator_norm_placement() -> None:
    d = PatchDiscriminator(base_width=4, norm="instance")
    kinds = [type(m).__name__ for m in d.model]
    assert kinds[:2] == ["Conv2d", "LeakyReLU"]  # no norm after the first layer
    assert kinds[-1] == "Conv2d" and kinds.count("InstanceNorm") == 3
    with pytest.raises(ConfigError, match="did you mean 'batch'"):
        PatchDiscriminator(norm="batchh")


# ---------------------------------------------------------------- VGG19


def test_vgg_layer_indices_are_torchvisions() -> None:
    assert VGG19_LAYERS["conv1_1"] == 0 and VGG19_LAYERS["conv3_4"] == 16
    assert VGG19_LAYERS["conv4_1"] == 19 and VGG19_LAYERS["conv5_4"] == 34
    assert len(VGG19_CONVS) == 16


def _synthetic_state_dict(prefix: str = "features.") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}
    for idx, cin, cout in VGG19_CONVS:
        sd[f"{prefix}{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"{prefix}{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    return sd


@pytest.mark.parametrize("prefix", ["features.", ""])
def test_vgg_loads_torchvision_style_state_dict(tmp_path: Path, prefix: str) -> None:
    sd = _synthetic_state_dict(prefix)
    assert [
        k for k in sd if k.startswith(prefix) and "classifier" not in k
    ] == vgg19_state_dict_keys(prefix)
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    vgg = VGG19Features(path, layers=("conv1_2", "conv3_4", "conv4_1"))
    assert vgg.pretrained
    assert torch.equal(vgg.features[19].weight, sd[f"{prefix}19.weight"])
    assert len(vgg.features) == 21  # runs only up to relu4_1
    assert all(not p.requires_grad for p in vgg.parameters())
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    out = vgg(x)
    assert list(out) == ["conv1_2", "conv3_4", "conv4_1"]
    assert out["conv1_2"].shape == (2, 64, 32, 32) and out["conv4_1"].shape == (2, 512, 4, 4)
    assert all(t.min() >= 0 for t in out.values())  # taps after ReLU
    out["conv4_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the image


def test_vgg_input_normalisation_known_answer() -> None:
    vgg = VGG19Features(layers=("conv1_1",))
    x = torch.full((1, 1, 2, 2), -1.0)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(vgg.normalize(x)[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(vgg.normalize(-x)[0, :, 0, 0], (1 - mean) / std)


def test_vgg_fallback_is_deterministic_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cmedl.nets.vgg"):
        a = VGG19Features(layers=("conv2_1",))
    assert "random" in caplog.text and not a.pretrained
    torch.manual_seed(123)  # the global seed must not matter
    b = VGG19Features(layers=("conv2_1",))
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(a(x)["conv2_1"], b(x)["conv2_1"], rtol=0, atol=0)
    pre = VGG19Features(layers=("conv2_1",), pre_relu=True)(x)["conv2_1"]
    assert pre.min() < 0  # pre-ReLU taps keep negative values
    torch.testing.assert_close(pre.clamp_min(0), a(x)["conv2_1"])


def test_vgg_bad_files_raise_input_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=str(garbage)):
        VGG19Features(garbage)
    with pytest.raises(InputError, match="not found"):
        VGG19Features(tmp_path / "missing.pth")
    sd = _synthetic_state_dict()
    del sd["features.16.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(sd, partial)
    with pytest.raises(InputError, match=r"partial.pth: .*missing.*features.16.weight"):
        VGG19Features(partial)
    sd = _synthetic_state_dict()
    sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    wrong = tmp_path / "wrong.pth"
    torch.save(sd, wrong)
    with pytest.raises(InputError, match="shape"):
        VGG19Features(wrong)
    with pytest.raises(ConfigError, match="did you mean 'conv3_3'"):
        VGG19Features(layers=("conv3_33",))


# ---------------------------------------------------------------- 3D U-Net


@pytest.mark.parametrize("levels", [3, 4])
def test_unet3d_shapes(levels: int) -> None:
    net = (
        build_segmentation_net_3d("unet3d", base_width=4)
        if levels == 4
        else UNet3D(base_width=4, levels=3)
    )
    assert net.stride == 2**levels and net.dims == 3
    for shape in [(16, 32, 32), (13, 30, 37)]:
        x = torch.randn(1, 1, *shape)
        logits, feats = net(x, return_features=True)
        assert logits.shape == (1, 1, *shape)
        assert [tuple(f.shape[1:]) for f in feats] == [
            (4, *[-(-s // 2) for s in shape]),
            (4, *shape),
        ]
    with pytest.raises(ValueError, match="5D"):
        net(torch.randn(1, 1, 16, 16))


def test_sliding_window_matches_direct_call_and_covers_volume() -> None:
    torch.manual_seed(0)
    net = UNet3D(base_width=4, levels=3).train()
    vol = torch.randn(16, 24, 24)
    out = sliding_window_predict_3d(net, vol, (16, 24, 24), overlap=0.25)
    assert net.training  # mode restored
    with torch.no_grad():
        direct = net.eval()(vol[None, None])
    torch.testing.assert_close(out, direct, rtol=1e-4, atol=1e-5)
    big = sliding_window_predict_3d(net, torch.randn(1, 12, 20, 30), (8, 16, 16), overlap=0.25)
    assert big.shape == (1, 1, 12, 20, 30) and torch.isfinite(big).all()
    with pytest.raises(ConfigError):
        sliding_window_predict_3d(net, vol, (8, 16), overlap=0.25)


@pytest.mark.parametrize("name", ["unet", "densefcn57", "mrrn", "unet3d"])
def test_output_prior_sets_the_logit_bias(name):
    import math

    from cmedl.errors import ConfigError
    from cmedl.nets import build_segmentation_net

    net = build_segmentation_net(name, base_width=4, output_prior=0.05)
    assert torch.allclose(net.output_conv.bias.detach(), torch.tensor(math.log(0.05 / 0.95)))
    default = build_segmentation_net(name, base_width=4, output_prior=None)
    assert default.output_conv.bias.detach().abs().max() < 1.0  # PyTorch's small uniform init
    with pytest.raises(ConfigError, match="output_prior"):
        build_segmentation_net(name, base_width=4, output_prior=1.5)


def test_cyclegan_outputs_do_not_depend_on_the_batch() -> None:
    """CMEDL batches G_CM(CT) with G_CM(fake CT) and D(real) with D(fake): exact only with instance norm."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 1, 32, 32), torch.randn(2, 1, 32, 32) * 0.5 + 0.3
    for net in (ResnetGenerator(1, 1, 8, 2).train(), PatchDiscriminator(1, 8, 2).train()):
        together = net(torch.cat([a, b]))
        torch.testing.assert_close(together, torch.cat([net(a), net(b)]), rtol=1e-4, atol=1e-5)
    bn = ResnetGenerator(1, 1, 8, 2, norm="batch").train()  # batch norm would break the shortcut
    assert not torch.allclose(bn(torch.cat([a, b]))[:3], bn(a), atol=1e-3)


def test_instance_norm_equals_torch_instance_norm() -> None:
    from cmedl.nets.cyclegan import InstanceNorm

    x = torch.randn(3, 5, 9, 7, requires_grad=True) * 3 + 1
    g = torch.randn(3, 5, 9, 7)
    ours, ref = InstanceNorm(5)(x), torch.nn.InstanceNorm2d(5, affine=False, track_running_stats=False)(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0], rtol=1e-4, atol=1e-5)
    assert InstanceNorm(5).state_dict() == {}
    unbatched = InstanceNorm(5)(x[0])
    torch.testing.assert_close(unbatched, ref[0], rtol=1e-5, atol=1e-5)
