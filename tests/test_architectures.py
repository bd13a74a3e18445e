"""Architectures in the methods: every 2D net trains in cmedl and ct-only, hint-layer options, per-arch
widths, name checks, and the 3D U-Net baseline (3D patches, ct-only-3d training, sliding-window segment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.manifest import Manifest
from cmedl.errors import ConfigError
from cmedl.io import read_volume
from cmedl.methods import CTOnly3D, build_method, build_student_from_checkpoint
from cmedl.nets import (
    SEGMENTATION_NETS_2D,
    build_segmentation_net,
    check_hint_compatible,
)
from cmedl.training.checkpoint import load_checkpoint
from torch.utils.data import default_collate

from cmedl.config import TrainConfig
from cmedl.methods import get_method, load_config, parse_config
from cmedl.training.data import build_training_data

P = 32  # 2D patch side (pixels)
P3 = [16, 16, 16]  # 3D patch (z, y, x) voxels (small: the phantom tumours are ~100 voxels)
SHAPE = (16, 48, 48)  # phantom volumes (z, y, x)

#: tiny networks (seg width 4 = U-Net/MRRN first level, DenseFCN57 growth rate), cheap contextual layer
TINY = [
    "model.seg_base_width=4", "cyclegan.gen_base_width=4", "cyclegan.gen_n_blocks=1", "cyclegan.disc_base_width=4",
    "cyclegan.disc_n_layers=2", f"data.patch_size={P}", "training.batch_size=2", "data.samples_per_epoch=16",
    "data.val_samples=2", "cyclegan.contextual_layers=[conv1_2]", "cyclegan.contextual_max_positions=64",
    "training.device=cpu", "training.precision=fp32", "training.progress=false", "optim.lr_segmentation=3e-3", "augmentation.enabled=false",
    "data.tumour_fraction=1.0",
]
TINY_3D = [
    "model.seg_base_width=4", f"data.patch_size_3d={P3}", "data.modality=ct", "training.batch_size=2",
    "data.samples_per_epoch=4", "data.val_samples=2", "training.device=cpu", "training.precision=fp32", "training.progress=false",
    "optim.lr_segmentation=3e-3", "data.tumour_fraction=1.0",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 CT patients (train/val/test) + 2 other MRI patients, 16x48x48 voxels."""
    from cmedl.data.phantom import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("phantom"), n_ct=5, n_cbct=0, n_mr=2, seed=0,
                           shape=SHAPE, workers=1)


def fixed_batch(config: TrainConfig, manifest: Path, unpaired: bool, dims: int = 2) -> dict:
    """Two training samples of the trainer's own datasets (tumour-centred patches): the two with the
    most tumour among the first 16 (the 48x48 phantom's tumours are small)."""
    data = build_training_data(config, get_method(config.training.method).batch_kind, manifest)
    items = [data.train[i] for i in range(min(16, len(data.train)))]
    key = "ct_label" if unpaired else "label"
    items.sort(key=lambda it: -float(it[key].sum()))
    return default_collate(items[:2])


def train_steps(method, batch: dict, key: str, n: int = 10) -> list[float]:
    method.train()
    return [method.training_step(batch)[key] for _ in range(n)]


# ------------------------------------------------------------------------------ names and widths
def test_unknown_arch_and_method_arch_mismatch_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'densefcn57'"):
        load_config("cpu-demo", ["model.arch=densefcn"])
    with pytest.raises(ConfigError, match="'unet' is a 2D network but method 'ct-only-3d'.*unet3d"):
        build_method(load_config("cpu-demo", [*TINY, "training.method=ct-only-3d"]))
    with pytest.raises(ConfigError, match="'unet3d' is a 3D network but method 'ct-only'"):
        build_method(load_config("cpu-demo", [*TINY, "training.method=ct-only", "model.arch=unet3d"]))


