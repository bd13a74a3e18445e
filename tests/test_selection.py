"""Case selection (cmedl.data.selection) and the training data built from it (cmedl.training.data):
the one path the trainer uses, with --mr-data, the unsplit-MRI fallback and the unpaired checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmedl.data.batches import BatchKind
from cmedl.data.datasets import UnpairedDataset
from cmedl.data.manifest import Case, Manifest
from cmedl.data.selection import select_cases
from cmedl.errors import InputError
from cmedl.io import Volume, write_volume
from cmedl.methods import load_config
from cmedl.training.data import build_training_data


def _write_case(root: Path, case_id: str, patient: str, modality: str, split: str, label: bool) -> Case:
    rng = np.random.default_rng(abs(hash(case_id)) % 2**32)
    z, n = 6, 32
    zz, yy, xx = np.mgrid[:z, :n, :n]
    body = ((yy - 15.5) / 13) ** 2 + ((xx - 15.5) / 14) ** 2 < 1
    tumour = ((zz - 2.5) ** 2 + (yy - 14) ** 2 + (xx - 18) ** 2) < 9
    base = (np.where(body, 40.0, -1000.0) if modality == "ct" else np.where(body, 300.0, 3.0)) + 300.0 * tumour
    img = (base + rng.normal(0, 5, base.shape)).astype(np.float32)
    write_volume(Volume(img, spacing=(2.0, 2.0, 3.0)), root / f"images/{case_id}.nii.gz")
    lab = None
    if label:
        write_volume(Volume(tumour.astype(np.uint8), spacing=(2.0, 2.0, 3.0)), root / f"labels/{case_id}.nii.gz")
        lab = f"labels/{case_id}.nii.gz"
    return Case(case_id, patient, modality, f"images/{case_id}.nii.gz", lab, split)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CT manifest (train/val, plus MRI: a train and a test MRI patient), a separate unsplit MRI
    manifest, and one whose MRI comes from a CT patient."""
    root = tmp_path_factory.mktemp("selection")
    ct = Manifest(name="ct")
    for i, split in enumerate(["train", "train", "val", "test"]):
        ct.add(_write_case(root / "ct", f"ct_{i}", f"P{i}", "ct", split, True))
    ct.add(_write_case(root / "ct", "mr_in", "M9", "mr", "train", True))
    ct.add(_write_case(root / "ct", "mr_test", "M8", "mr", "test", True))
    mr = Manifest(name="mr")
    for i in range(3):  # "unsplit": no case in the train split
        mr.add(_write_case(root / "mr", f"mr_{i}", f"M{i}", "mr", "test", i == 0))
    same = Manifest(name="same")
    same.add(_write_case(root / "same", "mr_P0", "P0", "mr", "train", True))
    return {"ct": ct.save(root / "ct" / "manifest.json"), "mr": mr.save(root / "mr" / "manifest.json"),
            "same": same.save(root / "same" / "manifest.json")}


def test_selection_splits_and_mri_sources(cohorts: dict[str, Path]) -> None:
    sel = select_cases(cohorts["ct"], None, "ct", needs_mr=True)
    assert [c.id for c in sel.train] == ["ct_0", "ct_1"] and [c.id for c in sel.val] == ["ct_2"]
    assert [c.id for c in sel.mr_train] == ["mr_in"]  # the train-split MRI of the same manifest
    sel = select_cases(cohorts["ct"], cohorts["mr"], "ct", needs_mr=True)  # --mr-data: unsplit -> every case
    assert [c.id for c in sel.mr_train] == ["mr_0", "mr_1", "mr_2"] and sel.mr_manifest.name == "mr"
    assert select_cases(cohorts["ct"], None, "ct", needs_mr=False).mr_train == []


def test_selection_errors_name_the_manifest(cohorts: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=r"same/manifest.json: MRI and ct cases share patients P0"):
        select_cases(cohorts["ct"], cohorts["same"], "ct", needs_mr=True)
    with pytest.raises(InputError, match=r"mr/manifest.json: no cbct cases"):
        select_cases(cohorts["mr"], None, "cbct", needs_mr=False)
    with pytest.raises(InputError, match=r"ct_only.json: no mr cases for the teacher"):
        select_cases(_only_ct(cohorts), None, "ct", needs_mr=True)


def _only_ct(cohorts: dict[str, Path]) -> Path:
    m = Manifest.load(cohorts["ct"])
    out = Manifest([c for c in m.cases if c.modality == "ct"], name="ct-only-cases", root=m.root)
    return out.save(m.root / "ct_only.json")


def test_training_data_of_each_batch_kind_uses_the_selection(cohorts: dict[str, Path]) -> None:
    cfg = load_config("cpu-demo", ["data.patch_size=16", "data.samples_per_epoch=4", "data.val_samples=2", "training.batch_size=2",
                                   "data.patch_size_3d=[4, 16, 16]", "training.progress=false"])
    unpaired = build_training_data(cfg, BatchKind.UNPAIRED_SLICES, cohorts["ct"], cohorts["mr"])
    assert isinstance(unpaired.train, UnpairedDataset) and unpaired.mr_pp is not None
    assert unpaired.train.mr.cache.patient_ids == {"M0", "M1", "M2"}  # --mr-data, unsplit fallback
    assert unpaired.train.ct.cache.patient_ids == {"P0", "P1"} and unpaired.val_cache.patient_ids == {"P2"}
    item = unpaired.train[0]
    assert item["ct"].shape == item["mr"].shape == (1, 16, 16)
    own = build_training_data(cfg, BatchKind.UNPAIRED_SLICES, cohorts["ct"])
    assert own.train.mr.cache.patient_ids == {"M9"}  # the MRI of the CT manifest, train split only
    labelled = build_training_data(cfg, BatchKind.LABELLED_SLICES, cohorts["ct"])
    assert labelled.mr_pp is None and labelled.train[0]["image"].shape == (1, 16, 16)
    vol = build_training_data(cfg, BatchKind.LABELLED_PATCHES_3D, cohorts["ct"])
    assert vol.train[0]["image"].shape == (1, 4, 16, 16)
