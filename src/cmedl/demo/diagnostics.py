"""The demo's mechanism diagnostics: why CMEDL can (or cannot) help on this cohort.

1. **Boundary contrast**: the per-voxel AUC of tumour vs the soft tissue it abuts
   (:func:`cmedl.data.phantom.boundary.boundary_voxels`, from the phantom's tissue labels, which the
   demo regenerates for its test cases: the generator is deterministic) on the CT, and on the pMRI the
   trained CT->MRI generator draws from that CT. 0.5 = invisible. CMEDL's premise is that the pMRI
   shows the boundary better than the CT does.
2. **Teacher accuracy**: the Dice of the trained MRI teacher on the pMRI of the test CTs (against the
   CT masks) and on real MRI cases that were not used for training (against their masks).

Both are computed on the networks' working grid (the preprocessed volumes), per tumour kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cmedl.data.manifest import Case, Manifest
from cmedl.data.phantom import generate_case
from cmedl.data.phantom.boundary import boundary_voxels
from cmedl.data.phantom.options import PhantomOptions
from cmedl.data.preprocess import prepare_label, prepare_volume
from cmedl.evaluation.diagnostics import separation_auc
from cmedl.evaluation.metrics import dice
from cmedl.io import read_volume
from cmedl.methods.checkpoints import load_networks, preprocess_of
from cmedl.nets.predict import predict_slices
from cmedl.training import load_checkpoint


@dataclass
class Diagnostics:
    """Pooled AUCs and mean teacher Dice, per tumour kind (key ``all`` for every case)."""

    auc_ct: dict[str, float] = field(default_factory=dict)
    auc_pmri: dict[str, float] = field(default_factory=dict)
    teacher_dice_pmri: dict[str, float] = field(default_factory=dict)
    teacher_dice_mri: float = float("nan")
    n_mri: int = 0

    def lines(self) -> list[str]:
        kinds = list(self.auc_ct)
        out = ["mechanism diagnostics (test cases; working grid):",
               "  tumour-vs-abutting-tissue AUC   " + "  ".join(f"{k:>12}" for k in kinds)]
        out.append("    on CT                         " + "  ".join(f"{self.auc_ct[k]:12.3f}" for k in kinds))
        out.append("    on pMRI (trained generator)   " + "  ".join(f"{self.auc_pmri.get(k, float('nan')):12.3f}"
                                                             for k in kinds))
        out.append("  teacher Dice on pMRI of test CTs " + "  ".join(
            f"{self.teacher_dice_pmri.get(k, float('nan')):12.3f}" for k in kinds))
        out.append(f"  teacher Dice on real MRI (held-out MRI patients, n = {self.n_mri}): {self.teacher_dice_mri:.3f}")
        return out


def _pooled_auc(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """AUC over the pooled voxels of several cases (image, tumour side, tissue side)."""
    if not pairs:
        return float("nan")
    img = np.concatenate([np.r_[im[a], im[b]] for im, a, b in pairs])
    pos = np.concatenate([np.r_[np.ones(a.sum(), bool), np.zeros(b.sum(), bool)] for _, a, b in pairs])
    return separation_auc(img, pos, ~pos)


def mechanism_diagnostics(cmedl_checkpoint: Path, manifest: Manifest, test_cases: Sequence[Case],
                          options: PhantomOptions, seed: int, shape: tuple[int, int, int]) -> Diagnostics:
    """Diagnostics of a trained CMEDL run (its generator and teacher) on the phantom test cases."""
    ckpt = load_checkpoint(cmedl_checkpoint)
    nets = load_networks(ckpt, ("g_ct2mr", "teacher_mr"), cmedl_checkpoint)
    student_pre = preprocess_of(ckpt, "student", cmedl_checkpoint)
    mr_pre = preprocess_of(ckpt, "mr", cmedl_checkpoint)
    ct_sets: dict[str, list] = {}
    pmri_sets: dict[str, list] = {}
    dice_pmri: dict[str, list[float]] = {}
    for case in test_cases:
        index = int(case.id.rsplit("P", 1)[1])
        labels = generate_case(case.modality, index, seed, shape, options=options).labels
        volume = read_volume(manifest.image_path(case))
        prepared = prepare_volume(volume, student_pre)
        lab = prepare_label(labels, prepared)
        mask = prepare_label(read_volume(manifest.label_path(case)), prepared) > 0
        with torch.no_grad():
            pmri, _ = predict_slices(nets["g_ct2mr"], prepared.image, activation=None, pad_value=prepared.pad_value)
            prob, _ = predict_slices(nets["teacher_mr"], np.clip(pmri, -1.0, 1.0))
        kind = case.tumour_kind or "all"
        dice_pmri.setdefault(kind, []).append(dice(prob >= 0.5, mask))
        a, b = boundary_voxels(lab)
        if a.sum() >= 5 and b.sum() >= 5:
            ct_sets.setdefault(kind, []).append((prepared.image, a, b))
            pmri_sets.setdefault(kind, []).append((pmri, a, b))
    diag = Diagnostics()
    for kind in [*sorted(ct_sets), "all"]:
        ct = [p for k, v in ct_sets.items() for p in v] if kind == "all" else ct_sets[kind]
        pm = [p for k, v in pmri_sets.items() for p in v] if kind == "all" else pmri_sets[kind]
        diag.auc_ct[kind] = _pooled_auc(ct)
        diag.auc_pmri[kind] = _pooled_auc(pm)
    for kind, values in dice_pmri.items():
        diag.teacher_dice_pmri[kind] = float(np.mean(values))
    diag.teacher_dice_pmri["all"] = float(np.mean([v for vs in dice_pmri.values() for v in vs]))
    held_out = [c for c in manifest.select(modality="mr", labelled=True) if c.split != "train"]
    scores = []
    for case in held_out:
        prepared = prepare_volume(read_volume(manifest.image_path(case)), mr_pre)
        mask = prepare_label(read_volume(manifest.label_path(case)), prepared) > 0
        with torch.no_grad():
            prob, _ = predict_slices(nets["teacher_mr"], prepared.image, pad_value=prepared.pad_value)
        scores.append(dice(prob >= 0.5, mask))
    diag.teacher_dice_mri = float(np.mean(scores)) if scores else float("nan")
    diag.n_mri = len(scores)
    return diag
