"""The teacher-student paper's preprocessing end to end (issue 16): training stores it in checkpoints,
`cmedl segment` applies it to students (resampled, z-scored, each lung crop by sliding window, merged) and
writes masks back on the input grid; the legacy switch keeps the working grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import two_lung_ct
from torch import nn

from cmedl.data.manifest import Manifest
from cmedl.data.phantom.cohort import generate_cohort
from cmedl.data.phantom.options import PhantomOptions
from cmedl.data.preprocess import PreprocessConfig
from cmedl.data.ts_preprocess import TSPreprocessConfig, normalise
from cmedl.errors import InputError
from cmedl.inference.segment import segment_files, segment_volume
from cmedl.inference.ts_segment import ts_preprocess_of_checkpoint
from cmedl.io import Volume
from cmedl.io.volume import read_volume
from cmedl.methods import load_config
from cmedl.methods.checkpoints import build_test_time_model
from cmedl.methods.ts_common import ts_preprocess_of
from cmedl.training import load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")

FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _ct() -> tuple[Volume, np.ndarray, np.ndarray]:
    """A CT on a grid with non-trivial spacing, origin and direction: body, two lungs, a bright tumour in
    lung 1 and a bright blob above the lungs, outside every lung crop."""
    arr, (z, y, x) = two_lung_ct()
    tumour = ((y - 36) / 7) ** 2 + ((x - 27) / 6) ** 2 + ((z - 8) / 2.5) ** 2 < 1
    outside = ((y - 40) / 5) ** 2 + ((x - 48) / 5) ** 2 + ((z - 21) / 1.5) ** 2 < 1  # 39 mm above the lungs
    arr[tumour | outside] = 300
    return Volume(arr, spacing=(1.6, 1.4, 3.0), origin=(80.2, 61.7, -300.0), direction=FLIP_XY), tumour, outside


class HUThreshold(nn.Module):
    """A 3D "student" whose logit is ``(HU - 150) / 10``, from the z-scored input of a known volume."""

    dims = 3

    def __init__(self, mean: float, sd: float) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(sd / 10.0)
            self.conv.bias.fill_((mean - 150.0) / 10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_student_mask_lands_on_the_input_grid_at_the_tumour():
    """Known answer: a student that finds voxels above 150 HU segments the tumour in the lung (DSC > 0.9,
    centroid within 1 mm) on exactly the input grid, and nothing outside the lung crops."""
    ct, tumour, outside = _ct()
    cfg = TSPreprocessConfig(spacing=(1.0, 1.0, 1.5))
    _, stats = normalise(ct.array, cfg)
    net = HUThreshold(stats["mean"], stats["sd"])
    res = segment_volume(ct, net, PreprocessConfig(), patch_size=(16, 32, 32), ts_preprocess=cfg,
                         return_probabilities=True)
    mask = res.mask
    assert mask.shape == ct.shape and mask.spacing == ct.spacing and mask.origin == ct.origin
    assert mask.direction == ct.direction and res.probabilities.same_geometry(ct)
    got = mask.array != 0
    dsc = 2 * (got & tumour).sum() / (got.sum() + tumour.sum())
    assert dsc > 0.9, dsc
    centre = ct.index_to_physical(np.argwhere(got)[:, ::-1].mean(0))
    assert np.allclose(centre, ct.index_to_physical(np.argwhere(tumour)[:, ::-1].mean(0)), atol=1.0)
    assert not got[outside].any()  # above the lungs: no student crop looks there
    probs = res.probabilities.array
    assert probs.min() >= 0.0 and probs.max() <= 1.0 and np.median(probs[tumour]) > 0.95


class WindowThreshold(nn.Module):
    """A 3D student on the legacy working grid (HU window [-1000, 500] -> [-1, 1]) whose logit is positive
    above 200 HU (working value 0.6)."""

    dims = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(50.0)
            self.conv.bias.fill_(-30.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_lung_filter_drops_components_away_from_the_lungs():
    """Known answer: without the filter both 300 HU blobs are segmented; with it the blob 39 mm above the
    lungs (beyond the 5 mm margin) goes and the tumour in the lung stays."""
    ct, tumour, outside = _ct()
    kw = dict(patch_size=(16, 32, 32))
    plain = segment_volume(ct, WindowThreshold(), PreprocessConfig(), **kw).mask.array != 0
    assert plain[outside].mean() > 0.9 and plain[tumour].mean() > 0.9
    kept = segment_volume(ct, WindowThreshold(), PreprocessConfig(), lung_filter=True, **kw).mask.array != 0
    assert not kept[outside].any()
    assert kept[tumour].mean() > 0.9


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tsseg_phantom")
    return generate_cohort(out, n_ct=5, n_cbct=0, n_mr=0, seed=11, shape=(24, 48, 48), workers=1,
                           fractions=(0.4, 0.2, 0.4), options=PhantomOptions(box_only_share=0.0))


def _config(*extra: str):
    return load_config("cpu-ts", ["training.method=ts-baseline", "model.seg_base_width=4",
                                  "data.patch_size_3d=[16,32,32]", "data.samples_per_epoch=4", "data.val_samples=2",
                                  "training.max_epochs=1", "training.progress=false", "training.image_grid=false",
                                  "ts-baseline.accumulate=2", "optim.lr_schedule=constant", *extra])


def _run(tmp: Path, cohort: Path, name: str, *extra: str) -> tuple[Path, object]:
    config = _config(*extra)
    return train(config, cohort, out_dir=tmp / name).best_checkpoint, config


def test_checkpoint_holds_the_preprocessing_and_segment_applies_it(cohort, tmp_path):
    best, config = _run(tmp_path, cohort, "paper")
    ckpt = load_checkpoint(best)
    ts = ts_preprocess_of(config, teacher=False)
    assert ckpt["preprocess"]["ts"] == ts.to_dict() and ts.spacing == (2.7, 2.7, 3.0)  # cpu-ts: smaller size
    assert ts_preprocess_of_checkpoint(ckpt) == ts and ckpt["preprocess"]["student"]["modality"] == "ct"
    m = Manifest.load(cohort)
    case = next(c for c in m.cases if c.split == "test")
    written = segment_files(best, [m.image_path(case)], tmp_path / "seg", progress=False, probabilities=True)
    image, mask = read_volume(m.image_path(case)), read_volume(written[0])
    assert mask.same_geometry(image) and mask.direction == image.direction and mask.array.dtype == np.uint8
    # the stored paper pipeline is what segment applies: same probabilities as segment_volume with it,
    # not those of the working grid
    prob = read_volume(tmp_path / "seg" / f"{case.id}_prob.nii.gz").array
    student, pp, patch = _student_of(best, ckpt)
    direct = segment_volume(image, student, pp, patch_size=patch, ts_preprocess=ts, return_probabilities=True)
    assert np.allclose(prob, direct.probabilities.array, atol=1e-5)
    working = segment_volume(image, student, pp, patch_size=patch, return_probabilities=True)
    assert not np.allclose(prob, working.probabilities.array, atol=1e-3)
    # legacy switch: no ts preprocessing stored, the working grid is used
    legacy, _ = _run(tmp_path, cohort, "legacy", "ts-baseline.pipeline=legacy")
    assert "ts" not in load_checkpoint(legacy)["preprocess"]
    assert read_volume(segment_files(legacy, [m.image_path(case)], tmp_path / "seg_l", progress=False)[0]
                       ).same_geometry(image)


def _student_of(path: Path, ckpt: dict):
    """The checkpoint's student as `cmedl segment` composes it, its working-grid preprocessing and window."""
    model, pp, config = build_test_time_model(ckpt, source=path)
    return model, pp, tuple(config.data.patch_size_3d)


