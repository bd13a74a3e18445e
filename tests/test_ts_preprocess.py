"""The teacher-student paper's preprocessing: clip + z-score, 1 x 1 x 1.5 mm, boxes re-derived, crops, way back."""

from __future__ import annotations

import numpy as np
import pytest

from cmedl.data.boxes import AxialBox, BoxGeometry, BoxSet, box_mask, boxes_from_mask
from cmedl.data.ts_preprocess import (
    TSPreprocessConfig,
    crop_volume,
    normalise,
    restore_to_input,
    student_crops,
    teacher_crop,
    ts_prepare,
    union_box,
)
from cmedl.errors import ConfigError, GeometryError
from cmedl.io import Volume


def _ct():
    arr = np.full((12, 40, 36), -2000, np.int16)
    arr[:, 10:30, 8:28] = 40
    arr[4:8, 15:21, 12:20] = 3000  # clipped to 1000
    return Volume(arr, spacing=(0.8, 0.7, 3.0), origin=(-12.0, 4.0, 50.0))


def test_config_checks_are_config_errors():
    assert TSPreprocessConfig().spacing == (1.0, 1.0, 1.5)
    for kw, needle in [({"clip_hu": (1000, -1024)}, "clip_hu"), ({"spacing": (1, 0, 1.5)}, "spacing"),
                       ({"spacing": (1, 1)}, "spacing"), ({"teacher_crop": (128, 128, 12.5)}, "teacher_crop"),
                       ({"teacher_crop": (4, 128, 128)}, "teacher_crop"), ({"lung_margin_mm": -1}, "lung_margin"),
                       ({"zscore": "yes"}, "zscore")]:
        with pytest.raises(ConfigError, match=needle):
            TSPreprocessConfig(**kw)


def test_normalise_clips_then_zscores():
    x, st = normalise(np.array([[[-3000, 0, 3000, 1000]]]), TSPreprocessConfig())
    clipped = np.array([-1024, 0, 1000, 1000], np.float32)
    assert np.allclose(x.ravel(), (clipped - clipped.mean()) / clipped.std(), atol=1e-5)
    assert st["background"] == pytest.approx((-1024 - clipped.mean()) / clipped.std())


def test_resampled_grid_labels_boxes_and_exact_way_back():
    ct = _ct()
    lab = np.zeros(ct.shape, np.uint8)
    lab[3:9, 14:24, 10:22] = 1
    boxes = boxes_from_mask(lab, ct)
    prep = ts_prepare(ct, label=lab, boxes=boxes)
    img = prep.image
    # 36 x 0.8 / 1 = 28.8 -> 29; 40 x 0.7 = 28; 12 x 3 / 1.5 = 24
    assert img.shape == (24, 28, 29) and img.spacing == (1.0, 1.0, 1.5) and img.origin == ct.origin
    assert img.array.dtype == np.float32 and abs(float(img.array.mean())) < 0.2
    assert prep.label.array.dtype == np.uint8 and set(np.unique(prep.label.array)) == {0, 1}
    # the boxes re-derived on the new grid are the label's boxes on that grid (box label = cuboid here)
    assert box_mask(prep.boxes).sum() == prep.label.array.sum()
    assert prep.boxes.geometry == BoxGeometry.of(img)
    back = restore_to_input(prep.label.array, prep, ct, is_label=True)
    assert back.same_geometry(ct) and back.spacing == ct.spacing and back.origin == ct.origin
    dice = 2 * (back.array & lab).sum() / (back.array.sum() + lab.sum())
    assert dice > 0.9
    prob = restore_to_input(prep.label.array.astype(np.float32), prep, ct)
    assert prob.array.dtype == np.float32 and prob.shape == ct.shape
    with pytest.raises(GeometryError, match="differs from the resampled grid"):
        restore_to_input(np.zeros((3, 3, 3)), prep, ct)


def test_boxes_of_another_grid_are_refused():
    ct = _ct()
    other = BoxSet((AxialBox(0, 0, 0, 2, 2),), BoxGeometry((36, 40, 13), ct.spacing, ct.origin, ct.direction))
    with pytest.raises(GeometryError, match="another grid"):
        ts_prepare(ct, boxes=other)


