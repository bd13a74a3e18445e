"""The report's example slices: the best, median and worst test case of each method by DSC, with the
expert (green) and predicted contours on the slice of the largest tumour area; and, for methods with a
CT->MRI translator, pMRI slices beside real MRI and the histogram KL of pMRI vs real MRI
(:func:`cmedl.study.quality.pmri_histogram_kl`, papers Sec. V-E)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cmedl.errors import CmedlError
from cmedl.evaluation.pairing import list_masks
from cmedl.inference.translate import translate_volume
from cmedl.io import read_volume
from cmedl.methods import build_generator_from_checkpoint, get_method
from cmedl.report.html import Section, Writer, pyplot
from cmedl.report.results import MethodResults, References, safe_name
from cmedl.report.sources import Source
from cmedl.report.tables import COLOURS
from cmedl.study.quality import pmri_histogram_kl
from cmedl.training import load_checkpoint

#: test volumes translated per method for the pMRI histogram KL
KL_VOLUMES = 4


def display_window(image: np.ndarray, modality: str | None) -> tuple[float, float]:
    """CT: a soft-tissue window in HU; other modalities: 1st-99th percentile."""
    if modality == "ct":
        return -160.0, 240.0
    lo, hi = np.percentile(image, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def tumour_slice(*masks: np.ndarray) -> int:
    """The axial slice with the largest area of the first non-empty mask (the middle slice if none)."""
    for m in masks:
        if m is not None and m.any():
            return int(np.argmax(m.sum(axis=(1, 2))))
    return masks[0].shape[0] // 2


def _ranked(rows: list[dict[str, object]]) -> list[tuple[str, str]]:
    """(label, case id) of the best, median and worst case by DSC."""
    ordered = sorted(rows, key=lambda r: (float(r["dsc"]), str(r["case_id"])))  # type: ignore[arg-type]
    picks = [("best", ordered[-1]), ("median", ordered[len(ordered) // 2]), ("worst", ordered[0])]
    return [(label, str(r["case_id"])) for label, r in picks]


def examples_section(sources: Sequence[Source], results: dict[str, MethodResults], refs: References,
                     writer: Writer) -> Section:
    plt = pyplot()
    sec = Section("examples", "Example segmentations")
    if not refs.cases:
        sec.missing.append("no labelled test cases in the data manifest: no images to draw")
        return sec
    usable = []
    for k, s in enumerate(sources):
        rows = [r for r in results[s.name].rows if str(r["case_id"]) in refs.cases and "dsc" in r]
        if s.pred_dir is None:
            sec.missing.append(f"{s.name}: no predicted masks to draw")
        elif not rows:
            sec.missing.append(f"{s.name}: no scored test case to pick examples from")
        else:
            try:
                masks = list_masks(s.pred_dir)
            except CmedlError as exc:
                sec.missing.append(f"{s.name}: {exc}")
                continue
            usable.append((k, s, rows, masks))
    if not usable:
        return sec
    fig, axes = plt.subplots(len(usable), 3, figsize=(9.6, 3.3 * len(usable)), squeeze=False)
    for row_axes, (k, s, rows, masks) in zip(axes, usable):
        by_case = {str(r["case_id"]): r for r in rows}
        for ax, (label, cid) in zip(row_axes, _ranked(rows)):
            ax.axis("off")
            if cid not in masks:
                ax.set_title(f"{s.name} {label}: {cid} (no mask file)", fontsize=8)
                continue
            try:
                image = read_volume(refs.image(cid)).array
                ref = read_volume(refs.label(cid)).array > 0
                pred = read_volume(masks[cid][0]).array > 0
            except CmedlError as exc:
                ax.set_title(f"{cid}: {str(exc)[:60]}", fontsize=7)
                continue
            if pred.shape != ref.shape:
                ax.set_title(f"{cid}: mask grid differs from the image", fontsize=7)
                continue
            z = tumour_slice(ref, pred)
            lo, hi = display_window(image, refs.modality)
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi)
            for mask, colour in ((ref[z], "lime"), (pred[z], COLOURS[k % len(COLOURS)])):
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.1)
            ax.set_title(f"{s.name} {label}: {cid} z={z}, DSC {float(by_case[cid]['dsc']):.2f}", fontsize=8)  # type: ignore[arg-type]
    fig.tight_layout()
    sec.blocks.append(writer.figure(fig, "examples", "Best, median and worst test case of each method by DSC, "
                                    "on the slice of largest tumour area: expert contour green, the method's in colour."))
    return sec


def pmri_section(sources: Sequence[Source], refs: References, writer: Writer) -> Section:
    plt = pyplot()
    sec = Section("pmri", "Pseudo-MRI")
    translating = []
    for s in sources:
        if s.method is None or s.checkpoint is None:
            continue
        try:
            if "ct2mr" in get_method(s.method).translators:
                translating.append(s)
        except CmedlError:
            sec.missing.append(f"{s.name}: unknown method '{s.method}'")
    if not translating:
        sec.note("No method with a CT->MRI translator among the runs given (e.g. cmedl, pmri-cycle).")
        return sec
    manifest = refs.manifest
    mri = [c for c in manifest.select(modality="mr")] if manifest is not None else []
    if not refs.cases or not mri:
        sec.missing.append("pMRI needs test CT/CBCT cases and real MRI cases in the data manifest")
        return sec
    test_ids = sorted(refs.cases)[:KL_VOLUMES]
    mr_paths = [manifest.image_path(c) for c in mri]  # type: ignore[union-attr]
    rows = []
    for s in translating:
        try:
            gen, pre = build_generator_from_checkpoint(load_checkpoint(s.checkpoint), "ct2mr", source=s.checkpoint)
            kl = pmri_histogram_kl(s.checkpoint, [refs.image(c) for c in test_ids], mr_paths,  # type: ignore[arg-type]
                                   max_volumes=KL_VOLUMES)
            rows.append([s.name, f"{kl:.3f}", len(test_ids), min(len(mr_paths), KL_VOLUMES)])
            shown = test_ids[:3]
            fig, axes = plt.subplots(2, len(shown) + 1, figsize=(2.6 * (len(shown) + 1), 5.4), squeeze=False)
            for j, cid in enumerate(shown):
                ct = read_volume(refs.image(cid))
                z = tumour_slice(read_volume(refs.label(cid)).array > 0)
                lo, hi = display_window(ct.array, refs.modality)
                axes[0][j].imshow(ct.array[z], cmap="gray", vmin=lo, vmax=hi)
                axes[0][j].set_title(f"{cid} z={z}", fontsize=8)
                axes[1][j].imshow(translate_volume(ct, gen, pre).array[z], cmap="gray", vmin=-1, vmax=1)
                axes[1][j].set_title("pMRI", fontsize=8)
            real = read_volume(mr_paths[0]).array
            mz = tumour_slice(read_volume(manifest.label_path(mri[0])).array > 0) if mri[0].label else real.shape[0] // 2  # type: ignore[union-attr,arg-type]
            rlo, rhi = display_window(real, "mr")
            axes[1][-1].imshow(real[mz], cmap="gray", vmin=rlo, vmax=rhi)
            axes[1][-1].set_title(f"real MRI {mri[0].id} (other patient)", fontsize=8)
            axes[0][-1].text(0.5, 0.5, f"KL(pMRI || MRI)\n= {kl:.3f} nats", ha="center", va="center", fontsize=11)
            for ax in axes.ravel():
                ax.axis("off")
            fig.tight_layout()
            sec.blocks.append(writer.figure(fig, f"pmri_{safe_name(s.name)}",
                                            f"{s.name}: test CT/CBCT (top), its pseudo-MRI (bottom) and a real MRI "
                                            "of another patient (the data are unpaired)."))
        except CmedlError as exc:
            sec.missing.append(f"{s.name}: no pMRI ({exc})")
    if rows:
        sec.blocks.insert(0, writer.table(["method", "KL(pMRI || real MRI), nats", "test volumes", "MRI volumes"],
                                          rows, "pmri_kl", "Histogram KL divergence of pMRI vs real MRI inside the "
                                          "body (128 bins on the normalised range; papers: 0.079 CMEDL, 0.34 "
                                          "CycleGAN alone)"))
    return sec
