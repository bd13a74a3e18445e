"""Choosing a mask clean-up on validation cases: known answers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import two_lung_ct

from cmedl.errors import InputError
from cmedl.evaluation.postprocess_choice import (
    PostprocessSetting,
    candidate_settings,
    choose_postprocess,
)
from cmedl.io.volume import Volume


def _probs(mask: np.ndarray, spacing=(2.0, 2.0, 2.0)) -> Volume:
    return Volume(np.where(mask, 0.9, 0.1).astype(np.float32), spacing=spacing)


def _two_tumours_and_a_speck() -> tuple[np.ndarray, np.ndarray]:
    """Reference: cubes of 1.73 ml and 1.44 ml (2 mm voxels); prediction adds a 0.064 ml speck."""
    ref = np.zeros((20, 40, 40), bool)
    ref[2:8, 2:8, 2:8] = True  # 216 voxels x 8 mm^3
    ref[10:15, 20:26, 20:26] = True  # 180 voxels
    pred = ref.copy()
    pred[16:18, 34:36, 34:36] = True  # 8 voxels
    return pred, ref


def test_candidates_are_ordered_simplest_first():
    labels = [c.label for c in candidate_settings()]
    assert labels[:4] == ["none", "largest", "lung filter", "lung filter + largest"]
    assert len(labels) == 12 and labels[-1] == ">= 4 ml + lung filter + largest"
    assert [c.label for c in candidate_settings((2, 0), lung_filter=False)] == ["none", "largest", ">= 2 ml",
                                                                                 ">= 2 ml + largest"]


def test_size_threshold_chosen_when_a_speck_is_the_only_false_positive():
    """none keeps the speck, largest drops a true tumour, >= 4 ml drops both: >= 1 ml is the only DSC 1."""
    pred, ref = _two_tumours_and_a_speck()
    best, scores = choose_postprocess([_probs(pred)], [ref], candidates=candidate_settings(lung_filter=False))
    assert best == PostprocessSetting(min_component_ml=1.0)
    assert scores[">= 1 ml"] == 1.0
    assert scores["none"] == pytest.approx(2 * 396 / (404 + 396))
    assert scores["largest"] == pytest.approx(2 * 216 / (216 + 396))
    assert scores[">= 4 ml"] == 0.0
    assert (best.apply(_probs(pred)) != 0).sum() == 396


def test_ties_keep_the_simplest_candidate():
    _, ref = _two_tumours_and_a_speck()
    one = np.zeros_like(ref)
    one[2:8, 2:8, 2:8] = True
    best, scores = choose_postprocess([_probs(one)], [one], candidates=candidate_settings(lung_filter=False))
    assert best.label == "none" and scores["largest"] == scores[">= 1 ml"] == 1.0


def _ct_with_blob_above_the_lungs() -> tuple[Volume, np.ndarray, np.ndarray]:
    """Body, two lungs, a 3 ml tumour in lung 1 and a 5.6 ml blob 18 mm above the lungs."""
    arr, (z, y, x) = two_lung_ct()
    tumour = ((y - 36) / 7) ** 2 + ((x - 27) / 6) ** 2 + ((z - 8) / 2.5) ** 2 < 1
    blob = ((y - 40) / 10) ** 2 + ((x - 48) / 10) ** 2 + ((z - 21) / 2) ** 2 < 1
    arr[tumour | blob] = 300
    return Volume(arr, spacing=(1.6, 1.4, 3.0)), tumour, blob


def test_lung_filter_chosen_when_the_false_positive_is_large_and_away_from_the_lungs():
    ct, tumour, blob = _ct_with_blob_above_the_lungs()
    probs = _probs(tumour | blob, spacing=ct.spacing)
    best, scores = choose_postprocess([probs], [tumour], images=[ct])
    assert best == PostprocessSetting(lung_filter=True)
    assert scores["lung filter"] == 1.0
    assert scores["largest"] == 0.0 and scores[">= 4 ml"] == 0.0  # the blob is the larger component
    assert scores["none"] == scores[">= 1 ml"] < 0.6
    assert np.array_equal(best.apply(probs, image=ct) != 0, tumour)


def test_bad_arguments():
    pred, ref = _two_tumours_and_a_speck()
    with pytest.raises(ValueError, match="-1"):
        PostprocessSetting(min_component_ml=-1)
    with pytest.raises(InputError, match="one reference per probability map"):
        choose_postprocess([_probs(pred)], [ref, ref])
    with pytest.raises(InputError, match="CT of every validation case"):
        choose_postprocess([_probs(pred)], [ref])  # the default grid has lung-filter candidates
    with pytest.raises(InputError, match="needs the CT"):
        PostprocessSetting(lung_filter=True).apply(_probs(pred))
