"""The teacher-student paper's preprocessing: clip + z-score, 1 x 1 x 1.5 mm, boxes re-derived, crops, way back."""

from __future__ import annotations

import numpy as np
import pytest

from cmedl.data.boxes import AxialBox, BoxGeometry, BoxSet, box_mask, boxes_from_mask
from cmedl.data.ts_preprocess import (
    TSPreprocessConfig,
    normalise,
    restore_to_input,
    teacher_crop,
    ts_prepare,
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
    assert padded.shape == (32, 32, 32) and np.isclose(padded.min(), prep.background)
    with pytest.raises(GeometryError, match="no tumour"):
        teacher_crop(ts_prepare(ct), cfg)
