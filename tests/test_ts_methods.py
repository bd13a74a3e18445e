"""Teacher-student methods (issue 16): datasets of the new batch kinds, case selection with box-only
cases, each method learning on a tiny phantom, gradient accumulation, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmedl.data.batches import BatchKind
from cmedl.data.datasets_ts import derived_box_mask, lesion_regions, window_start
from cmedl.data.manifest import Manifest
from cmedl.data.phantom.cohort import generate_cohort
from cmedl.data.phantom.options import PhantomOptions
from cmedl.data.selection import select_cases
from cmedl.errors import ConfigError, InputError
from cmedl.methods import build_method, load_config, method_names
from cmedl.training.data import build_training_data

pytestmark = pytest.mark.usefixtures("one_thread")

TS_METHODS = ("box-teacher", "point-teacher", "ts-baseline", "ts-student", "ts-student-do")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Manifest:
    """8 CT cases of 24x48x48 voxels: 4 train (2 of them box-only), 2 val, 2 test; every case has boxes."""
    out = tmp_path_factory.mktemp("ts_phantom")
    path = generate_cohort(out, n_ct=8, n_cbct=0, n_mr=0, seed=3, shape=(24, 48, 48), workers=1,
                           fractions=(0.5, 0.25, 0.25), options=PhantomOptions(box_only_share=0.5))
    return Manifest.load(path)


def tiny_config(method: str, *extra: str):
    preset = "cpu-ts-teacher" if method.endswith("teacher") else "cpu-ts"
    patch = "[16,24,24]" if method.endswith("teacher") else "[16,32,32]"
    return load_config(preset, [f"training.method={method}", "model.seg_base_width=4", f"data.patch_size_3d={patch}",
                                "data.samples_per_epoch=8", "data.val_samples=2", "training.progress=false",
                                f"{method}.accumulate=1", "augmentation.enabled=false", *extra])


# ------------------------------------------------------------------------------ boxes and crops
def test_derived_box_mask_is_per_lesion_per_slice_bounding_box():
    label = np.zeros((3, 10, 10), np.uint8)
    label[1, 2, 2] = label[1, 4, 4] = label[0, 3, 3] = 1  # one 26-connected lesion (diagonal neighbours)
    label[1, 8:10, 8] = 1  # a second lesion
    box = derived_box_mask(label)
    expected = np.zeros_like(label)
    expected[1, 2:5, 2:5] = 1  # slice 1 of lesion 1: rows 2..4, cols 2..4
    expected[0, 3, 3] = 1
    expected[1, 8:10, 8] = 1
    assert np.array_equal(box, expected)
    assert len(lesion_regions(label)) == 2


def test_window_start_centres_and_clips():
    assert window_start((10, 10, 10), (4, 4, 4), (30, 30, 30)) == (8, 8, 8)
    assert window_start((0, 29, 10), (4, 4, 4), (30, 30, 30)) == (0, 26, 8)  # kept inside
    assert window_start((1, 1, 1), (8, 4, 4), (4, 30, 30)) == (-2, 0, 0)  # too short: centred padding


def test_guided_crops_hold_the_lesion_and_its_boxes(cohort):
    config = tiny_config("box-teacher")
    data = build_training_data(config, BatchKind.GUIDED_CROPS_3D, cohort)
    assert [c.case_id for c in data.train.cache.cases] == ["ct_P001", "ct_P002"]  # expert train cases only
    for i in range(4):
        item = data.train[i]
        assert item["image"].shape == item["label"].shape == item["box"].shape == (1, 16, 24, 24)
        assert item["label"].sum() > 0
        assert bool((item["box"] >= item["label"]).all())  # every tumour voxel lies in a box
    assert torch.equal(data.train[3]["image"], data.train[3]["image"])  # deterministic


def test_student_patches_mix_expert_and_pseudo_cases(cohort, tmp_path):
    # a pseudo-labelled manifest: the box-only cases get their phantom labels as "pseudo" labels
    m = Manifest.load(cohort.path)
    for c in m.cases:
        if c.label is None:
            c.label, c.label_source = f"labels/{c.id}.nii.gz", "pseudo"
    m.save(cohort.path.parent / "pseudo.json")
    mixed = select_cases(cohort.path.parent / "pseudo.json", None, "ct", False, labels="any")
    strong = select_cases(cohort.path.parent / "pseudo.json", None, "ct", False, labels="expert")
    assert len(mixed.train) == 4 and len(strong.train) == 2
    data = build_training_data(tiny_config("ts-student-do"), BatchKind.MIXED_PATCHES_3D, cohort.path.parent / "pseudo.json")
    items = [data.train[i] for i in range(8)]
    assert {it["pseudo"] for it in items} == {True, False}
    for it in items:
        assert it["box"].shape == (1, 16, 32, 32)
        assert bool((it["box"] >= it["label"]).all())


def test_box_only_cases_to_a_mask_method_is_one_line_error(cohort, tmp_path):
    m = Manifest.load(cohort.path)
    for c in m.cases:  # every train case box-only
        if c.split == "train":
            c.label = None
    m.save(cohort.path.parent / "boxonly.json")
    with pytest.raises(InputError) as exc:
        build_training_data(tiny_config("ts-student"), BatchKind.MIXED_PATCHES_3D, cohort.path.parent / "boxonly.json")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(cohort.path.parent / "boxonly.json"))
    assert "4 box-only" in msg and "pseudo-label" in msg


# ------------------------------------------------------------------------------ configs
def test_methods_are_registered_and_configs_checked():
    assert set(TS_METHODS) <= set(method_names())
    with pytest.raises(ConfigError, match="training.validation=patches"):
        load_config("cpu-ts", ["training.method=box-teacher"])
    with pytest.raises(ConfigError, match="model.arch=ts-unet3d"):
        load_config("cpu-ts", ["training.method=ts-student", "model.arch=unet3d"])
    with pytest.raises(ConfigError, match="accumulation cycles"):
        load_config("cpu-ts", ["training.method=ts-student", "data.samples_per_epoch=12", "ts-student.accumulate=8"])
    config = load_config("paper-ts", ["training.method=ts-student-do"])
    assert (config.optim.lr_segmentation, config.training.batch_size, config.section("ts-student-do").accumulate) == (
        1e-4, 1, 8)
    # the CPU presets: students step after every sample (chosen on a development cohort), teachers keep 8;
    # the dual-output student keeps its box branch weight from paper-ts
    cpu = load_config("cpu-ts", ["training.method=ts-student-do"])
    assert (cpu.section("ts-student-do").accumulate, cpu.section("ts-student-do").box_weight) == (1, 1.0)
    assert load_config("cpu-ts-teacher", []).section("box-teacher").accumulate == 8
    # students decay the rate (cosine over the second half, chosen on the same cohort); teachers keep it constant
    assert (cpu.optim.lr_schedule, load_config("cpu-ts-teacher", []).optim.lr_schedule) == ("cosine", "constant")


def test_networks_of_each_method():
    shapes = {}
    for name in TS_METHODS:
        method = build_method(tiny_config(name))
        net = method.student
        shapes[name] = (net.in_channels, net.levels, net.out_channels)
    assert shapes == {"box-teacher": (2, 3, 1), "point-teacher": (1, 3, 1), "ts-baseline": (1, 4, 1),
                      "ts-student": (1, 4, 1), "ts-student-do": (1, 4, 2)}


# ------------------------------------------------------------------------------ learning
def _fixed_batch(cohort, method: str) -> dict:
    kind = {"box-teacher": BatchKind.GUIDED_CROPS_3D, "point-teacher": BatchKind.GUIDED_CROPS_3D,
            "ts-baseline": BatchKind.STRONG_PATCHES_3D}.get(method, BatchKind.MIXED_PATCHES_3D)
    config = tiny_config(method, "data.tumour_fraction=1.0")
    data = build_training_data(config, kind, cohort)
    return torch.utils.data.default_collate([data.train[0]])


@pytest.mark.parametrize("method", TS_METHODS)
def test_each_method_loss_decreases(cohort, method):
    torch.manual_seed(0)
    m = build_method(tiny_config(method, "optim.lr_segmentation=3e-3"))
    batch = _fixed_batch(cohort, method)
    losses = [m.training_step(batch)["loss_s"] for _ in range(8)]
    assert np.mean(losses[-3:]) < losses[0] - 0.02, losses
    val = m.validation_step(batch)
    assert 0.0 <= val["loss"] <= 1.0 and val["label_sum"] > 0


def test_dual_output_loss_has_both_terms(cohort):
    torch.manual_seed(0)
    m = build_method(tiny_config("ts-student-do"))
    out = m.training_step(_fixed_batch(cohort, "ts-student-do"))
    assert set(out) == {"loss_s", "loss_seg", "loss_box"}
    assert out["loss_s"] == pytest.approx(out["loss_seg"] + out["loss_box"], rel=1e-5)


def test_gradient_accumulation_steps_every_n(cohort):
    torch.manual_seed(0)
    m = build_method(tiny_config("ts-baseline", "ts-baseline.accumulate=3", "data.samples_per_epoch=9"))
    batch = _fixed_batch(cohort, "ts-baseline")
    before = [p.detach().clone() for p in m.student.parameters()]
    m.training_step(batch)
    m.training_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, m.student.parameters()))  # no step yet
    m.training_step(batch)
    assert not all(torch.equal(a, b) for a, b in zip(before, m.student.parameters()))
    assert m.state_dict()["method_state"]["micro_steps"] == 3


# ------------------------------------------------------------------------------ the paper's preprocessing
def test_teacher_trains_on_the_resampled_zscored_grid(cohort):
    data = build_training_data(tiny_config("box-teacher"), BatchKind.GUIDED_CROPS_3D, cohort)
    case = data.train.cache.cases[0]
    prepared = case.cached.prepared
    # 24 x 48 x 48 voxels of 7.2 x 7.2 x 6 mm resampled to cpu-ts's 2.7 x 2.7 x 3 mm: 48 x 128 x 128
    assert case.cached.image.shape == (48, 128, 128) and prepared.input_spacing == (2.7, 2.7, 3.0)
    assert abs(float(case.cached.image.mean())) < 0.05 and abs(float(case.cached.image.std()) - 1) < 0.1  # z-score
    assert prepared.pad_value == pytest.approx(float(case.cached.image.min()), abs=0.05)  # clipped -1024 HU
    assert case.box.shape == case.cached.label.shape == (48, 128, 128)
    legacy = build_training_data(tiny_config("box-teacher", "box-teacher.pipeline=legacy"), BatchKind.GUIDED_CROPS_3D,
                                 cohort)
    image = legacy.train.cache.cases[0].cached.image
    assert image.shape[0] == 24 and image.min() >= -1.0 and image.max() <= 1.0  # the working grid: slices kept


def test_students_train_on_lung_crops_and_validate_on_their_union(cohort):
    data = build_training_data(tiny_config("ts-baseline"), BatchKind.STRONG_PATCHES_3D, cohort)
    units = data.train.ts_cache.cases
    assert [u.case_id for u in units] == ["ct_P001:lung1", "ct_P001:lung2", "ct_P002:lung1", "ct_P002:lung2"]
    for unit in units:
        assert unit.cached.image.shape[0] <= 48 and unit.cached.image.shape[1] < 128  # a crop of the resampled grid
        assert unit.box.shape == unit.cached.label.shape == unit.cached.image.shape
        assert bool((unit.box >= unit.cached.label).all())
    # each unit is its lung crop of the resampled, z-scored case: same voxels, same tumour voxels
    from cmedl.data.ts_preprocess import student_crops, ts_prepare
    from cmedl.io.volume import read_volume
    from cmedl.methods.ts_common import ts_preprocess_of

    ts = ts_preprocess_of(tiny_config("ts-baseline"), teacher=False)
    case = next(c for c in cohort.cases if c.id == "ct_P001")
    prep = ts_prepare(read_volume(cohort.image_path(case)), ts, label=read_volume(cohort.label_path(case)),
                      lungs=True)
    crops = student_crops(prep, ts)
    assert [f"ct_P001:lung{c.lung}" for c in crops] == [u.case_id for u in units[:2]]
    for crop, unit in zip(crops, units[:2]):
        assert np.array_equal(unit.cached.image, prep.image.array[crop.box])
        assert int(unit.cached.label.sum()) == int(prep.label.array[crop.box].sum())
    assert sum(int(u.cached.label.sum()) for u in units) > 0
    val = data.val_cache.cases  # whole cases: the bounding box of their lung crops
    assert [c.case_id for c in val] == [c.id for c in cohort.cases if c.split == "val" and c.label is not None]
    for c in val:
        assert c.prepared.input_spacing == (2.7, 2.7, 3.0) and c.label.shape == c.image.shape
        assert all(n <= m for n, m in zip(c.image.shape, (48, 128, 128))) and c.image.size < 48 * 128 * 128
