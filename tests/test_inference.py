"""Whole-volume inference: geometry kept exactly, known answers, batching, post-processing,
MC dropout, translation, and the ``cmedl segment`` / ``cmedl translate`` CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_shared
from torch import nn
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.preprocess import PreprocessConfig, ct_window
from cmedl.errors import InputError
from cmedl.inference import (
    case_name,
    largest_connected_component,
    postprocess_probabilities,
    segment_files,
    segment_volume,
    translate_volume,
)
from cmedl.nets.predict import fold_batchnorm, predict_slices
from cmedl.io import Volume, read_volume, write_volume
from cmedl.nets import ResnetGenerator, UNet2D
from cmedl.training.checkpoint import save_checkpoint
from cmedl.methods import load_config

OBLIQUE = (0.8, 0.0, 0.6, 0.0, 1.0, 0.0, -0.6, 0.0, 0.8)


class ScaledIdentity(nn.Module):
    """A "network" with a known output: ``logits = k * image`` (a fixed 1x1 convolution)."""

    stride = 1

    def __init__(self, k: float = 8.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(k)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def phantom_ct(shape: tuple[int, int, int] = (7, 37, 45), seed: int = 0) -> Volume:
    """Air around an elliptic body (0 HU) with lung-like (-800 HU) and dense (+200 HU) parts.

    Values stay far from -250 HU, where the default CT window maps to 0 (sigmoid 0.5)."""
    rng = np.random.default_rng(seed)
    _, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.42 * w)) ** 2 < 1
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[:, body] = 0
    arr[:, body & (rng.random((h, w)) < 0.3)] = -800
    arr[2:5, h // 2 - 3 : h // 2 + 3, w // 2 - 4 : w // 2 + 4] = 200
    return Volume(arr, spacing=(0.7, 0.9, 2.5), origin=(-12.0, 30.5, 101.0), direction=OBLIQUE)


def tiny_unet(dropout: float = 0.0, seed: int = 0) -> UNet2D:
    torch.manual_seed(seed)
    net = UNet2D(base_width=4, dropout=dropout)
    with torch.no_grad():  # non-trivial BN statistics, so folding BN is really exercised
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def assert_same_grid(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    assert a.spacing == pytest.approx(b.spacing, abs=1e-6)
    assert a.origin == pytest.approx(b.origin, abs=1e-6)
    assert a.direction == pytest.approx(b.direction, abs=1e-6)


def make_checkpoint(path: Path, *, with_generator: bool = False, dropout: float = 0.0) -> Path:
    """A cmedl-checkpoint/1 file with a width-4 U-Net student (and tiny generators)."""
    cfg = load_config("paper-ct", [f"training.method={'cmedl' if with_generator else 'ct-only'}",
                                   "model.seg_base_width=4", f"model.dropout={dropout}", "cyclegan.gen_base_width=4",
                                   "cyclegan.gen_n_blocks=1"])
    networks = {"student_ct": tiny_unet(dropout).state_dict()}
    if with_generator:
        torch.manual_seed(1)
        networks["g_ct2mr"] = ResnetGenerator(1, 1, 4, 1).state_dict()
        networks["g_mr2ct"] = ResnetGenerator(1, 1, 4, 1).state_dict()
    payload = {
        "method": cfg.training.method,
        "config": cfg.to_dict(),
        "preprocess": {
            "student": PreprocessConfig("ct").to_dict(),
            "mr": PreprocessConfig("mr").to_dict(),
        },
        "networks": networks,
        "optimizers": {},
        "epoch": 0,
    }
    return save_checkpoint(path, payload)


# ====================================================================== known answers
@pytest.mark.parametrize("crop_to_body", [True, False])
def test_known_answer_mask_and_probabilities(crop_to_body: bool) -> None:
    vol = phantom_ct()
    k = 8.0
    res = segment_volume(
        vol,
        ScaledIdentity(k),
        PreprocessConfig("ct", crop_to_body=crop_to_body),
        return_probabilities=True,
    )
    # logits = k * window(HU); p >= 0.5 <=> window(HU) >= 0 <=> HU >= -250
    expected = (vol.array >= -250).astype(np.uint8)
    assert res.mask.array.dtype == np.uint8
    np.testing.assert_array_equal(res.mask.array, expected)
    expected_p = 1.0 / (1.0 + np.exp(-k * ct_window(vol.array).astype(np.float64)))
    np.testing.assert_allclose(res.probabilities.array, expected_p, atol=1e-6)
    assert res.uncertainty is None
    assert_same_grid(res.mask, vol)
    assert_same_grid(res.probabilities, vol)


def test_threshold_moves_the_mask() -> None:
    vol = phantom_ct()
    # p = sigmoid(8 w): -800 HU -> w = -0.73 -> p ~ 0.003; 0 HU -> w = 0.33 -> p ~ 0.93; 200 HU -> p ~ 0.99
    res = segment_volume(vol, ScaledIdentity(8.0), PreprocessConfig("ct"), threshold=0.95)
    np.testing.assert_array_equal(res.mask.array, (vol.array >= 200).astype(np.uint8))


def test_geometry_anisotropic_resampled_non_multiple_of_16() -> None:
    vol = phantom_ct((5, 29, 51))
    cfg = PreprocessConfig("ct", in_plane_spacing_mm=1.3)  # resamples in-plane, then crops/pads
    res = segment_volume(vol, tiny_unet(), cfg, return_probabilities=True)
    assert_same_grid(res.mask, vol)
    assert_same_grid(res.probabilities, vol)
    assert set(np.unique(res.mask.array)) <= {0, 1}
    p = res.probabilities.array
    assert p.dtype == np.float32 and p.min() >= 0.0 and p.max() <= 1.0
    np.testing.assert_array_equal(res.mask.array, (p >= 0.5).astype(np.uint8))  # files always agree


def test_geometry_oblique_real_mri() -> None:
    path = require_shared("prostate_t2_mri", "test_0000_t2_tse_tra_4.nii.gz")
    vol = read_volume(path)
    assert not np.allclose(vol.direction, np.eye(3).ravel())  # really oblique
    cfg = PreprocessConfig("mr", in_plane_spacing_mm=2.0)
    res = segment_volume(vol, tiny_unet(), cfg, return_probabilities=True)
    assert_same_grid(res.mask, vol)
    assert_same_grid(res.probabilities, vol)
    assert res.probabilities.array.max() > 0.0


# ====================================================================== batching / speed tricks
def test_batch_size_and_memory_format_do_not_change_the_result() -> None:
    vol = phantom_ct((9, 33, 40))
    net = tiny_unet()
    cfg = PreprocessConfig("ct")
    ref = segment_volume(
        vol, net, cfg, batch_size=1, return_probabilities=True, channels_last=False
    )
    for bs in (2, 4, None):
        res = segment_volume(vol, net, cfg, batch_size=bs, return_probabilities=True)
        np.testing.assert_allclose(res.probabilities.array, ref.probabilities.array, atol=1e-5)
        np.testing.assert_array_equal(res.mask.array, ref.mask.array)


def test_fold_batchnorm_is_exact_and_leaves_the_caller_net_alone() -> None:
    import copy

    net = tiny_unet()
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        before = net(x)
    folded = copy.deepcopy(net)
    assert fold_batchnorm(folded) == 18  # 9 double-convolutions
    with torch.no_grad():
        torch.testing.assert_close(folded(x), before, atol=1e-5, rtol=1e-5)
    # predict_slices works on a copy: the caller's net still has its BN layers
    predict_slices(net, np.zeros((2, 32, 48), np.float32))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 18


def test_predict_slices_pads_once_to_the_stride() -> None:
    seen: list[tuple[int, ...]] = []

    class Probe(ScaledIdentity):
        stride = 16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return super().forward(x)

    img = np.random.default_rng(0).normal(size=(5, 20, 35)).astype(np.float32)
    out, sd = predict_slices(Probe(1.0), img, batch_size=2, activation=None)
    assert sd is None
    assert seen == [(2, 1, 32, 48), (2, 1, 32, 48), (1, 1, 32, 48)]
    np.testing.assert_allclose(out, img, atol=1e-6)


# ====================================================================== post-processing
def test_largest_component_keeps_the_biggest_blob() -> None:
    m = np.zeros((6, 20, 20), np.uint8)
    m[1:4, 2:6, 2:6] = 1  # 48 voxels
    m[2:5, 10:16, 10:16] = 1  # 108 voxels
    m[5, 19, 19] = 1
    out = largest_connected_component(m)
    expected = np.zeros_like(m)
    expected[2:5, 10:16, 10:16] = 1
    np.testing.assert_array_equal(out, expected)
    # diagonal neighbours join with 26- but not with 6-connectivity
    d = np.zeros((3, 3, 3), np.uint8)
    d[0, 0, 0] = d[1, 1, 1] = d[2, 2, 2] = 1
    assert largest_connected_component(d, connectivity=3).sum() == 3
    assert largest_connected_component(d, connectivity=1).sum() == 1
    assert largest_connected_component(np.zeros((2, 2, 2))).sum() == 0


def test_segment_volume_largest_component_and_fill_holes() -> None:
    arr = np.full((6, 32, 32), -1000, np.int16)
    arr[1:5, 4:14, 4:14] = 100  # big blob, with a hole
    arr[2:4, 8:10, 8:10] = -1000
    arr[2:4, 20:24, 20:24] = 100  # small blob
    vol = Volume(arr, spacing=(1.0, 1.0, 2.0))
    cfg = PreprocessConfig("ct", crop_to_body=False)
    plain = segment_volume(vol, ScaledIdentity(), cfg).mask.array
    assert plain[2, 21, 21] == 1 and plain[2, 8, 8] == 0
    cleaned = segment_volume(
        vol, ScaledIdentity(), cfg, largest_component=True, fill_holes=True
    ).mask.array
    expected = np.zeros_like(plain)
    expected[1:5, 4:14, 4:14] = 1
    np.testing.assert_array_equal(cleaned, expected)
    with pytest.raises(InputError, match="threshold"):
        postprocess_probabilities(np.zeros((1, 2, 2)), threshold=1.0)


# ====================================================================== MC dropout
def test_mc_dropout_sd_positive_with_dropout_zero_without() -> None:
    vol = phantom_ct((4, 32, 32))
    cfg = PreprocessConfig("ct")
    net = tiny_unet(dropout=0.5)
    state = torch.get_rng_state()
    with_do = segment_volume(vol, net, cfg, mc_dropout_samples=4, return_probabilities=True)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert with_do.uncertainty is not None and with_do.uncertainty.array.max() > 1e-4
    assert_same_grid(with_do.uncertainty, vol)
    again = segment_volume(vol, net, cfg, mc_dropout_samples=4, return_probabilities=True)
    np.testing.assert_array_equal(again.probabilities.array, with_do.probabilities.array)  # seeded
    without = segment_volume(
        vol, tiny_unet(dropout=0.0), cfg, mc_dropout_samples=3, return_probabilities=True
    )
    assert without.uncertainty is not None and float(np.abs(without.uncertainty.array).max()) == 0.0
    single = segment_volume(vol, tiny_unet(dropout=0.0), cfg, return_probabilities=True)
    np.testing.assert_allclose(without.probabilities.array, single.probabilities.array, atol=1e-6)


# ====================================================================== translation
def test_translate_identity_generator_gives_the_normalised_input() -> None:
    vol = phantom_ct((5, 30, 41))
    out = translate_volume(vol, ScaledIdentity(1.0), PreprocessConfig("ct"))
    assert_same_grid(out, vol)
    np.testing.assert_allclose(out.array, ct_window(vol.array), atol=1e-6)
    au = translate_volume(vol, ScaledIdentity(1.0), PreprocessConfig("ct"), scale="au")
    np.testing.assert_allclose(au.array, (ct_window(vol.array) + 1.0) * 500.0, atol=1e-3)
    torch.manual_seed(0)
    gen = translate_volume(
        vol, ResnetGenerator(1, 1, 4, 1).eval(), PreprocessConfig("ct", in_plane_spacing_mm=1.1)
    )
    assert_same_grid(gen, vol)
    assert gen.array.dtype == np.float32 and gen.array.min() >= -1.0 and gen.array.max() <= 1.0
    with pytest.raises(InputError, match="intensity scale"):
        translate_volume(vol, ScaledIdentity(), PreprocessConfig("ct"), scale="hu")


# ====================================================================== files and CLI
def test_case_name(tmp_path: Path) -> None:
    assert case_name(tmp_path / "lung_001.nii.gz") == "lung_001"
    assert case_name(tmp_path / "a.b.nrrd") == "a.b"
    (tmp_path / "series7").mkdir()
    assert case_name(tmp_path / "series7") == "series7"


def test_segment_files_and_dicom_folder(tmp_path: Path) -> None:
    from cmedl.io.dicom import write_dicom_series

    ckpt = make_checkpoint(tmp_path / "model.pt")
    vol = phantom_ct((4, 30, 34))
    nii = write_volume(vol, tmp_path / "in" / "case_a.nii.gz")
    dicom_dir = tmp_path / "in" / "case_b"
    write_dicom_series(vol, dicom_dir, modality="CT")
    out = segment_files(
        ckpt, [nii, dicom_dir], tmp_path / "out", probabilities=True, progress=False
    )
    assert [p.name for p in out] == ["case_a.nii.gz", "case_b.nii.gz"]
    mask_a, mask_b = read_volume(out[0]), read_volume(out[1])
    assert_same_grid(mask_a, vol)
    assert_same_grid(mask_b, vol)  # the DICOM series reads back on the same grid
    assert mask_a.array.dtype == np.uint8
    prob = read_volume(tmp_path / "out" / "case_a_prob.nii.gz")
    np.testing.assert_array_equal(mask_a.array, (prob.array >= 0.5).astype(np.uint8))
    np.testing.assert_array_equal(mask_a.array, mask_b.array)  # same image, same output
    prob_b = read_volume(tmp_path / "out" / "case_b_prob.nii.gz")
    assert prob.array.std() > 0
    np.testing.assert_allclose(prob_b.array, prob.array, atol=1e-6)
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_cli_segment_and_translate(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "model.pt", with_generator=True, dropout=0.5)
    vol = phantom_ct((4, 27, 35))
    inp = write_volume(vol, tmp_path / "ct.nrrd")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "segment",
            "--model",
            str(ckpt),
            str(inp),
            "--out",
            str(tmp_path / "seg"),
            "--probabilities",
            "--largest-component",
            "--batch-size",
            "2",
            "--mc-dropout",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert names == ["ct.nii.gz", "ct_prob.nii.gz", "ct_sd.nii.gz"]
    for name in names:
        assert_same_grid(read_volume(tmp_path / "seg" / name), vol)
    res = runner.invoke(
        app,
        [
            "translate",
            "--model",
            str(ckpt),
            str(inp),
            "--out",
            str(tmp_path / "tr"),
            "--scale",
            "au",
        ],
    )
    assert res.exit_code == 0, res.output
    pmri = read_volume(tmp_path / "tr" / "ct_pmri.nii.gz")
    assert_same_grid(pmri, vol)
    assert pmri.array.min() >= 0.0 and pmri.array.max() <= 1000.0


def test_cli_errors_are_one_line_and_leave_no_output(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "model.pt")
    good = write_volume(phantom_ct((3, 20, 20)), tmp_path / "good.nii.gz")
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a checkpoint")
    nan_ct = phantom_ct((3, 20, 20))
    nan_arr = nan_ct.array.astype(np.float32)
    nan_arr[1, 5, 5] = np.nan  # SimpleITK would read this NIfTI voxel as 0 HU
    nan_file = write_volume(nan_ct.with_array(nan_arr), tmp_path / "nan_ct.nii.gz")
    runner = CliRunner()
    cases = [
        (["segment", "--model", str(ckpt), str(nan_file), "--out"], "nan_ct.nii.gz: image has NaN"),
        (
            ["segment", "--model", str(ckpt), str(good), str(tmp_path / "missing.nii.gz"), "--out"],
            "missing.nii.gz",
        ),
        (["segment", "--model", str(bad_model), str(good), "--out"], "bad.pt"),
        (["segment", "--model", str(ckpt), str(good), "--device", "tpu", "--out"], "device"),
        (
            ["translate", "--model", str(ckpt), str(good), "--out"],
            "trains no ct2mr translator",
        ),  # ct-only: no generator
    ]
    for i, (args, needle) in enumerate(cases):
        out_dir = tmp_path / f"out{i}"
        res = runner.invoke(app, [*args, str(out_dir)])
        assert res.exit_code == 1, res.output
        err = res.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, err
        assert not out_dir.exists() or not any(out_dir.iterdir())


def test_resolve_device_names():
    import torch as _torch

    from cmedl.devices import resolve_device
    from cmedl.errors import ConfigError

    assert resolve_device("cpu") == _torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="did you mean 'cpu'"):
        resolve_device("cpuu")
    if not _torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_precision_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch):
    import torch as _torch

    from cmedl import devices
    from cmedl.errors import ConfigError

    cpu = _torch.device("cpu")
    monkeypatch.setattr(devices, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not devices.native_bf16(cpu) and devices.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(devices, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert devices.native_bf16(cpu) and devices.resolve_precision("auto", cpu) == "bf16"
    assert devices.resolve_precision("fp32", cpu) == "fp32" and devices.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="did you mean 'bf16'"):
        devices.resolve_precision("bf61", cpu)


def test_3d_networks_avoid_cpu_bf16_when_its_conv3d_gradients_are_wrong(monkeypatch: pytest.MonkeyPatch):
    import torch as _torch

    from cmedl import devices
    from cmedl.errors import ConfigError

    cpu = _torch.device("cpu")
    monkeypatch.setattr(devices, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(devices, "cpu_bf16_conv3d_grads_ok", lambda: False)
    assert devices.resolve_precision("auto", cpu, dims=3) == "fp32"
    assert devices.resolve_precision("auto", cpu, dims=2) == "bf16"  # 2D convolutions are right
    assert devices.resolve_precision("fp32", cpu, dims=3) == "fp32"
    with pytest.raises(ConfigError, match="wrong bf16 conv3d weight gradients"):
        devices.resolve_precision("bf16", cpu, dims=3)
    monkeypatch.setattr(devices, "cpu_bf16_conv3d_grads_ok", lambda: True)
    assert devices.resolve_precision("auto", cpu, dims=3) == "bf16"
    assert devices.resolve_precision("bf16", cpu, dims=3) == "bf16"


def test_conv3d_bf16_check_agrees_with_an_independent_measurement():
    """The check's verdict (one layer, 32 channels, 2 x 4 x 4) matches a different layer of the same
    kind (64 channels, 2 x 8 x 8, batch 2): both wrong on oneDNN 3.12 builds, both right elsewhere."""
    import torch as _torch

    from cmedl.devices import cpu_bf16_conv3d_grads_ok

    gen = _torch.Generator().manual_seed(5)
    x = _torch.randn(2, 64, 2, 8, 8, generator=gen)
    w = _torch.randn(64, 64, 3, 3, 3, generator=gen) * 0.03
    grads = []
    for bf16 in (False, True):
        weight = w.clone().requires_grad_()
        with _torch.autocast("cpu", dtype=_torch.bfloat16, enabled=bf16):
            y = _torch.nn.functional.conv3d(x, weight, None, 1, 1)
        (y.float() * _torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append(weight.grad)
    rel = float((grads[1] - grads[0]).norm() / grads[0].norm())
    assert (rel < 0.05) == cpu_bf16_conv3d_grads_ok(), f"relative error of bf16 weight gradients {rel:.3g}"


def test_keep_freed_host_memory_applies_on_glibc_only():
    import platform

    from cmedl import devices

    applied = devices.keep_freed_host_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert devices.keep_freed_host_memory() is applied  # applied once per process
