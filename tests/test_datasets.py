"""Tests of cmedl.data.datasets and cmedl.data.augment on a tiny NIfTI cohort with a manifest."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cmedl.data.augment import AugmentConfig, Augmenter
from cmedl.data.datasets import SliceDataset, UnpairedDataset, VolumeCache
from cmedl.data.manifest import Case, Manifest
from cmedl.data.preprocess import PreprocessConfig
from cmedl.errors import GeometryError, InputError
from cmedl.io import Volume, write_volume

Z, N = 8, 40
CT = PreprocessConfig("ct", body_margin=2)
MR = PreprocessConfig("mr", body_margin=2)


def make_case(seed: int, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Elliptic body with lungs and a sphere tumour (slices 2..5) at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:Z, :N, :N]
    c = (N - 1) / 2
    body = ((yy - c) / 15) ** 2 + ((xx - c) / 17) ** 2 < 1
    lungs = ((yy - c) / 8) ** 2 + ((np.abs(xx - c) - 8) / 5) ** 2 < 1
    ty, tx = c + rng.integers(-3, 4), c + 8 + rng.integers(-2, 3)
    tumour = ((zz - 3.5) ** 2 * 2 + (yy - ty) ** 2 + (xx - tx) ** 2) < 10
    if modality == "mr":
        img = (
            np.where(body, 300.0, 3.0) - np.where(lungs, 280.0, 0.0) + np.where(tumour, 400.0, 0.0)
        )
    else:
        img = (
            np.where(body, 40.0, -1000.0)
            - np.where(lungs, 800.0, 0.0)
            + np.where(tumour, 800.0, 0.0)
        )
    img = img + rng.normal(0, 5, img.shape)
    return img.astype(np.float32), tumour.astype(np.uint8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """3 labelled CT patients, 2 unlabelled + 1 labelled MRI patients (other people), one manifest."""
    root = tmp_path_factory.mktemp("cohort")
    m = Manifest(name="tiny")
    geo = {"spacing": (2.7, 2.7, 3.0), "origin": (-50.0, -50.0, 0.0)}
    for i in range(3):
        img, lab = make_case(i, "ct")
        write_volume(Volume(img, **geo), root / f"images/ct_{i}.nii.gz")
        write_volume(Volume(lab, **geo), root / f"labels/ct_{i}.nii.gz")
        m.add(
            Case(
                f"ct_{i}", f"P{i}", "ct", f"images/ct_{i}.nii.gz", f"labels/ct_{i}.nii.gz", "train"
            )
        )
    for i in range(3):
        img, lab = make_case(10 + i, "mr")
        write_volume(Volume(img, spacing=(2.0, 2.0, 4.0)), root / f"images/mr_{i}.nii.gz")
        label = None
        if i == 2:
            write_volume(Volume(lab, spacing=(2.0, 2.0, 4.0)), root / f"labels/mr_{i}.nii.gz")
            label = f"labels/mr_{i}.nii.gz"
        m.add(Case(f"mr_{i}", f"M{i}", "mr", f"images/mr_{i}.nii.gz", label, "train"))
    m.save(root / "manifest.json")
    return root / "manifest.json"


@pytest.fixture(scope="module")
def ct_cache(cohort) -> VolumeCache:
    m = Manifest.load(cohort)
    return VolumeCache.load(m, m.select(modality="ct"), CT, workers=2)


# ---------------------------------------------------------------------- cache
def test_cache_loads_prepares_and_pickles(cohort, ct_cache):
    assert len(ct_cache) == 3 and ct_cache.patient_ids == {"P0", "P1", "P2"}
    c = ct_cache[1]
    assert c.case_id == "ct_1" and c.image.dtype == np.float32 and c.label.dtype == np.uint8
    assert c.image.shape == c.label.shape and c.image.shape[0] == Z
    assert c.image.shape[1] % 16 == 0 and c.image.shape[2] % 16 == 0
    # the label is cropped exactly like the image: tumour voxels are bright on the image
    assert c.label.sum() == make_case(1, "ct")[1].sum()
    assert (
        c.image[c.label > 0].mean() > 0.3 > c.image[c.label == 0].mean()
    )  # 40 HU vs mostly lung/air
    clone = pickle.loads(pickle.dumps(ct_cache))
    np.testing.assert_array_equal(clone[1].image, c.image)
    # same result as a serial load
    m = Manifest.load(cohort)
    serial = VolumeCache.load(m, m.select(modality="ct")[1:2], CT, workers=1)
    np.testing.assert_array_equal(serial[0].image, c.image)


def test_cache_rejects_wrong_modality_and_bad_label_grid(cohort, tmp_path):
    m = Manifest.load(cohort)
    with pytest.raises(
        InputError, match="mr_0.nii.gz: case 'mr_0' is mr but the preprocessing is for ct"
    ):
        VolumeCache.load(m, m.select(modality="mr")[:1], CT)
    img, lab = make_case(0, "ct")
    write_volume(Volume(img, spacing=(1, 1, 1)), tmp_path / "img.nii.gz")
    write_volume(Volume(lab, spacing=(1, 1, 2)), tmp_path / "lab.nii.gz")
    bad = Manifest([Case("x", "PX", "ct", "img.nii.gz", "lab.nii.gz")], root=tmp_path)
    with pytest.raises(GeometryError, match="different voxel grids"):
        VolumeCache.load(bad, bad.cases, CT)
    with pytest.raises(InputError, match="no cases selected"):
        VolumeCache.load(m, m.select(split="test", modality="ct"), CT)


# ---------------------------------------------------------------------- slices
def test_tumour_fraction_and_tumour_in_patch(ct_cache):
    ds = SliceDataset(
        ct_cache, patch_size=(16, 16), tumour_fraction=0.3, samples_per_epoch=200, seed=3
    )
    n_tumour = 0
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
        assert item["has_label"] is True
        case = ct_cache[int(item["case_id"][-1])]
        slice_tumour = int(case.label[item["slice_index"]].sum())
        if ds.is_tumour_sample(i):
            n_tumour += 1
            # the tumour is small (<= 7 px): the patch holds all of it
            assert item["label"].sum().item() == slice_tumour > 0
        else:
            assert slice_tumour == 0 and item["label"].sum().item() == 0
    assert abs(n_tumour - 60) <= 3
    assert ds.num_tumour_slices == 3 * 4  # slices 2..5 of each case


def test_non_tumour_patches_centred_in_body(ct_cache):
    ds = SliceDataset(ct_cache, patch_size=(8, 8), tumour_fraction=0.0, samples_per_epoch=50)
    # air is -1 after the CT window; body-centred 8x8 patches on a 40 px slice are mostly body
    share_air = np.mean([(ds[i]["image"] < -0.99).float().mean().item() for i in range(len(ds))])
    assert share_air < 0.3


def test_whole_slices_for_validation(ct_cache):
    ds = SliceDataset(ct_cache, patch_size=None, tumour_fraction=None)
    assert len(ds) == 3 * Z  # every slice holds body
    items = [ds[i] for i in range(len(ds))]
    assert {it["image"].shape for it in items} == {(1, *ds.full_size)}
    assert sum(it["label"].sum().item() for it in items) == sum(
        int(c.label.sum()) for c in ct_cache.cases
    )
    assert [(it["case_id"], it["slice_index"]) for it in items[:2]] == [("ct_0", 0), ("ct_0", 1)]


def test_same_seed_and_epoch_same_samples(ct_cache):
    def batch(seed: int, epoch: int) -> torch.Tensor:
        ds = SliceDataset(ct_cache, (16, 16), samples_per_epoch=12, augment=True, seed=seed)
        ds.set_epoch(epoch)
        return torch.stack([ds[i]["image"] for i in range(len(ds))])

    a = batch(0, 1)
    assert torch.equal(a, batch(0, 1))
    assert not torch.equal(a, batch(0, 2))
    assert not torch.equal(a, batch(1, 1))


def test_unlabelled_mr_has_zero_labels(cohort):
    m = Manifest.load(cohort)
    cache = VolumeCache.load(m, m.select(split="train", modality="mr", labelled=False), MR)
    ds = SliceDataset(cache, (16, 16), samples_per_epoch=20)
    for i in range(len(ds)):
        it = ds[i]
        assert it["has_label"] is False and it["label"].sum() == 0
        assert -1.0 <= it["image"].min() and it["image"].max() <= 1.0


def test_dataloader_workers_match_single_process(ct_cache):
    ds = SliceDataset(ct_cache, (16, 16), samples_per_epoch=16, augment=True, seed=5)
    ds.set_epoch(2)

    def collect(workers: int) -> list[dict]:
        loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)
        return list(loader)

    single, multi = collect(0), collect(2)
    assert len(single) == len(multi) == 4
    for a, b in zip(single, multi):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert a["case_id"] == b["case_id"]
        assert a["image"].shape == (4, 1, 16, 16) and a["has_label"].dtype == torch.bool


# ---------------------------------------------------------------------- augmentation
def test_augmentation_keeps_image_and_mask_aligned_and_binary():
    aug = Augmenter(
        AugmentConfig(flip_prob=1.0, affine_prob=1.0, elastic_prob=1.0, rotate_deg=30, scale=0.2)
    )
    rng = np.random.default_rng(0)
    for seed in range(5):
        mask = np.zeros((1, 64, 64), np.float32)
        y, x = rng.integers(15, 45, size=2)
        mask[0, y - 8 : y + 8, x - 5 : x + 12] = 1
        img, lab = aug(mask * 1.0, mask, seed=seed)
        assert set(torch.unique(lab).tolist()) <= {0.0, 1.0}
        assert not torch.equal(lab, torch.from_numpy(mask))  # it did move
        agree = ((img > 0.5) == (lab > 0.5)).float().mean().item()
        inter = ((img > 0.5) & (lab > 0.5)).sum().item()
        union = ((img > 0.5) | (lab > 0.5)).sum().item()
        assert agree > 0.99 and inter / union > 0.9
        img2, lab2 = aug(mask, mask, seed=seed)
        assert torch.equal(img, img2) and torch.equal(lab, lab2)


def test_flip_is_left_right_and_identity_config():
    img = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    lab = np.zeros_like(img)
    lab[0, :, 0] = 1
    out, out_lab = Augmenter(AugmentConfig(flip_prob=1.0, affine_prob=0.0, elastic_prob=0.0))(
        img, lab, 0
    )
    np.testing.assert_array_equal(out.numpy(), img[:, :, ::-1])
    np.testing.assert_array_equal(out_lab.numpy(), lab[:, :, ::-1])
    ident = Augmenter(AugmentConfig(flip_prob=0, affine_prob=0, elastic_prob=0))
    assert torch.equal(ident(img, lab, 1)[0], torch.from_numpy(img))
    cfg = AugmentConfig(elastic_prob=0.05)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------- unpaired
def test_unpaired_dataset(cohort, ct_cache):
    m = Manifest.load(cohort)
    ct = SliceDataset(ct_cache, (16, 16), samples_per_epoch=10)
    mr_cache = VolumeCache.load(m, m.select(modality="mr"), MR)
    un = UnpairedDataset(ct, SliceDataset(mr_cache, (16, 16), seed=1))
    it = un[3]
    assert set(it) >= {
        "ct",
        "ct_label",
        "mr",
        "mr_label",
        "mr_has_label",
        "ct_case_id",
        "mr_case_id",
    }
    assert it["ct_case_id"].startswith("ct_") and it["mr_case_id"].startswith("mr_")
    assert it["mr"].shape == it["ct"].shape == (1, 16, 16)
    assert torch.equal(it["ct"], ct[3]["image"])  # CT order follows the CT dataset
    assert len({un[i]["mr_case_id"] for i in range(10)}) > 1  # MRI drawn independently
    with pytest.raises(InputError, match="share patients P0, P1, P2"):
        UnpairedDataset(ct, SliceDataset(ct_cache, (16, 16)))
    batch = next(iter(DataLoader(un, batch_size=4)))
    assert batch["ct"].shape == batch["mr"].shape == (4, 1, 16, 16)
