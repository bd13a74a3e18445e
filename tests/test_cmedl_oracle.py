"""``cmedl-oracle``: CMEDL whose teacher reads the CT patient's own MRI (the phantom's control arm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmedl.data.batches import BatchKind
from cmedl.data.manifest import Manifest
from cmedl.inference.segment import segment_files, segment_volume
from cmedl.io.volume import read_volume
from cmedl.methods import build_method, load_config
from cmedl.methods.checkpoints import build_test_time_model, load_networks
from cmedl.training import load_checkpoint, train
from cmedl.training.data import build_training_data

P = 32
TINY = [
    "model.seg_base_width=4", "cyclegan.gen_base_width=4", "cyclegan.gen_n_blocks=1", "cyclegan.disc_base_width=4",
    "cyclegan.disc_n_layers=2", f"data.patch_size={P}", "training.batch_size=2", "data.samples_per_epoch=4",
    "data.val_samples=2", "cyclegan.contextual_layers=[conv1_2]", "cyclegan.contextual_max_positions=32",
    "training.device=cpu", "training.precision=fp32", "training.progress=false", "augmentation.elastic_prob=0.0",
    "model.dropout=0.0",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(method: str, *overrides: str):
    return load_config("cpu-demo", [*TINY, f"training.method={method}", *overrides])


@pytest.fixture(scope="module")
def oracle_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cmedl.data.phantom import PhantomOptions, generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("oracle"), n_ct=4, n_cbct=0, n_mr=2, seed=5, shape=(12, 48, 48),
                           workers=1, fractions=(0.5, 0.5, 0.0), options=PhantomOptions(paired_oracle=True))


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(2, 1, P, P)
    label[:, :, 10:18, 12:20] = 1.0
    ct = -0.5 + 0.1 * label + 0.1 * torch.randn(2, 1, P, P, generator=g)
    paired = -0.3 + 1.0 * label + 0.05 * torch.randn(2, 1, P, P, generator=g)
    mr = -0.3 + 0.1 * torch.randn(2, 1, P, P, generator=g)
    return {"ct": ct, "ct_label": label, "mr": mr, "mr_label": torch.zeros_like(mr),
            "mr_has_label": torch.zeros(2, dtype=torch.bool), "ct_paired_mr": paired}


def test_oracle_teacher_segments_the_paired_mri_and_the_generator_gets_no_distillation_terms():
    torch.manual_seed(0)
    oracle = build_method(tiny("cmedl-oracle"), "cpu")
    assert oracle.batch_kind is BatchKind.PAIRED_ORACLE_SLICES and oracle.batch_kind.needs_mr
    batch = _batch()
    fwd = oracle.forward_losses(batch)
    # the teacher term is the Dice of the teacher on the paired MRI (not on G(CT)): recompute it directly
    teacher = oracle.networks["teacher_mr"]
    with torch.no_grad():
        on_paired = oracle.seg_loss(teacher(batch["ct_paired_mr"]), batch["ct_label"])
        on_pmri = oracle.seg_loss(teacher(fwd["translation"].pseudo_mr), batch["ct_label"])
    assert float(fwd["s_terms"]["seg_pmri"].detach()) == pytest.approx(float(on_paired), abs=1e-5)
    assert abs(float(on_paired) - float(on_pmri)) > 1e-4  # the two inputs are distinguishable
    # the generator's loss holds the translator's terms only; the segmenters' holds the distillation
    assert {"hint", "seg_pmri"}.isdisjoint(fwd["g_terms"]) and {"hint", "seg_pmri", "seg_ct"} <= set(fwd["s_terms"])
    # plain CMEDL on the same batch: the G step does get the hint and L_seg^pM
    torch.manual_seed(0)
    cmedl = build_method(tiny("cmedl"), "cpu")
    assert {"hint", "seg_pmri"} <= set(cmedl.forward_losses(batch)["g_terms"])
    logs = oracle.training_step(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()) and "hint" in logs and "loss_g" in logs


def test_oracle_without_the_paired_mri_says_what_it_needs():
    oracle = build_method(tiny("cmedl-oracle"), "cpu")
    batch = _batch()
    del batch["ct_paired_mr"]
    with pytest.raises(KeyError, match="cmedl-oracle needs batches with 'ct_paired_mr'"):
        oracle.forward_losses(batch)


def test_oracle_batches_pair_each_ct_patch_with_its_own_mri(oracle_phantom: Path):
    data = build_training_data(tiny("cmedl-oracle"), BatchKind.PAIRED_ORACLE_SLICES, oracle_phantom)
    items = [data.train[i] for i in range(len(data.train))]
    assert all(it["ct_paired_mr"].shape == it["ct"].shape == (1, P, P) for it in items)
    tumour = [it for it in items if it["ct_label"].sum() > 4]
    assert tumour, "the tumour fraction should put tumours in some patches"
    for it in tumour:  # the patient's own MRI: its bright tumour lies on the CT patch's label
        lab = it["ct_label"].bool()
        assert float(it["ct_paired_mr"][lab].mean()) > float(it["ct_paired_mr"][~lab].mean()) + 0.3
    assert "ct_paired_mr" not in data.val[0] and "paired" not in data.val[0]  # validation: the student on CT only


def test_oracle_trains_end_to_end_and_its_checkpoint_segments_like_cmedl(oracle_phantom: Path, tmp_path: Path):
    result = train(tiny("cmedl-oracle", "training.max_epochs=1"), oracle_phantom, out_dir=tmp_path / "run")
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert ckpt["method"] == "cmedl-oracle"
    assert {"student_ct", "teacher_mr", "g_ct2mr"} <= set(ckpt["networks"])
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert "seg_pmri" in log[0] and "hint" in log[0] and len(log) >= 2
    # at test time only the student runs on the CT, as for cmedl: segment gives its probabilities
    model, pp, _ = build_test_time_model(load_checkpoint(result.last_checkpoint), result.last_checkpoint)
    assert model.recipe.networks == ("student_ct",) and model.recipe.translator is None
    case = next(c for c in Manifest.load(oracle_phantom).cases if c.modality == "ct")
    image = Manifest.load(oracle_phantom).image_path(case)
    segment_files(result.last_checkpoint, [image], tmp_path / "seg", probabilities=True, progress=False)
    student = load_networks(load_checkpoint(result.last_checkpoint), ("student_ct",))["student_ct"]
    direct = segment_volume(read_volume(image), student, pp, return_probabilities=True).probabilities.array
    got = read_volume(tmp_path / "seg" / f"{case.id}_prob.nii.gz").array
    assert np.allclose(got, direct, atol=1e-5)


def test_oracle_on_a_cohort_without_paired_mri_is_a_one_line_error(tmp_path: Path):
    from cmedl.data.phantom import generate_cohort
    from cmedl.errors import InputError

    plain = generate_cohort(tmp_path / "plain", n_ct=2, n_cbct=0, n_mr=1, seed=1, shape=(8, 32, 32), workers=1,
                            fractions=(0.5, 0.5, 0.0))
    with pytest.raises(InputError, match="paired-oracle") as exc:
        build_training_data(tiny("cmedl-oracle"), BatchKind.PAIRED_ORACLE_SLICES, plain)
    assert "\n" not in str(exc.value)


def test_cmedl_methods_lists_the_cmedl_section_for_the_variants():
    from cmedl.methods import describe_methods

    rows = {r["method"]: r for r in describe_methods()}
    for name in ("cmedl", "pmri-cmedl", "cmedl-oracle"):  # the variants read the cmedl section, not one of their own
        assert rows[name]["sections"].startswith("cmedl, translator:"), rows[name]
    assert rows["cmedl-oracle"]["batch"] == "paired-oracle-slices" and rows["ct-only"]["sections"] == "-"
    assert rows["box-teacher"]["sections"] == "box-teacher"
