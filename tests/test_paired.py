"""The paired-oracle data path: a case's paired MRI on its working grid, in the same slice windows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmedl.data.augment import AugmentConfig
from cmedl.data.datasets import SliceDataset, UnpairedDataset, VolumeCache, load_case
from cmedl.data.manifest import Manifest
from cmedl.data.paired import prepare_paired
from cmedl.data.phantom.cohort import generate_cohort
from cmedl.data.phantom.options import PhantomOptions
from cmedl.data.preprocess import PreprocessConfig, prepare_label, prepare_volume
from cmedl.errors import GeometryError, InputError
from cmedl.io.volume import Volume, read_volume


@pytest.fixture(scope="module")
def oracle_cohort(tmp_path_factory) -> Manifest:
    out = tmp_path_factory.mktemp("oracle") / "c"
    path = generate_cohort(out, 3, 0, 2, seed=3, shape=(12, 48, 48), workers=1,
                           options=PhantomOptions(paired_oracle=True), fractions=(1.0, 0.0, 0.0))
    return Manifest.load(path)


def _ct_and_mr(shape=(4, 90, 100)) -> tuple[Volume, Volume, np.ndarray]:
    rng = np.random.default_rng(0)
    ct = np.full(shape, -1000.0, np.float32)
    ct[:, 30:60, 40:80] = 40 + rng.normal(0, 5, (shape[0], 30, 40))  # body, off centre
    tumour = np.zeros(shape, bool)
    tumour[:, 40:48, 50:60] = True
    mr = np.where(ct > -500, 100.0, 0.0).astype(np.float32)
    mr[tumour] = 300.0  # bright tumour, the teacher's cue
    geo = dict(spacing=(0.8, 0.8, 3.0), origin=(-10.0, 5.0, 2.0), direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    return Volume(ct, **geo), Volume(mr, **geo), tumour


def test_prepare_paired_follows_the_ct_window_and_normalises_as_mri():
    ct, mr, tumour = _ct_and_mr()
    ct_pp = PreprocessConfig(modality="ct", in_plane_spacing_mm=1.0, pad_multiple=8)
    mr_pp = PreprocessConfig(modality="mr", mask_outside_body=True)
    prepared = prepare_volume(ct, ct_pp)
    out = prepare_paired(mr, prepared, mr_pp)
    assert out.shape == prepared.shape and out.dtype == np.float32
    assert prepared.resampled and prepared.crop_start != (0, 0)
    label = prepare_label(tumour.astype(np.uint8), prepared).astype(bool)
    # the paired MRI's bright tumour lies on the CT's tumour voxels of the working grid
    assert out[label].mean() > out[prepared.body & ~label].mean() + 0.5
    core = ndimage.binary_erosion(label, np.ones((1, 3, 3), bool))
    assert out[core].min() == pytest.approx(out.max(), abs=1e-5)  # percentile normalisation: tumour at the top
    assert (out[~prepared.body] == out.min()).all()  # outside the CT body: the background value


def test_prepare_paired_refuses_another_grid(tmp_path):
    ct, mr, _ = _ct_and_mr()
    prepared = prepare_volume(ct, PreprocessConfig(modality="ct"))
    moved = Volume(mr.array, mr.spacing, (0.0, 0.0, 0.0), mr.direction)
    with pytest.raises(GeometryError, match="not on its case's image grid") as exc:
        prepare_paired(moved, prepared, PreprocessConfig(modality="mr"), tmp_path / "p.nii.gz")
    assert str(exc.value).startswith(str(tmp_path / "p.nii.gz")) and "\n" not in str(exc.value)


def test_case_without_paired_mri_is_a_one_line_error(oracle_cohort):
    man = Manifest(cases=[oracle_cohort.select(modality="mr")[0]], root=oracle_cohort.root, path=oracle_cohort.path)
    with pytest.raises(InputError, match="no paired_mr"):
        load_case(man, man.cases[0], PreprocessConfig(modality="mr"), PreprocessConfig(modality="mr"))


def test_slices_carry_the_paired_window_and_augment_it_with_the_ct(oracle_cohort):
    cts = oracle_cohort.select(modality="ct")
    ct_pp, mr_pp = PreprocessConfig(modality="ct"), PreprocessConfig(modality="mr")
    with_paired = VolumeCache.load(oracle_cohort, cts, ct_pp, paired=mr_pp)
    plain = VolumeCache.load(oracle_cohort, cts, ct_pp)
    c = with_paired.cases[0]
    assert c.paired is not None and c.paired.shape == c.image.shape
    assert with_paired.nbytes == plain.nbytes + sum(x.paired.nbytes for x in with_paired.cases)
    # the paired MRI is the same anatomy: tumour brighter than the body around it
    lab = c.label.astype(bool)
    assert c.paired[lab].mean() > c.paired[c.body & ~lab].mean()
    aug = AugmentConfig(flip_prob=0.5, affine_prob=1.0, elastic_prob=0.5)
    a = SliceDataset(with_paired, (32, 32), 1.0, 6, aug, seed=5)
    b = SliceDataset(plain, (32, 32), 1.0, 6, aug, seed=5)
    for i in range(6):
        x, y = a[i], b[i]
        assert "paired" not in y and x["paired"].shape == (1, 32, 32)
        # the CT channel is what the run without the oracle draws: the arms see the same CT patches
        assert np.array_equal(x["image"].numpy(), y["image"].numpy())
        assert np.array_equal(x["label"].numpy(), y["label"].numpy())
        if x["label"].sum() > 4 and (x["label"] == 0).sum() > 4:
            m = x["label"].bool()
            assert x["paired"][m].mean() > x["paired"][~m].mean()  # warped with the CT: tumour stays bright
    mr_cache = VolumeCache.load(oracle_cohort, oracle_cohort.select(modality="mr"), mr_pp)
    pair = UnpairedDataset(a, SliceDataset(mr_cache, (32, 32), 0.5, None, False, seed=6), seed=5)
    assert pair[0]["ct_paired_mr"].shape == (1, 32, 32)


def test_phantom_paired_image_reads_back_on_the_ct_grid(oracle_cohort):
    case = oracle_cohort.select(modality="ct")[0]
    assert read_volume(oracle_cohort.paired_mr_path(case)).same_geometry(read_volume(oracle_cohort.image_path(case)))
