"""Classical lung masks and per-lung crops: two lungs on the phantom and LIDC-0314, tumour voxels kept."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared

from cmedl.data.lung import LungCrop, crop_loss, lung_crop_boxes, lung_mask
from cmedl.data.phantom.cohort import generate_case
from cmedl.data.phantom.tissue import Tissue
from cmedl.data.ts_preprocess import DEFAULT_LUNG_MARGIN_MM
from cmedl.errors import InputError


@pytest.mark.parametrize("index", [1, 2])  # a chest-wall and a mediastinal tumour (kind by index)
def test_phantom_two_lungs_match_the_truth_and_crops_keep_the_tumour(index):
    case = generate_case("ct", index, seed=0, shape=(24, 96, 96))
    lm = lung_mask(case.image)
    assert set(np.unique(lm)) == {0, 1, 2}
    truth = np.isin(case.labels.array, (Tissue.LUNG, Tissue.LUNG_VESSEL))
    dice = 2 * ((lm > 0) & truth).sum() / ((lm > 0).sum() + truth.sum())
    assert dice > 0.9, dice
    # lung 1 is at lower patient x (identity direction: lower column index)
    x1 = np.argwhere(lm == 1)[:, 2].mean()
    x2 = np.argwhere(lm == 2)[:, 2].mean()
    assert x1 < x2
    tumour = case.mask.array > 0
    crops = lung_crop_boxes(lm, case.image.spacing_zyx, DEFAULT_LUNG_MARGIN_MM)
    assert [c.lung for c in crops] == [1, 2]
    assert crop_loss(tumour, crops) == 0.0


def test_crop_boxes_margin_known_answer_and_errors():
    lm = np.zeros((10, 20, 30), np.uint8)
    lm[2:5, 4:8, 3:9] = 1
    lm[3:6, 5:9, 20:25] = 2
    crops = lung_crop_boxes(lm, (2.0, 1.0, 1.0), margin_mm=3.0)  # 3 mm: 2 slices, 3 rows, 3 columns
    assert crops == [LungCrop(1, (slice(0, 7), slice(1, 11), slice(0, 12))),
                     LungCrop(2, (slice(1, 8), slice(2, 12), slice(17, 28)))]
    tumour = np.zeros_like(lm, bool)
    tumour[5, 10, 12:16] = True  # columns 12-15: between the two crops (x < 12 and x >= 17)
    assert crop_loss(tumour, crops) == 1.0
    assert crop_loss(tumour, lung_crop_boxes(lm, (2.0, 1.0, 1.0), margin_mm=8.0)) == 0.0
    with pytest.raises(InputError, match="margin"):
        lung_crop_boxes(lm, (1, 1, 1), margin_mm=-1)


def test_no_lung_gives_an_empty_mask():
    from cmedl.io import Volume

    vol = Volume(np.full((6, 32, 32), 40, np.int16))
    assert not lung_mask(vol).any()


@pytest.mark.slow
def test_lidc_0314_two_lungs_and_the_nodule_kept():
    from cmedl.io import read_volume

    folder = require_shared("lidc_0314")
    ct = read_volume(folder / "ct_thorax_2mm.nii.gz")
    nodule = read_volume(folder / "nodule_consensus50_2mm.nii.gz").array > 0
    lm = lung_mask(ct)
    ml = [float((lm == k).sum()) * np.prod(ct.spacing) / 1e6 for k in (1, 2)]
    assert all(0.5 < v < 4.0 for v in ml), ml  # litres per lung
    assert (nodule & (lm > 0)).sum() / nodule.sum() > 0.95  # an intrapulmonary nodule: inside the lung mask
    assert crop_loss(nodule, lung_crop_boxes(lm, ct.spacing_zyx, 0.0)) == 0.0
