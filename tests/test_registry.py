"""The method registry: names and choices everywhere come from it, test-time recipes run through
``cmedl segment``, a new method plugs in without touching the trainer or the CLI, and checkpoints
written before the registry still load (known answers from the fixture in tests/data)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.config import TrainConfig
from cmedl.data.batches import BatchKind
from cmedl.data.preprocess import PreprocessConfig
from cmedl.errors import ConfigError
from cmedl.inference import segment_files, segment_volume, translate_volume
from cmedl.io import Volume, read_volume, write_volume
from cmedl.methods import (
    Method,
    TestTimeModel,
    TestTimeRecipe,
    build_generator_from_checkpoint,
    build_method,
    build_test_time_model,
    describe_methods,
    load_config,
    method_names,
    parse_config,
    register_method,
    unregister_method,
)
from cmedl.methods.base import build_segmenter
from cmedl.nets import ResnetGenerator
from cmedl.training.checkpoint import load_checkpoint, save_checkpoint

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "legacy-cmedl-checkpoint-v1.pt"


# ------------------------------------------------------------------------------ a method added here
class PseudoMRISegmenter(Method):
    """A translate-then-segment method, added as the docs' walkthrough says (a test-only method)."""

    name: ClassVar[str] = "test-pmri-seg"
    description: ClassVar[str] = "test only: a generator and a segmenter trained together on labelled CT"
    batch_kind: ClassVar[BatchKind] = BatchKind.LABELLED_SLICES
    recipe: ClassVar[TestTimeRecipe] = TestTimeRecipe("translate-then-segment", "teacher_mr", "g_ct2mr")
    translators: ClassVar[dict[str, str]] = {"ct2mr": "g_ct2mr"}

    @classmethod
    def build_networks(cls, config: TrainConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        nets = {"g_ct2mr": ResnetGenerator(1, 1, 4, 1), "teacher_mr": build_segmenter(config)}
        return {k: v for k, v in nets.items() if names is None or k in names}

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.optimizers["s"] = self.adam([p for n in self.networks.values() for p in n.parameters()], 1e-3, [0.9, 0.999])

    @property
    def student(self) -> nn.Module:
        return TestTimeModel(self.recipe, self.networks["teacher_mr"], self.networks["g_ct2mr"])

    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        image, label = self.to_device(batch["image"]), self.to_device(batch["label"])
        self.optimizers["s"].zero_grad(set_to_none=True)
        loss = self.seg_loss(self.student(image), label)
        loss.backward()
        self.optimizers["s"].step()
        self.global_step += 1
        return {"seg_pmri": float(loss.detach())}


@pytest.fixture
def toy_method():
    register_method(PseudoMRISegmenter)
    yield PseudoMRISegmenter
    unregister_method(PseudoMRISegmenter.name)


def _ct(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = np.full((3, 36, 40), -1000.0, np.float32)
    yy, xx = np.mgrid[:36, :40]
    arr[:, ((yy - 18) / 15) ** 2 + ((xx - 20) / 17) ** 2 < 1] = 40.0
    arr += rng.normal(0, 10, arr.shape).astype(np.float32)
    return Volume(arr, spacing=(0.9, 0.8, 2.5), origin=(-10.0, 5.0, 30.0))


# ------------------------------------------------------------------------------ tests
def test_registry_names_and_did_you_mean() -> None:
    assert {"ct-only", "cmedl", "ct-only-3d"} <= set(method_names())
    rows = {r["method"]: r for r in describe_methods()}
    assert rows["cmedl"]["batch"] == "unpaired-slices" and rows["cmedl"]["test time"] == "student_ct(CT)"
    assert rows["ct-only-3d"]["batch"] == "labelled-patches-3d" and rows["ct-only"]["translate"] == "-"
    with pytest.raises(ConfigError, match="training.method: unknown method 'cmdel'; did you mean 'cmedl'"):
        load_config("cpu-demo", ["training.method=cmdel"])
    with pytest.raises(ValueError, match="already taken"):
        register_method(type("Dup", (PseudoMRISegmenter,), {"name": "cmedl"}))


def test_cli_methods_and_train_take_names_from_the_registry(toy_method, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["methods"])
    assert res.exit_code == 0
    for name in method_names():
        assert f"{name}:" in res.output
    assert "test-pmri-seg" in res.output and "teacher_mr(g_ct2mr(CT))" in res.output
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--method", "ct-onyl", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "did you mean 'ct-only'" in res.output


def test_config_sections_are_typed_and_only_the_methods_own_are_written() -> None:
    cfg = load_config("cpu-demo")
    assert cfg.active_sections == ("cmedl", "cyclegan") and set(cfg.to_dict()) >= {"cmedl", "cyclegan"}
    ct_only = load_config("cpu-demo", ["training.method=ct-only"])
    assert "cmedl" not in ct_only.to_dict() and "cyclegan" not in ct_only.to_dict()
    assert parse_config(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="cyclegan.pool_size: expected an integer"):
        load_config("cpu-demo", ["cyclegan.pool_size=many"])
    with pytest.raises(ConfigError, match="unknown config section 'cyclegn'; did you mean 'cyclegan'"):
        load_config("cpu-demo", ["cyclegn.lr=1"])
    # the old flat layout is read as today's (old configs, old command lines)
    old = load_config("cpu-demo", ["loss.lambda_hint=0.3", "model.gen_n_blocks=2", "data.augment=false",
                                   "data.preprocess={body_margin: 3}"])
    assert (old.cmedl.lambda_hint, old.cyclegan.gen_n_blocks, old.augmentation.enabled) == (0.3, 2, False)
    assert old.preprocess_configs()[0].body_margin == 3


def test_a_new_method_trains_and_segments_through_its_recipe(toy_method, tmp_path: Path) -> None:
    cfg = load_config("cpu-demo", [f"training.method={toy_method.name}", "model.seg_base_width=4",
                                   "training.precision=fp32", "data.patch_size=32"])
    assert cfg.active_sections == ()
    torch.manual_seed(0)
    method = build_method(cfg, "cpu")
    batch = {"image": torch.rand(2, 1, 32, 32) * 2 - 1, "label": (torch.rand(2, 1, 32, 32) > 0.8).float()}
    assert np.isfinite(method.training_step(batch)["seg_pmri"])
    pp = PreprocessConfig("ct")
    ckpt = save_checkpoint(tmp_path / "toy.pt", {
        "method": toy_method.name, "config": cfg.to_dict(), "preprocess": {"student": pp.to_dict(), "mr": None},
        **method.state_dict(), "epoch": 1, "global_step": 1})
    model, _, _ = build_test_time_model(load_checkpoint(ckpt))
    assert model.recipe.networks == ("g_ct2mr", "teacher_mr")
    vol = _ct()
    write_volume(vol, tmp_path / "in" / "ct.nii.gz")
    (mask_path,) = segment_files(ckpt, [tmp_path / "in" / "ct.nii.gz"], tmp_path / "out", probabilities=True,
                                 progress=False)
    # the same as running generator then segmenter by hand on the same preprocessing
    g, teacher = method.networks["g_ct2mr"].eval(), method.networks["teacher_mr"].eval()
    by_hand = segment_volume(vol, nn.Sequential(g, teacher), pp, return_probabilities=True)
    got = read_volume(tmp_path / "out" / "ct_prob.nii.gz").array
    np.testing.assert_allclose(got, by_hand.probabilities.array, atol=1e-5)
    assert read_volume(mask_path).shape == vol.shape


def test_fuse_recipe_feeds_ct_and_pseudo_mri_as_two_channels() -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, 4, 1).eval()
    seg = nn.Conv2d(2, 1, 1)
    model = TestTimeModel(TestTimeRecipe("fuse", "student_ct", "g_ct2mr"), seg, g)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), seg(torch.cat([x, g(x)], 1)))
    assert model.stride == 4 and model.recipe.describe() == "student_ct([CT, g_ct2mr(CT)])"
    with pytest.raises(ConfigError, match="needs a translator"):
        TestTimeRecipe("fuse")