def test_invalid_stored_preprocessing_is_one_line_error():
    with pytest.raises(InputError, match="'ts' preprocessing is invalid") as exc:
        ts_preprocess_of_checkpoint({"preprocess": {"ts": {"spacing": [1, 0, 1]}}}, "model.pt")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("model.pt")
    assert ts_preprocess_of_checkpoint({"preprocess": {"student": {}}}) is None


def test_a_run_from_before_the_paper_pipeline_resumes_only_as_legacy(cohort, tmp_path):
    """A teacher-student checkpoint without ``pipeline`` and ``preprocess.ts`` (written before the paper
    pipeline) trained on the working grid: resuming it with the paper default is refused naming the key."""
    from cmedl.errors import ConfigError
    from cmedl.training.checkpoint import save_checkpoint

    _run(tmp_path, cohort, "old", "ts-baseline.pipeline=legacy")
    last = tmp_path / "old" / "last.pt"
    ckpt = load_checkpoint(last)
    del ckpt["config"]["ts-baseline"]["pipeline"]  # as written before the key existed
    save_checkpoint(last, ckpt)
    more = ["training.max_epochs=2"]
    with pytest.raises(ConfigError, match="pipeline") as exc:
        train(_config(*more), cohort, out_dir=tmp_path / "old", resume=True)
    assert "\n" not in str(exc.value)
    resumed = train(_config(*more, "ts-baseline.pipeline=legacy"), cohort, out_dir=tmp_path / "old", resume=True)
    assert resumed.epochs == 2 and "ts" not in load_checkpoint(resumed.last_checkpoint)["preprocess"]