def test_seg_base_width_per_arch_mapping(tmp_path: Path) -> None:
    widths = "model.seg_base_width={unet: 16, densefcn57: 12, mrrn: 8}"
    got = {a: load_config("cpu-demo", [widths, f"model.arch={a}"]).model.seg_base_width for a in SEGMENTATION_NETS_2D}
    assert got == {"unet": 16, "densefcn57": 12, "mrrn": 8}
    # an architecture missing from the mapping gets its paper width; a plain int still works
    assert load_config("cpu-demo", ["model.seg_base_width={unet: 16}", "model.arch=mrrn"]).model.seg_base_width is None
    cfg = load_config("cpu-demo", [widths, "model.arch=densefcn57"])
    assert parse_config(cfg.to_dict()).model.seg_base_width == 12  # resolved: round-trips as an int
    assert build_method(load_config("cpu-demo", [*TINY, widths, "model.arch=densefcn57", "training.method=ct-only"])
                        ).student.base_width == 12
    with pytest.raises(ConfigError, match="unknown architecture 'unet2d'"):
        load_config("cpu-demo", ["model.seg_base_width={unet2d: 16}"])
    # the same mapping in a user preset extending cpu-demo (how cpu-demo itself can fix densefcn57 at 12)
    (tmp_path / "mine.yaml").write_text("extends: cpu-demo\nmodel:\n  seg_base_width: {unet: 16, densefcn57: 12}\n")
    assert load_config(tmp_path / "mine.yaml", ["model.arch=densefcn57"]).model.seg_base_width == 12


def test_hint_shapes_of_different_teacher_and_student_are_a_config_error() -> None:
    unet = build_segmentation_net("unet", base_width=4)
    with pytest.raises(ConfigError, match="hint features differ"):
        check_hint_compatible(unet, build_segmentation_net("mrrn", base_width=4), (1, 1, P, P))
    with pytest.raises(ConfigError, match="hint features differ"):
        check_hint_compatible(unet, build_segmentation_net("unet", base_width=4, hint_layers="low"), (1, 1, P, P))


# ------------------------------------------------------------------------------ 2D training
@pytest.mark.parametrize("arch", SEGMENTATION_NETS_2D)
@pytest.mark.parametrize("method_name", ["ct-only", "cmedl"])
def test_each_2d_network_trains_in_each_method(phantom: Path, arch: str, method_name: str) -> None:
    cfg = load_config("cpu-demo", [*TINY, f"model.arch={arch}", f"training.method={method_name}"])
    torch.manual_seed(0)
    method = build_method(cfg, "cpu")
    assert method.student.name == arch
    if method_name == "cmedl":
        assert type(method.networks["teacher_mr"]) is type(method.student)
    batch = fixed_batch(cfg, phantom, unpaired=method_name == "cmedl")
    assert float((batch["label"] if method_name == "ct-only" else batch["ct_label"]).sum()) > 0
    losses = train_steps(method, batch, "seg_ct")
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0] - 0.03, losses


