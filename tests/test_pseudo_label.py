"""cmedl pseudo-label (masks kept inside the boxes, the manifest's label sources, non-teacher refused) and
the students' whole-volume segmentation (sliding-window geometry, lung filter, teachers refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.boxes import box_mask, read_boxes
from cmedl.data.manifest import Manifest
from cmedl.data.phantom.cohort import generate_cohort
from cmedl.data.phantom.options import PhantomOptions
from cmedl.data.ts_preprocess import TSPreprocessConfig
from cmedl.errors import InputError
from cmedl.inference.postprocess import keep_components_touching, near_region
from cmedl.inference.pseudo_label import pseudo_label_files, pseudo_label_volume, teacher_of, teacher_probabilities
from cmedl.inference.segment import segment_files
from cmedl.io.volume import read_volume
from cmedl.methods import build_method, load_config
from cmedl.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pl_phantom")
    return generate_cohort(out, n_ct=6, n_cbct=0, n_mr=0, seed=5, shape=(24, 48, 48), workers=1,
                           fractions=(0.5, 0.25, 0.25), options=PhantomOptions(box_only_share=0.5))


def checkpoint(tmp: Path, method: str, bias: float, *extra: str) -> Path:
    """A checkpoint of ``method`` (width 4) whose segmentation head predicts ``sigmoid(bias)`` everywhere-ish."""
    preset = "cpu-ts-teacher" if method.endswith("teacher") else "cpu-ts"
    patch = "[16,24,24]" if method.endswith("teacher") else "[16,32,32]"
    config = load_config(preset, [f"training.method={method}", "model.seg_base_width=4", f"data.patch_size_3d={patch}",
                                  *extra])
    torch.manual_seed(0)
    m = build_method(config)
    with torch.no_grad():
        m.student.decoder.head.bias.fill_(bias)
        m.student.decoder.head.weight.zero_()
    pp, _ = config.preprocess_configs()
    path = tmp / f"{method}.pt"
    # as the trainer stores it: the student preprocessing and (paper pipeline) the teacher-student one
    save_checkpoint(path, {"method": method, "config": config.to_dict(),
                           "preprocess": {"student": pp.to_dict(), "mr": None, **m.checkpoint_preprocess()},
                           **m.state_dict()})
    return path


@pytest.mark.parametrize("pipeline", ["paper", "legacy"])
def test_pseudo_labels_stay_inside_boxes_and_sources_are_recorded(cohort, tmp_path, pipeline):
    model = checkpoint(tmp_path, "box-teacher", 8.0, f"box-teacher.pipeline={pipeline}")  # "tumour" wherever it looks
    stored = load_checkpoint(model)["preprocess"]
    assert (stored.get("ts") is not None) == (pipeline == "paper")
    if pipeline == "paper":  # the paper's settings: cpu-ts-teacher's spacing, the crop = data.patch_size_3d
        assert stored["ts"]["spacing"] == [2.7, 2.7, 3.0] and stored["ts"]["teacher_crop"] == [16, 24, 24]
        assert teacher_of(load_checkpoint(model)).ts.teacher_crop == (16, 24, 24)
    out = tmp_path / "pseudo"
    written = pseudo_label_files(model, cohort, out, progress=False)
    src, new = Manifest.load(cohort), Manifest.load(written)
    box_only = [c.id for c in src.cases if c.label is None and c.split in ("train", "val")]
    assert box_only and [c.id for c in new.cases] == [c.id for c in src.cases]
    for case in new.cases:
        old = next(c for c in src.cases if c.id == case.id)
        assert new.image_path(case) == src.image_path(old)  # paths rewritten relative to the new manifest
        if case.id in box_only:
            assert case.label_source == "pseudo" and case.label == f"labels/{case.id}.nii.gz"
            image, mask = read_volume(new.image_path(case)), read_volume(new.label_path(case))
            assert mask.shape == image.shape and mask.spacing == image.spacing and mask.origin == image.origin
            boxes = box_mask(read_boxes(new.boxes_path(case), image), image.shape)
            # a teacher that says "tumour" everywhere gives exactly the boxes: nothing outside them
            assert np.array_equal(mask.array != 0, boxes)
        else:
            assert case.label_source == ("expert" if old.label is not None else None)
            assert new.label_path(case) == src.label_path(old)
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(f"{i}.nii.gz" for i in box_only)


def test_point_teacher_windows_cover_each_lesion():
    net = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.fill_(10.0)
    boxes = np.zeros((20, 40, 40), np.uint8)
    boxes[5:8, 10:14, 10:14] = 1
    boxes[2:18, 25:38, 3:36] = 1  # larger than the crop: the window grows, sliding window inside it
    probs = teacher_probabilities(net, np.zeros(boxes.shape, np.float32), boxes, "point", (8, 8, 8))
    assert probs[boxes != 0].min() > 0.99  # every box voxel inside a window
    assert probs[0, 0, 39] == 0.0  # far from any box: never looked at


def test_non_teacher_checkpoint_refused_nothing_written(cohort, tmp_path):
    model = checkpoint(tmp_path, "ts-student", 0.0)
    out = tmp_path / "pl_out"
    res = CliRunner().invoke(app, ["pseudo-label", "--model", str(model), "--data", str(cohort), "--out", str(out)])
    assert res.exit_code == 1
    line = res.output.strip()
    assert "\n" not in line and line.startswith(f"error: {model}") and "not a teacher" in line
    assert not out.exists() and not list(tmp_path.glob(".pl_out*"))
    with pytest.raises(InputError, match="no box-only cases"):  # a manifest without box-only cases
        m = Manifest.load(cohort)
        for c in m.cases:
            if c.label is None:
                c.boxes = None
                c.label = "labels/" + c.id + ".nii.gz"
        m.save(tmp_path / "nobox.json")
        pseudo_label_files(checkpoint(tmp_path, "box-teacher", 0.0), tmp_path / "nobox.json", out, progress=False)


def test_student_segments_whole_volume_on_the_input_grid(cohort, tmp_path):
    model = checkpoint(tmp_path, "ts-student-do", 8.0)
    m = Manifest.load(cohort)
    case = m.cases[0]
    out = tmp_path / "seg"
    written = segment_files(model, [m.image_path(case)], out, progress=False)
    image, mask = read_volume(m.image_path(case)), read_volume(written[0])
    assert mask.shape == image.shape and mask.spacing == image.spacing and mask.origin == image.origin
    assert mask.direction == image.direction
    assert mask.array.any()  # a "tumour everywhere" student segments its lung crops
    # the lung filter's known answer: tests/test_ts_segment.py::test_lung_filter_drops_components_away_from_the_lungs


def test_segment_refuses_a_teacher(cohort, tmp_path):
    model = checkpoint(tmp_path, "box-teacher", 0.0)
    m = Manifest.load(cohort)
    with pytest.raises(InputError, match="guided teacher") as exc:
        segment_files(model, [m.image_path(m.cases[0])], tmp_path / "seg", progress=False)
    assert "\n" not in str(exc.value) and not (tmp_path / "seg").exists()


def test_lung_filter_keeps_components_reaching_the_lungs():
    mask = np.zeros((5, 20, 20), np.uint8)
    mask[2, 2:4, 2:4] = 1  # touches the grown lungs
    mask[2, 15:18, 15:18] = 1  # far away
    lungs = np.zeros_like(mask, bool)
    lungs[2, 5:8, 2:4] = True
    near = near_region(lungs, (1.0, 1.0, 1.0), 2.0)
    assert near[2, 3, 2] and not near[2, 2, 2]  # 2 mm away inside the margin, 3 mm away not
    assert not near_region(lungs, (1.0, 1.0, 1.0), 1.5)[2, 3, 2]
    kept = keep_components_touching(mask, near)
    assert kept[2, 2:4, 2:4].all() and not kept[2, 15:18, 15:18].any()


def test_paper_pseudo_labels_follow_the_teacher_and_stay_in_boxes(cohort):
    """A "teacher" that thresholds the CT (z-scored input > 0.5 SD, i.e. soft tissue) through the paper
    pipeline: inside the boxes it marks the tumour's soft tissue, outside them nothing, on the input grid."""
    m = Manifest.load(cohort)
    case = next(c for c in m.cases if c.label is None and c.boxes is not None)
    image = read_volume(m.image_path(case))
    boxes = read_boxes(m.boxes_path(case), image)
    net = torch.nn.Conv3d(2, 1, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([20.0, 0.0]).view(1, 2, 1, 1, 1))
        net.bias.fill_(-10.0)
    cfg = TSPreprocessConfig(spacing=(2.7, 2.7, 3.0), teacher_crop=(16, 24, 24))
    mask = pseudo_label_volume(image, boxes, net, None, "box", cfg.teacher_crop, ts=cfg) != 0
    inside = box_mask(boxes, image.shape)
    assert mask.shape == image.shape and mask.any() and not (mask & ~inside).any()
    # the hidden phantom mask (soft tissue in the boxes): mostly found
    hidden = read_volume(m.root / "labels" / f"{case.id}.nii.gz").array != 0
    assert (mask & hidden).sum() > 0.5 * hidden.sum()
    # the same from the box mask array instead of the box file
    again = pseudo_label_volume(image, inside, net, None, "box", cfg.teacher_crop, ts=cfg) != 0
    assert (again ^ mask).sum() <= 0.05 * mask.sum()
