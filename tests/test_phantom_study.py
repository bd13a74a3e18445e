"""The phantom as a study: tumour kinds, the CT cue and its negative control, the paired oracle
(cmedl.data.phantom.options / boundary) and the manifest fields that carry them."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage as ndi

from cmedl.data.manifest import Manifest
from cmedl.data.phantom import TUMOUR_KINDS, PhantomOptions, Tissue, generate_case, generate_cohort
from cmedl.data.phantom.boundary import boundary_voxels
from cmedl.data.phantom.ct import CT_HU, ct_clean
from cmedl.data.phantom.tumours import ABUTTING, abutting_share
from cmedl.errors import InputError
from cmedl.evaluation.diagnostics import separation_auc
from cmedl.io import read_volume

GRID = (24, 96, 96)  # z, y, x (3.6 x 3.6 x 6 mm voxels)


def test_kinds_follow_the_mix_over_consecutive_indices():
    opts = PhantomOptions()
    counts = Counter(opts.kind_for_index(i) for i in range(30))
    assert set(counts) == set(TUMOUR_KINDS) and all(9 <= n <= 11 for n in counts.values()), counts
    # any later run of cases too (a test split is a random subset, a cohort a prefix)
    counts = Counter(opts.kind_for_index(i) for i in range(100, 160))
    assert all(18 <= n <= 22 for n in counts.values()), counts
    lung_only = PhantomOptions(kind_mix=(1, 0, 0))
    assert {lung_only.kind_for_index(i) for i in range(50)} == {"lung"}
    skew = PhantomOptions(kind_mix=(0, 3, 1))
    c = Counter(skew.kind_for_index(i) for i in range(400))
    assert c["lung"] == 0 and 290 <= c["mediastinal"] <= 310


@pytest.mark.parametrize("index", range(6))
def test_recorded_kind_is_what_the_tumour_abuts(index):
    case = generate_case("ct", index, 0, GRID)
    assert len(case.tumours) == 1  # one dominant tumour by default
    t = case.tumours[0]
    assert t.kind == case.tumour_kind == PhantomOptions().kind_for_index(index)
    assert 0.8 * 20.0 * 0.8 <= t.diameter_mm <= 50.0  # 20-50 mm (a retry may shrink it by 0.8)
    lab = case.labels.array
    tumour = np.isin(lab, (Tissue.TUMOUR, Tissue.NECROSIS))
    assert abutting_share(tumour, lab, t.kind) >= ABUTTING[t.kind][1]
    if t.kind == "lung":  # enclosed by lung: almost no soft-tissue contact
        assert abutting_share(tumour, lab, "mediastinal") < 0.15


def test_cue_has_one_sign_and_the_control_a_random_one():
    cue_offsets, ctl_offsets = [], []
    for k in range(9):
        case, anat = generate_case("ct", k, 0, GRID, return_anatomy=True)
        off = anat.patient.ct_tumour_offset_hu
        assert 20.0 <= off <= 30.0
        cue_offsets.append(off)
        # without blur, the tumour's mean HU is its abutting tissue's plus the offset (+ texture)
        tumour = anat.labels == Tissue.TUMOUR
        ref = CT_HU[Tissue.MUSCLE] if case.tumour_kind == "chest-wall" else CT_HU[Tissue.MEDIASTINUM]
        sharp = ct_clean(anat, blur_vox=(0.0, 0.0, 0.0))
        zero = dataclasses.replace(anat, patient=dataclasses.replace(anat.patient, ct_tumour_offset_hu=0.0))
        base = ct_clean(zero, blur_vox=(0.0, 0.0, 0.0))
        np.testing.assert_allclose(sharp[tumour] - base[tumour], off, atol=1e-3)
        np.testing.assert_array_equal(sharp[~case.mask.array.astype(bool)], base[~case.mask.array.astype(bool)])
        # the zero-offset tumour sits at its abutting tissue's HU (+ its texture, SD 9 HU)
        assert abs(float(np.mean(base[tumour])) - ref) < 12.0
        _, ctl = generate_case("ct", k, 0, GRID, return_anatomy=True, options=PhantomOptions.control())
        ctl_offsets.append(ctl.patient.ct_tumour_offset_hu)
        assert np.array_equal(ctl.labels, anat.labels)  # the control changes the CT only
    assert all(abs(o) <= 12.0 for o in ctl_offsets)
    assert min(ctl_offsets) < 0 < max(ctl_offsets)


def test_cue_auc_is_weak_but_learnable_and_absent_in_the_control():
    """Per-voxel tumour-vs-abutting-tissue AUC on noisy CT: the issue's 0.70-0.85 band for the cue
    (pooled over cases; partial volume at the interface pulls single cases lower), ~0.5 for the control."""
    pooled = {"cue": [], "control": []}
    for name, opts in (("cue", PhantomOptions()), ("control", PhantomOptions.control())):
        for k in (1, 2, 4, 5, 7, 9, 10, 13):  # mediastinal and chest-wall cases
            case = generate_case("ct", k, 0, (32, 112, 112), options=opts)
            a, b = boundary_voxels(case.labels.array)
            if a.sum() >= 10 and b.sum() >= 10:
                pooled[name].append(separation_auc(case.image.array, a, b))
    cue, ctl = float(np.mean(pooled["cue"])), float(np.mean(pooled["control"]))
    assert len(pooled["cue"]) >= 5
    assert 0.70 <= cue <= 0.85, pooled["cue"]
    assert 0.3 <= ctl <= 0.6 and cue - ctl > 0.12, (cue, ctl)


def test_paired_oracle_is_the_same_anatomy_as_mri_on_the_ct_grid():
    opts = PhantomOptions(paired_oracle=True)
    plain = generate_case("ct", 2, 0, GRID)
    case = generate_case("ct", 2, 0, GRID, options=opts)
    assert np.array_equal(plain.image.array, case.image.array)  # the CT is unchanged
    mr = case.paired_mr
    assert mr is not None and mr.same_geometry(case.image)
    lab = case.labels.array
    tum = ndi.binary_erosion(lab == Tissue.TUMOUR)
    soft = ndi.binary_erosion(lab == Tissue.MEDIASTINUM)
    if tum.sum() > 5 and soft.sum() > 5:  # T2w: tumour clearly brighter than mediastinum
        assert mr.array[tum].mean() > 1.5 * mr.array[soft].mean()
    a, b = boundary_voxels(lab)
    if a.sum() >= 10 and b.sum() >= 10:
        assert separation_auc(mr.array, a, b) > 0.9
    assert generate_case("mr", 0, 0, GRID, options=opts).paired_mr is None


def test_options_validation_one_line_errors():
    for bad, match in [
        (dict(diameter_mm=(50, 20)), "diameter"),
        (dict(nodule_share=1.5), "nodule share"),
        (dict(kind_mix=(1, -1, 1)), "kind mix"),
        (dict(kind_mix=(0, 0, 0)), "kind mix"),
        (dict(ct_cue_hu=(25, 15)), "cue"),
        (dict(cue_sign="negative"), "cue sign"),
    ]:
        with pytest.raises(InputError, match=match) as exc:
            PhantomOptions(**bad)
        assert "\n" not in str(exc.value)
    assert PhantomOptions(kind_mix=(2, 1, 1)).kind_mix == pytest.approx((0.5, 0.25, 0.25))
    assert PhantomOptions.from_dict(PhantomOptions.control().to_dict()) == PhantomOptions.control()
    with pytest.raises(InputError, match="did you mean 'cue_sign'"):
        PhantomOptions.from_dict({"cue_sgn": "random"})


def test_cohort_records_kinds_and_paired_mri(tmp_path):
    opts = PhantomOptions(paired_oracle=True, second_tumour=1.0)
    path = generate_cohort(tmp_path / "c", 3, 0, 2, seed=1, shape=(16, 48, 48), workers=1, options=opts)
    man = Manifest.load(path)
    tumours = json.loads((tmp_path / "c" / "tumours.json").read_text())
    for c in man.select(modality="ct"):
        assert c.tumour_kind == tumours[c.id][0]["kind"] and len(tumours[c.id]) == 2
        mr = read_volume(man.paired_mr_path(c))
        assert mr.same_geometry(read_volume(man.image_path(c)))
    for c in man.select(modality="mr"):
        assert c.paired_mr is None
    assert "cue cohort" in man.description and "paired-oracle" in man.description
    raw = json.loads(path.read_text())
    assert all("paired_mr" not in c for c in raw["cases"] if c["modality"] == "mr")


def test_manifest_without_the_new_keys_stays_as_it_was(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"name": "x", "cases": [
        {"id": "a", "patient_id": "p", "modality": "ct", "image": "a.nii.gz", "split": "test"}]}))
    man = Manifest.load(tmp_path / "m.json")
    assert man.cases[0].tumour_kind is None and man.cases[0].paired_mr is None
    man.save(tmp_path / "n.json")
    case = json.loads((tmp_path / "n.json").read_text())["cases"][0]
    assert "tumour_kind" not in case and "paired_mr" not in case
    (tmp_path / "bad.json").write_text(json.dumps({"cases": [
        {"id": "a", "patient_id": "p", "modality": "ct", "image": "a.nii.gz", "tumour_kind": ""}]}))
    with pytest.raises(InputError, match="tumour_kind"):
        Manifest.load(tmp_path / "bad.json")