def test_teacher_crop_is_centred_on_the_tumour_and_padded():
    ct = _ct()
    lab = np.zeros(ct.shape, np.uint8)
    lab[3:9, 14:24, 10:22] = 1
    cfg = TSPreprocessConfig(teacher_crop=(16, 16, 16))
    prep = ts_prepare(ct, cfg, label=lab)
    crop = teacher_crop(prep, cfg)
    win = crop.extract(prep.label.array)
    assert win.shape == (16, 16, 16) and win.sum() == prep.label.array.sum()  # the whole tumour inside
    big = teacher_crop(prep, TSPreprocessConfig(teacher_crop=(32, 32, 32)))
    padded = big.extract(prep.image.array, prep.background)
    assert padded.shape == (32, 32, 32)
    # known answer: voxels of the window inside the image are the image's, the rest the background value
    image = prep.image.array
    inside = np.zeros(padded.shape, bool)
    src, dst = [], []
    for start, n in zip(big.starts, image.shape):
        lo, hi = max(start, 0), min(start + 32, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    inside[tuple(dst)] = True
    assert (~inside).sum() == 32**3 - np.prod([s.stop - s.start for s in src]) > 0
    assert np.array_equal(padded[tuple(dst)], image[tuple(src)])
    assert np.all(padded[~inside] == prep.background) and prep.background < image.min() + 1e-6
    with pytest.raises(GeometryError, match="no tumour"):
        teacher_crop(ts_prepare(ct), cfg)


# ------------------------------------------------------------------------------ the way back (issue 16 wiring)
OBLIQUE_FREE_FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS-stored axes: x and y reversed


def _thorax(spacing=(0.8, 0.7, 2.5), origin=(-120.5, 33.0, -210.0), direction=OBLIQUE_FREE_FLIP):
    """A small CT with two lungs (labels 1, 2), a tumour inside lung 1, on a grid with non-trivial spacing,
    origin and direction."""
    z, y, x = np.mgrid[0:16, 0:80, 0:96]
    arr = np.full((16, 80, 96), -1000, np.int16)
    body = ((y - 40) / 36) ** 2 + ((x - 48) / 44) ** 2 < 1
    arr[body] = 40
    lung1 = ((y - 40) / 24) ** 2 + ((x - 28) / 15) ** 2 + ((z - 8) / 7.5) ** 2 < 1
    lung2 = ((y - 40) / 24) ** 2 + ((x - 68) / 15) ** 2 + ((z - 8) / 7.5) ** 2 < 1
    arr[lung1 | lung2] = -850
    tumour = ((y - 36) / 8) ** 2 + ((x - 27) / 9) ** 2 + ((z - 8) / 3) ** 2 < 1
    arr[tumour] = 30
    lungs = lung1.astype(np.uint8) + 2 * lung2.astype(np.uint8)
    return Volume(arr, spacing=spacing, origin=origin, direction=direction), tumour.astype(np.uint8), lungs


def test_config_dict_round_trip_and_unknown_keys():
    cfg = TSPreprocessConfig(spacing=(2.0, 2.0, 3.0), teacher_crop=(24, 48, 48), lung_margin_mm=7.5)
    d = cfg.to_dict()
    assert d["spacing"] == [2.0, 2.0, 3.0] and d["teacher_crop"] == [24, 48, 48]  # plain lists: weights_only safe
    assert TSPreprocessConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="did you mean 'spacing'"):
        TSPreprocessConfig.from_dict({**d, "spacings": [1, 1, 1]})


def test_crop_volume_keeps_physical_positions():
    ct, _, _ = _thorax()
    box = (slice(3, 9), slice(10, 50), slice(20, 70))
    sub = crop_volume(ct, box)
    assert sub.shape == (6, 40, 50) and sub.spacing == ct.spacing and sub.direction == ct.direction
    # voxel (0, 0, 0) of the crop is voxel (3, 10, 20) of the image, in mm (direction reverses x and y)
    assert np.allclose(sub.index_to_physical(np.zeros(3)), ct.index_to_physical(np.array([20, 10, 3])))
    assert np.allclose(sub.origin, (-120.5 - 20 * 0.8, 33.0 - 10 * 0.7, -210.0 + 3 * 2.5))
    assert np.array_equal(sub.array, ct.array[box])


def test_mask_round_trips_through_resampling_lung_crops_and_back():
    """Known answer: the tumour mask, resampled to 1 x 1 x 1.5 mm, cut into the students' lung crops, pasted
    back and restored, is the input mask on the input grid (DSC > 0.95), and lies where it was in mm."""
    ct, tumour, lungs = _thorax()
    cfg = TSPreprocessConfig()
    prep = ts_prepare(ct, cfg, label=tumour, lungs=lungs)
    assert prep.image.spacing == (1.0, 1.0, 1.5) and prep.image.direction == ct.direction
    assert prep.image.origin == ct.origin
    crops = student_crops(prep, cfg)
    assert [c.lung for c in crops] == [1, 2]
    merged_lab = np.zeros(prep.image.shape, np.uint8)
    merged_prob = np.zeros(prep.image.shape, np.float32)
    for crop in crops:  # what the students see, and how their outputs are merged (max) into the volume
        merged_lab[crop.box] |= prep.label.array[crop.box]
        np.maximum(merged_prob[crop.box], prep.label.array[crop.box].astype(np.float32), out=merged_prob[crop.box])
    for back in (restore_to_input(merged_lab, prep, ct, is_label=True).array,
                 restore_to_input(merged_prob, prep, ct).array >= 0.5):
        assert back.shape == ct.shape
        dsc = 2 * np.logical_and(back, tumour).sum() / (back.astype(bool).sum() + tumour.sum())
        assert dsc > 0.95, dsc
        got = ct.index_to_physical(np.argwhere(back)[:, ::-1].mean(0))
        want = ct.index_to_physical(np.argwhere(tumour)[:, ::-1].mean(0))
        assert np.allclose(got, want, atol=1.0)  # mm
    restored = restore_to_input(merged_lab, prep, ct, is_label=True)
    assert restored.same_geometry(ct) and restored.direction == ct.direction and restored.origin == ct.origin
    # the union of the crops (the students' view) holds the whole tumour
    assert merged_lab.sum() == prep.label.array.sum()
    box = union_box(crops, prep.image.shape)
    assert all(b.start >= 0 and b.stop <= n for b, n in zip(box, prep.image.shape))
