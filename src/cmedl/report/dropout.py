"""The report's test-time dropout section (CBCT paper's robustness analysis): N stochastic passes of
each method with its dropout layers switched on, the per-case spread of DSC (the papers' mSD: the mean
over cases of each case's SD of DSC over the passes) and an example voxel-wise SD map.

Each pass is one seeded MC-dropout forward pass of the test volume (on the slab that can matter, see
:func:`mc_passes`) through
:func:`cmedl.nets.predict.predict_slices`, restored to the input grid and thresholded at 0.5 (no
component filtering: the spread comes from the network alone, so the DSC here can differ from the
results table's). A network trained without dropout has no dropout layer and no spread: the section
says so (train with ``--set model.dropout=0.1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cmedl.data.preprocess import PreprocessConfig, prepare_label, prepare_volume, restore_to_input
from cmedl.errors import CmedlError
from cmedl.evaluation.metrics import dice
from cmedl.io import Volume, read_volume
from cmedl.methods.checkpoints import preprocess_of
from cmedl.methods.recipe import TestTimeModel
from cmedl.nets.predict import inference_copy, predict_slices
from cmedl.report.examples import display_window, tumour_slice
from cmedl.report.html import Section, Writer, pyplot
from cmedl.report.results import References, safe_name
from cmedl.report.sources import Source
from cmedl.training import load_checkpoint

DROPOUT_PASSES = 8
DROPOUT_CASES = 3
#: slices whose deterministic probability stays below this (and hold no tumour) skip the stochastic passes
ACTIVE_PROBABILITY = 0.05


def dropout_layers(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def mc_passes(net: nn.Module, image_path: Path, label: Volume, pre: PreprocessConfig, passes: int
              ) -> tuple[list[np.ndarray], np.ndarray]:
    """``passes`` binary masks on the input grid and the voxel-wise SD of the probability, for ``net`` an
    :func:`~cmedl.nets.predict.inference_copy` of a test-time model.

    For speed the stochastic passes run only on the slab that can matter: slices where the deterministic
    pass reaches probability :data:`ACTIVE_PROBABILITY` or the expert mask has tumour, +- 2 slices. Other
    slices keep the deterministic probability (below the threshold there: dropout in the last layers
    does not turn a probability under 0.05 into a confident tumour)."""
    prepared = prepare_volume(read_volume(image_path), pre)
    base, _ = predict_slices(net, prepared.image, pad_value=prepared.pad_value)
    active = (base.max(axis=(1, 2)) >= ACTIVE_PROBABILITY) | (prepare_label(label, prepared) > 0).any(axis=(1, 2))
    active = ndimage.binary_dilation(active, iterations=2) if active.any() else active
    probs = []
    for k in range(passes):
        p = base.copy()
        if active.any():
            p[active], _ = predict_slices(net, prepared.image[active], mc_dropout_samples=1, seed=k,
                                          pad_value=prepared.pad_value)
        probs.append(restore_to_input(p, prepared, is_label=False, fill_value=0.0))
    stack = np.stack(probs)
    return [s >= 0.5 for s in stack], stack.std(axis=0)


def dropout_section(sources: Sequence[Source], refs: References, writer: Writer,
                    models: dict[str, TestTimeModel]) -> Section:
    plt = pyplot()
    sec = Section("dropout", "Test-time dropout")
    if not refs.cases:
        sec.missing.append("no labelled test cases in the data manifest")
        return sec
    rows = []
    cases = sorted(refs.cases)[:DROPOUT_CASES]
    for s in sources:
        model = models.get(s.name)
        if model is None:
            continue
        if model.dims != 2:
            sec.missing.append(f"{s.name}: test-time dropout is reported for 2D networks only")
            continue
        if not dropout_layers(model):
            sec.missing.append(f"{s.name}: trained without dropout (model.dropout = 0), so test-time dropout "
                               "has no spread; train with --set model.dropout=0.1")
            continue
        try:
            pre = preprocess_of(load_checkpoint(s.checkpoint), "student", s.checkpoint)
            per_case, example = [], None
            net = inference_copy(model, torch.device("cpu"))
            for cid in cases:
                label = read_volume(refs.label(cid))
                ref = label.array > 0
                masks, sd = mc_passes(net, refs.image(cid), label, pre, DROPOUT_PASSES)
                d = np.array([dice(m, ref) for m in masks])
                per_case.append((cid, d.mean(), d.std(ddof=1)))
                if example is None or abs(d.mean() - 0.5) < abs(example[1] - 0.5):
                    example = (cid, d.mean(), sd, ref)
        except CmedlError as exc:
            sec.missing.append(f"{s.name}: {exc}")
            continue
        m_sd = float(np.mean([c[2] for c in per_case]))
        rows.append([s.name, len(per_case), DROPOUT_PASSES, f"{np.mean([c[1] for c in per_case]):.3f}",
                     f"{m_sd:.4f}", f"{max(c[2] for c in per_case):.4f}"])
        cid, mean_d, sd, ref = example  # type: ignore[misc]
        image = read_volume(refs.image(cid)).array
        z = tumour_slice(ref, sd > 0.05)
        lo, hi = display_window(image, refs.modality)
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
        axes[0].imshow(image[z], cmap="gray", vmin=lo, vmax=hi)
        if ref[z].any():
            axes[0].contour(ref[z].astype(float), levels=[0.5], colors="lime", linewidths=1)
        axes[0].set_title(f"{cid} z={z} (expert green)", fontsize=8)
        im = axes[1].imshow(sd[z], cmap="magma", vmin=0)
        fig.colorbar(im, ax=axes[1], fraction=0.046)
        axes[1].set_title("voxel-wise SD of the probability", fontsize=8)
        axes[2].bar(range(len(per_case)), [c[1] for c in per_case], yerr=[c[2] for c in per_case], color="#4477aa")
        axes[2].set_xticks(range(len(per_case)), [c[0] for c in per_case], rotation=60, fontsize=6)
        axes[2].set_ylim(0, 1)
        axes[2].set_title("DSC per case, mean ± SD over passes", fontsize=8)
        for ax in axes[:2]:
            ax.axis("off")
        fig.tight_layout()
        sec.blocks.append(writer.figure(fig, f"dropout_{safe_name(s.name)}",
                                        f"{s.name}: {DROPOUT_PASSES} test-time dropout passes; mean DSC over passes "
                                        f"{mean_d:.2f} on the case shown."))
    if not rows and not sec.missing:
        sec.missing.append("no trained network (checkpoint) among the sources: test-time dropout needs one")
    if rows:
        sec.blocks.insert(0, writer.table(
            ["method", "cases", "passes", "mean DSC", "mSD (mean per-case SD of DSC)", "max per-case SD"], rows,
            "dropout", "Spread of DSC over test-time dropout passes (threshold 0.5, no component filter)"))
    return sec
