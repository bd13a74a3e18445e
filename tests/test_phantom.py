"""Tests of the synthetic thoracic phantom (cmedl.data.phantom) and `cmedl data phantom`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.manifest import Manifest
from cmedl.data.phantom import (
    Grid,
    PhantomOptions,
    Tissue,
    case_id,
    default_spacing,
    generate_case,
    generate_cohort,
    render_cbct,
    render_ct,
)
from cmedl.data.phantom import cohort
from cmedl.data.phantom.anatomy import smooth_field
from cmedl.errors import InputError
from cmedl.io import read_volume

TINY = (16, 48, 48)  # z, y, x
SMALL = (16, 64, 64)


def test_grid_and_defaults_known_answers():
    g = Grid.centred((4, 10, 20), (2.0, 3.0, 5.0), shift=(1.0, 0.0, -2.0))
    # centre of the FOV (index (n-1)/2) sits at the shift
    assert g.origin == pytest.approx((1.0 - 19.0, -13.5, -2.0 - 7.5))
    x = g.axes()[2]
    assert x[0, 0, 0] == pytest.approx(-18.0) and x[0, 0, -1] == pytest.approx(20.0)
    assert default_spacing((48, 128, 128)) == pytest.approx((346 / 128, 346 / 128, 3.0))
    assert case_id("mr", 7) == "mr_P007"
    f = smooth_field(np.random.default_rng(0), Grid.centred((20, 64, 64), (3.0, 3.0, 3.0)), 20.0)
    assert f.shape == (20, 64, 64) and f.dtype == np.float32
    assert abs(float(f.mean())) < 0.5 and 0.5 < float(f.std()) < 1.3
    # smooth: neighbouring voxels (3 mm apart, correlation length 20 mm) are highly correlated
    assert np.corrcoef(f[:, :, 1:].ravel(), f[:, :, :-1].ravel())[0, 1] > 0.9


@pytest.mark.parametrize("modality", ["ct", "cbct", "mr"])
def test_case_deterministic_and_mask_exact(modality):
    a = generate_case(modality, 3, seed=11, shape=TINY)
    b = generate_case(modality, 3, seed=11, shape=TINY)
    c = generate_case(modality, 3, seed=12, shape=TINY)
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(
        a.mask.array, b.mask.array
    )
    assert not np.array_equal(a.image.array, c.image.array)
    assert a.image.array.dtype == np.int16 and a.image.shape == TINY
    m = a.mask.array
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert a.mask.same_geometry(a.image) and a.labels.same_geometry(a.image)
    # the mask is exactly the tumour classes of the label map
    assert np.array_equal(
        m, np.isin(a.labels.array, [Tissue.TUMOUR, Tissue.NECROSIS]).astype(np.uint8)
    )
    assert a.case_id == a.patient_id == f"{modality}_P003"


def test_mr_grid_differs_from_ct_grid():
    ct = generate_case("ct", 0, 0, TINY)
    mr = generate_case("mr", 0, 0, TINY)
    assert mr.image.shape == ct.image.shape
    ratio = np.array(mr.image.spacing) / np.array(ct.image.spacing)
    assert ratio == pytest.approx((1.1 / 0.98, 0.97 / 0.98, 2.5 / 3.0))
    assert not np.allclose(mr.image.origin, ct.image.origin)


def test_ct_tumour_close_to_mediastinum_far_from_lung():
    diffs = []
    for k in range(5):
        case, anat = generate_case("ct", k, 0, (24, 96, 96), return_anatomy=True)
        img, lab = case.image.array.astype(float), anat.labels
        tum = ndi.binary_erosion(lab == Tissue.TUMOUR, structure=np.ones((1, 3, 3)))
        med = ndi.binary_erosion(lab == Tissue.MEDIASTINUM, structure=np.ones((1, 3, 3)))
        lung = ndi.binary_erosion(lab == Tissue.LUNG)
        if tum.sum() < 5 or med.sum() < 5:
            continue
        t, m, lu = img[tum].mean(), img[med].mean(), img[lung].mean()
        diffs.append(t - m)
        assert t - lu > 600, (k, t, lu)
    assert len(diffs) >= 2
    # the cue cohort: brighter than mediastinal soft tissue, but by less than 2 noise SDs (18 HU)
    assert max(abs(d) for d in diffs) < 36, diffs


def test_mr_tumour_bright_against_muscle_and_mediastinum():
    for k in range(3):
        case, anat = generate_case("mr", k, 0, SMALL, return_anatomy=True)
        img, lab = case.image.array.astype(float), anat.labels
        tum = np.median(img[ndi.binary_erosion(lab == Tissue.TUMOUR)])  # no partial volume with lung
        muscle = np.median(img[lab == Tissue.MUSCLE])
        med = np.median(img[lab == Tissue.MEDIASTINUM])
        fat = np.median(img[lab == Tissue.FAT])
        lung = np.median(img[lab == Tissue.LUNG])
        assert tum > 1.3 * muscle and tum > 1.2 * med, (k, tum, muscle, med)
        assert fat > 2 * muscle and lung < 0.4 * muscle
        assert img.min() >= 0


def test_cbct_noisier_and_lower_contrast_than_ct_of_same_anatomy():
    _, anat = generate_case("ct", 1, 0, (16, 96, 96), return_anatomy=True)
    ct = render_ct(anat, np.random.default_rng(0))
    cb = render_cbct(anat, np.random.default_rng(0))
    assert np.array_equal(render_cbct(anat, np.random.default_rng(0)), cb)
    lab = anat.labels
    inside = cb > -999  # cylindrical field of view
    assert (~inside & (lab != Tissue.AIR)).any() or (cb == -1000).any()
    fat = ndi.binary_erosion(lab == Tissue.FAT, iterations=1) & inside
    muscle = ndi.binary_erosion(lab == Tissue.MUSCLE, iterations=2) & inside  # no edge voxels

    def contrast(v):
        return v[muscle].mean() - v[fat].mean()

    def noise(v):  # residual after removing the smooth part
        return float((v - ndi.uniform_filter(v, (1, 5, 5)))[muscle].std())

    assert contrast(cb) < 0.95 * contrast(ct)
    assert noise(cb) > 1.3 * noise(ct)


def test_cohort_ids_splits_and_independence_from_size(tmp_path):
    small = generate_cohort(tmp_path / "a", 1, 0, 1, seed=4, shape=TINY, workers=1)
    big = generate_cohort(tmp_path / "b", 3, 2, 2, seed=4, shape=TINY, workers=1, mr_labels=False)
    ma, mb = Manifest.load(small), Manifest.load(big)
    # case k does not depend on how many cases are generated
    for cid in ("ct_P000", "mr_P000"):
        va = read_volume(ma.image_path(ma.get(cid)))
        vb = read_volume(mb.image_path(mb.get(cid)))
        assert np.array_equal(va.array, vb.array) and va.same_geometry(vb)
    ct_pat = {c.patient_id for c in mb.cases if c.modality in ("ct", "cbct")}
    mr_pat = {c.patient_id for c in mb.cases if c.modality == "mr"}
    assert len(ct_pat) == 5 and len(mr_pat) == 2 and not ct_pat & mr_pat
    assert all(c.label is None for c in mb.select(modality="mr"))
    assert all(c.label is not None for c in mb.select(modality=["ct", "cbct"]))
    # labels on the image grid; splits reproducible
    for c in ma.cases:
        img, lab = read_volume(ma.image_path(c)), read_volume(ma.label_path(c))
        assert img.same_geometry(lab) and lab.array.max() == 1
    again = generate_cohort(
        tmp_path / "b", 3, 2, 2, seed=4, shape=TINY, workers=1, mr_labels=False, overwrite=True
    )
    assert [c.split for c in Manifest.load(again).cases] == [c.split for c in mb.cases]
    tumours = json.loads((tmp_path / "b" / "tumours.json").read_text())
    assert set(tumours) == {c.id for c in mb.cases} and all(
        1 <= len(v) <= 2 for v in tumours.values()
    )


def test_cohort_process_pool(tmp_path):
    path = generate_cohort(tmp_path / "p", 1, 1, 0, seed=2, shape=TINY, workers=2)
    m = Manifest.load(path)
    single = generate_case("cbct", 0, 2, TINY)
    assert np.array_equal(read_volume(m.image_path(m.get("cbct_P000"))).array, single.image.array)


def test_bad_input_and_no_partial_output(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="non-negative"):
        generate_cohort(tmp_path / "x", -1, 0, 0)
    with pytest.raises(InputError, match="nothing to generate"):
        generate_cohort(tmp_path / "x", 0, 0, 0)
    with pytest.raises(InputError, match="shape"):
        generate_case("ct", 0, 0, (16, 8, 48))
    with pytest.raises(InputError, match="modality"):
        generate_case("pet", 0, 0, TINY)
    # a failure midway removes what this call wrote
    real = cohort.generate_case

    def flaky(modality, index, *a, **k):
        if modality == "mr":
            raise RuntimeError("boom")
        return real(modality, index, *a, **k)

    monkeypatch.setattr(cohort, "generate_case", flaky)
    with pytest.raises(RuntimeError):
        generate_cohort(tmp_path / "y", 2, 0, 1, shape=TINY, workers=1)
    assert not [p for p in (tmp_path / "y").rglob("*") if p.is_file()]


def test_cli_creates_cohort_and_reports_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cohort"
    args = [
        "data",
        "phantom",
        "--out",
        str(out),
        "--ct",
        "2",
        "--cbct",
        "1",
        "--mr",
        "1",
        "--size",
        "48x48x16",
        "--seed",
        "3",
        "--workers",
        "1",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    m = Manifest.load(out / "manifest.json")
    assert sorted(c.id for c in m.cases) == ["cbct_P000", "ct_P000", "ct_P001", "mr_P000"]
    img = read_volume(m.image_path(m.get("ct_P001")))
    assert img.shape == (16, 48, 48) and img.spacing == pytest.approx(default_spacing((16, 48, 48)))
    assert np.array_equal(img.array, generate_case("ct", 1, 3, (16, 48, 48)).image.array)
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already holds a manifest" in again.output
    bad = runner.invoke(app, ["data", "phantom", "--out", str(tmp_path / "z"), "--size", "48x48"])
    assert bad.exit_code == 1 and "--size" in bad.output
    assert not (tmp_path / "z").exists()
    bad = runner.invoke(app, ["data", "phantom", "--out", str(tmp_path / "z"), "--ct-cue", "20"])
    assert bad.exit_code == 1 and "--ct-cue" in bad.output and len(bad.output.strip().splitlines()) == 1
    bad = runner.invoke(app, ["data", "phantom", "--out", str(tmp_path / "z"), "--cue-sign", "negativ"])
    assert bad.exit_code == 1 and "cue sign" in bad.output and not (tmp_path / "z").exists()
    res = runner.invoke(app, [*args[:3], str(tmp_path / "c"), *args[4:], "--control", "--kind-mix", "0,1,0"])
    assert res.exit_code == 0, res.output
    m = Manifest.load(tmp_path / "c" / "manifest.json")
    assert "control cohort" in m.description and "random-sign 0..12 HU" in m.description
    assert {c.tumour_kind for c in m.select(modality="ct")} <= {"mediastinal", "lung"}
    ctl = read_volume(m.image_path(m.get("ct_P001")))
    opts = PhantomOptions.control(kind_mix=(0, 1, 0))
    assert np.array_equal(ctl.array, generate_case("ct", 1, 3, (16, 48, 48), options=opts).image.array)


# ---------------------------------------------------------------- issue 16: box-only CT cases
#: sha256 of manifest.json and of the voxel arrays of every image/label of
#: generate_cohort(out, 3, 0, 1, seed=5, shape=(8, 32, 32)) BEFORE box_only_share existed (recorded with the
#: unchanged package: git archive HEAD): the option at 0 must not change the phantom's outputs
_GOLDEN_MANIFEST = "57f583cb6b402591a8421b0319212aba602e2e0e0642a63c0ce518614dfb6f40"
_GOLDEN_ARRAYS = "c3381a57d9d5d9f4d4feb93c2efc86c73a7a09fb4e0f41f2958e880382ebe933"


def _cohort_digest(manifest_path):
    import hashlib

    from cmedl.io import read_volume

    files = sorted(str(p.relative_to(manifest_path.parent)) for p in manifest_path.parent.rglob("*") if p.is_file())
    arrays = hashlib.sha256()
    for f in files:
        if f.endswith(".nii.gz"):
            arrays.update(np.ascontiguousarray(read_volume(manifest_path.parent / f).array).tobytes())
    return hashlib.sha256(manifest_path.read_text().encode()).hexdigest(), arrays.hexdigest(), files


def test_box_only_share_zero_leaves_the_phantom_unchanged(tmp_path):
    from cmedl.data.phantom import generate_cohort
    from cmedl.data.phantom.options import PhantomOptions

    m = generate_cohort(tmp_path / "c", 3, 0, 1, seed=5, shape=(8, 32, 32), workers=1,
                        options=PhantomOptions(box_only_share=0.0, ct_cue_hu=(15, 25)))  # the defaults of then
    man, arrays, files = _cohort_digest(m)
    assert (man, arrays) == (_GOLDEN_MANIFEST, _GOLDEN_ARRAYS)
    assert not any(f.startswith("boxes/") for f in files)
    assert "box_only_share" not in PhantomOptions().to_dict()


def test_box_only_share_marks_ct_training_cases_and_writes_boxes(tmp_path):
    from typer.testing import CliRunner

    from cmedl.cli import app
    from cmedl.data.boxes import box_mask, read_boxes
    from cmedl.data.manifest import Manifest
    from cmedl.io import read_volume

    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["data", "phantom", "--out", str(out), "--ct", "5", "--cbct", "0", "--mr", "1",
                                   "--size", "32,32,8", "--seed", "5", "--workers", "1", "--box-only-share", "0.5",
                                   "--fractions", "0.6,0.2,0.2"])
    assert res.exit_code == 0, res.output
    m = Manifest.load(out / "manifest.json")
    ct = [c for c in m.cases if c.modality == "ct"]
    train = [c for c in ct if c.split == "train"]
    box_only = [c for c in ct if c.label is None]
    assert len(train) == 3 and len(box_only) == round(0.5 * 3) and all(c.split == "train" for c in box_only)
    assert all(c.boxes == f"boxes/{c.id}.json" for c in ct)
    assert all(c.boxes is None for c in m.cases if c.modality == "mr")
    for c in ct:
        image = read_volume(m.image_path(c))
        truth = read_volume(out / "labels" / f"{c.id}.nii.gz").array > 0  # written for box-only cases too
        bm = box_mask(read_boxes(m.boxes_path(c), image))
        assert truth.any() and not (truth & ~bm).any()  # the boxes enclose the whole tumour
        assert bm.sum() < 3 * truth.sum() + 200
    assert "box-only" in m.description


def test_chest_wall_at_least_min_wall_and_lungs_found_in_every_slice():
    """Case 38 of seed 0 at 48 x 128 x 128 had its lower right lung reaching the skin over 23 slices (the
    lung mask then lost it to the outside air and a chest-wall tumour fell outside the lung crops); the
    cavity is now kept MIN_WALL_MM inside the body outline."""
    from cmedl.data.lung import crop_loss, lung_crop_boxes, lung_mask
    from cmedl.data.phantom.organs import MIN_WALL_MM

    case = generate_case("ct", 38, 0, (48, 128, 128), options=PhantomOptions(ct_cue_hu=(15, 25)))
    labels = case.labels.array
    dy, dx = case.image.spacing_zyx[1:]
    depth = ndi.distance_transform_edt(labels != Tissue.AIR, sampling=(1e6, dy, dx))
    assert depth[labels == Tissue.LUNG].min() >= MIN_WALL_MM - max(dy, dx)  # rasterised to a voxel
    lungs = lung_mask(case.image)
    assert [int(np.nonzero((lungs == k).any((1, 2)))[0].min()) for k in (1, 2)] == [0, 0]
    assert crop_loss(case.mask.array > 0, lung_crop_boxes(lungs, case.image.spacing_zyx, 10.0)) == 0.0