def test_checkpoint_from_the_pre_registry_format_segments_and_translates_as_before() -> None:
    """tests/data/legacy-cmedl-checkpoint-v1.pt was written by cmedl before the registry (flat config:
    loss.lambda_hint, model.gen_*, data.preprocess ...); its outputs on a fixed CT were stored then."""
    expected = np.load(DATA / "legacy-cmedl-checkpoint-v1-expected.npz")
    ckpt = load_checkpoint(LEGACY)
    assert "loss" in ckpt["config"] and "gen_base_width" in ckpt["config"]["model"]  # the old layout
    vol = Volume(expected["ct"], spacing=(0.9, 0.8, 2.5), origin=(-10.0, 5.0, 30.0))
    model, pp, cfg = build_test_time_model(ckpt, source=LEGACY)
    assert (cfg.cmedl.lambda_hint, cfg.cyclegan.gen_base_width, pp.body_margin) == (0.5, 4, 4)
    seg = segment_volume(vol, model, pp, return_probabilities=True)
    np.testing.assert_allclose(seg.probabilities.array, expected["probabilities"], atol=1e-6)
    g, gpp = build_generator_from_checkpoint(ckpt, "ct2mr", source=LEGACY)
    np.testing.assert_allclose(translate_volume(vol, g, gpp).array, expected["pmri"], atol=1e-5)