@pytest.mark.parametrize("hint", ["high", "mid", "low"])
def test_each_hint_layer_option_trains_in_cmedl(phantom: Path, hint: str) -> None:
    cfg = load_config("cpu-demo", [*TINY, f"cmedl.hint_layers={hint}", "training.method=cmedl"])
    torch.manual_seed(0)
    method = build_method(cfg, "cpu")
    shapes = method.student.hint_shapes((1, 1, P, P))
    # high: last two layers (the 2nd at full size); low: first two convs (full size); mid: bottleneck (P/16)
    expected_side = {"high": P, "mid": P // 16, "low": P}[hint]
    assert shapes[1][1:] == (expected_side, expected_side)
    assert shapes == method.networks["teacher_mr"].hint_shapes((1, 1, P, P))
    batch = fixed_batch(cfg, phantom, unpaired=True)
    before = [p.detach().clone() for p in method.student.parameters()]
    logs = [method.training_step(batch) for _ in range(3)]
    assert all(np.isfinite(l["hint"]) and l["hint"] > 0 for l in logs)
    assert any(not torch.equal(p, b) for p, b in zip(method.student.parameters(), before))


# ------------------------------------------------------------------------------ 3D
def test_3d_patches_are_deterministic_tumour_centred_and_flip_consistently(phantom: Path) -> None:
    from cmedl.data.datasets3d import PatchDataset3D

    cfg = load_config("paper-cbct-unet3d", TINY_3D)
    data = build_training_data(cfg, get_method(cfg.training.method).batch_kind, phantom)
    train = data.train
    assert isinstance(train, PatchDataset3D) and len(train) == 4 and len(data.val) == 2
    item = train[1]
    assert item["image"].shape == (1, *P3) and item["label"].shape == (1, *P3)
    assert item["label"].sum() > 0  # tumour_fraction 1: every patch holds tumour
    assert torch.equal(train[1]["image"], item["image"])  # same (seed, epoch, index) -> same patch
    train.set_epoch(1)
    assert not torch.equal(train[1]["image"], item["image"])
    # flips: image and label flipped together (label still aligned with the bright tumour)
    flipped = PatchDataset3D(train.cache, P3, 1.0, 8, flip_prob=1.0, flip_axes=(2,), seed=train.seed)
    plain = PatchDataset3D(train.cache, P3, 1.0, 8, flip_prob=0.0, seed=train.seed)
    a, b = flipped[3], plain[3]
    assert torch.equal(a["image"], torch.flip(b["image"], (3,)))
    assert torch.equal(a["label"], torch.flip(b["label"], (3,)))
    # the tumour share follows tumour_fraction
    half = PatchDataset3D(train.cache, P3, 0.5, 40, seed=3)
    assert sum(half.is_tumour_sample(i) for i in range(40)) in range(18, 23)


def test_ct_only_3d_loss_decreases_on_a_fixed_phantom_batch(phantom: Path) -> None:
    cfg = load_config("paper-cbct-unet3d", TINY_3D)
    torch.manual_seed(0)
    method = build_method(cfg, "cpu")
    assert isinstance(method, CTOnly3D) and method.student.dims == 3
    batch = fixed_batch(cfg, phantom, unpaired=False, dims=3)
    assert batch["image"].shape == (2, 1, *P3)
    losses = train_steps(method, batch, "seg_ct")
    assert np.mean(losses[-2:]) < losses[0] - 0.03, losses
    vis = method.visuals(batch)
    assert vis["CT"].shape == (2, 1, P3[1], P3[2])


def test_cli_train_ct_only_3d_then_segment_keeps_the_input_geometry(phantom: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    sets = [x for s in TINY_3D for x in ("--set", s)]
    res = runner.invoke(app, ["train", "--data", str(phantom), "--config", "paper-cbct-unet3d",
                              "--method", "ct-only-3d", *sets, "--set", "training.max_epochs=1",
                              "--set", "training.image_grid=true", "--out", str(run), "-q"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["method"] == "ct-only-3d" and ckpt["config"]["data"]["patch_size_3d"] == P3
    assert (run / "images" / "epoch_001.png").is_file()
    net, _ = build_student_from_checkpoint(ckpt)
    assert net.dims == 3

    m = Manifest.load(phantom)
    case = m.select(split="test", modality="ct")[0]
    image = read_volume(m.image_path(case))
    out = tmp_path / "pred"
    res = runner.invoke(app, ["segment", str(m.image_path(case)), "--model", str(run / "best.pt"),
                              "--out", str(out), "--probabilities"])
    assert res.exit_code == 0, res.output
    mask = read_volume(out / f"{case.id}.nii.gz")
    prob = read_volume(out / f"{case.id}_prob.nii.gz")
    assert mask.array.shape == image.array.shape == prob.array.shape
    assert np.allclose(mask.spacing, image.spacing) and np.allclose(mask.origin, image.origin)
    assert np.allclose(mask.direction, image.direction)
    assert set(np.unique(mask.array)) <= {0, 1}
    assert np.array_equal(mask.array, (prob.array >= 0.5).astype(mask.array.dtype))
    assert 0.0 <= prob.array.min() and prob.array.max() <= 1.0 and prob.array.std() > 0
