"""CUDA paths: training (fp32 and bf16 autocast), resume, checkpoints moved between devices, inference.

Every test here needs a CUDA device and is skipped without one (CI has none); run them on a GPU
machine with ``python -m pytest -q tests/test_cuda.py``. The CPU suite covers the same logic; these
tests check what only the GPU changes: tensors on the right device, pinned-memory loading, cuDNN /
TF32 numerics close to the CPU's, bf16 autocast on CUDA, RNG state of the CUDA generator on resume,
and that a checkpoint trained on a GPU segments on a CPU (the users' usual set-up).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_architectures import TINY_3D
from test_training import _record, _stop_at_step, tiny
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.manifest import Manifest
from cmedl.io import read_volume
from cmedl.methods import build_method, build_student_from_checkpoint, load_config
from cmedl.training.checkpoint import load_checkpoint
from cmedl.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cmedl.data.phantom import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("phantom_cuda"), n_ct=5, n_cbct=0, n_mr=3, seed=0,
                           shape=(12, 48, 48), workers=1)


def _test_images(phantom: Path) -> list[Path]:
    manifest = Manifest.load(phantom if phantom.is_file() else phantom / "manifest.json")
    return [manifest.image_path(c) for c in manifest.cases if c.modality == "ct"][:2]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cmedl_trains_on_cuda_and_the_checkpoint_segments_on_cpu(phantom: Path, tmp_path: Path,
                                                                   precision: str) -> None:
    cfg = tiny("training.device=cuda", f"training.precision={precision}", "training.max_epochs=2")
    r = train(cfg, phantom, out_dir=tmp_path / "run")
    assert r.epochs == 2 and all(math.isfinite(h["val_loss"]) for h in r.history)
    ck = load_checkpoint(r.last_checkpoint)  # map_location cpu: loads on a machine without a GPU
    tensors = [t for net in ck["networks"].values() for t in net.values()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    net, pp = build_student_from_checkpoint(ck)
    assert next(net.parameters()).device.type == "cpu" and pp.modality == "ct"

    # the same model segments the same scans on CPU and on CUDA to nearly the same probabilities
    images = _test_images(phantom)
    outs = {}
    for dev in ("cpu", "cuda"):
        res = CliRunner().invoke(app, ["segment", "--model", str(r.last_checkpoint), *map(str, images),
                                       "--out", str(tmp_path / dev), "--probabilities", "--device", dev])
        assert res.exit_code == 0, res.output
        outs[dev] = [read_volume(tmp_path / dev / f"{p.name.split('.')[0]}_prob.nii.gz") for p in images]
    for a, b, src in zip(outs["cpu"], outs["cuda"], images, strict=True):
        ref = read_volume(src)
        assert b.array.shape == ref.array.shape
        np.testing.assert_allclose(b.spacing, ref.spacing)
        np.testing.assert_allclose(b.origin, ref.origin)
        # cuDNN picks other algorithms (TF32 convolutions by default): small differences only
        assert float(np.abs(a.array - b.array).max()) < 2e-2


def test_resume_on_cuda_reproduces_the_uninterrupted_run(phantom: Path, tmp_path: Path) -> None:
    cfg = tiny("training.device=cuda", "training.max_epochs=2", "cyclegan.pool_size=2")
    full: list[dict] = []
    train(cfg, phantom, out_dir=tmp_path / "full", step_callback=_record(full))
    part: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        train(cfg, phantom, out_dir=tmp_path / "part", step_callback=_stop_at_step(3, part))
    ck = load_checkpoint(tmp_path / "part" / "last.pt")
    assert ck["rng"]["cuda"], "the CUDA generator state must be saved"
    train(cfg, phantom, out_dir=tmp_path / "part", resume=True, step_callback=_record(part))
    assert len(full) == len(part) == 4
    for a, b in zip(full, part, strict=True):
        for k in a:
            # cuDNN backward kernels may use atomics: equal up to float rounding, not bit for bit
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-4), k


def test_ct_only_3d_trains_and_validates_on_cuda(phantom: Path, tmp_path: Path) -> None:
    cfg = load_config("paper-cbct-unet3d", [*TINY_3D, "data.modality=ct", "training.method=ct-only-3d",
                                            "training.device=cuda", "training.max_epochs=1"])
    r = train(cfg, phantom, out_dir=tmp_path / "run3d")
    assert r.epochs == 1 and math.isfinite(r.history[-1]["val_loss"])


def test_cmedl_step_on_cuda_matches_cpu() -> None:
    """One full CMEDL step (G, S, D updates) from the same weights and batch: the losses on CUDA are
    the CPU's up to TF32/cuDNN rounding, so no CPU-only assumption hides in the method."""
    cfg = tiny("cyclegan.use_contextual=false")
    g = torch.Generator().manual_seed(0)
    b, p = 2, cfg.data.patch_size
    batch = {"ct": torch.rand(b, 1, p, p, generator=g) * 2 - 1,
             "ct_label": (torch.rand(b, 1, p, p, generator=g) > 0.8).float(),
             "mr": torch.rand(b, 1, p, p, generator=g) * 2 - 1,
             "mr_label": (torch.rand(b, 1, p, p, generator=g) > 0.8).float(),
             "mr_has_label": torch.ones(b, dtype=torch.bool)}
    logs = {}
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32
    try:
        for dev in ("cpu", "cuda"):
            torch.manual_seed(0)
            m = build_method(cfg, dev)
            assert all(next(n.parameters()).device.type == dev for n in m.networks.values())
            logs[dev] = m.training_step(batch)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    assert logs["cpu"].keys() == logs["cuda"].keys()
    for k, v in logs["cpu"].items():
        assert logs["cuda"][k] == pytest.approx(v, rel=1e-3, abs=1e-4), k
