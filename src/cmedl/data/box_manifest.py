"""Box annotations for a whole manifest (``cmedl data boxes --from-masks``): box files derived from every
label, a share of cases made box-only, a new manifest; the helpers the VOC import and the phantom share.
The box file itself is :mod:`cmedl.data.boxes`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmedl.data.boxes import boxes_from_mask, write_boxes
from cmedl.data.manifest import Case, Manifest
from cmedl.errors import InputError, did_you_mean
from cmedl.io.outputs import check_output_file, check_output_folder, writing
from cmedl.io.volume import read_volume


@dataclass
class BoxesResult:
    """What ``cmedl data boxes`` wrote."""

    manifest: Path
    box_files: list[Path]
    box_only: list[str]  # ids of the cases whose label was removed from the written manifest
    notes: list[str]


def rebased_cases(manifest: Manifest, out_manifest: Path) -> list[Case]:
    """``manifest``'s cases with their relative paths rewritten relative to ``out_manifest``'s folder."""
    root = Path(out_manifest).parent.resolve()

    def rel(p: Path | None) -> str | None:
        return None if p is None else os.path.relpath(p, root)

    return [dataclasses.replace(c, image=rel(manifest.image_path(c)), label=rel(manifest.label_path(c)),
                                paired_mr=rel(manifest.paired_mr_path(c)), boxes=rel(manifest.boxes_path(c)))
            for c in manifest.cases]


def choose_box_only(candidates: Sequence[str], share: float | None, cases: Sequence[str] | None,
                    seed: int) -> list[str]:
    """Ids that become box-only: ``cases`` as given, or ``round(share * n)`` of ``candidates`` drawn with
    ``numpy.random.default_rng(seed)`` (sorted ids, so the draw does not depend on the manifest's order)."""
    if cases:
        unknown = [c for c in cases if c not in candidates]
        if unknown:
            raise InputError(did_you_mean(unknown[0], candidates, "case (labelled) for --cases"))
        return sorted(set(cases))
    if share is None or share == 0:
        return []
    if not 0 <= share <= 1:
        raise InputError(f"--share must be in [0, 1], got {share}")
    ids = sorted(candidates)
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[: round(share * len(ids))])


def derive_manifest_boxes(manifest_path: str | Path, out_manifest: str | Path, *, share: float | None = None,
                          cases: Sequence[str] | None = None, splits: Sequence[str] = ("train",),
                          seed: int = 0) -> BoxesResult:
    """Boxes from the labels of a manifest: ``<out folder>/boxes/<case>.json`` for every labelled case, and a
    new manifest at ``out_manifest`` (never the input) where the chosen cases are box-only (label removed
    from the manifest; the label file stays on disk). Box-only cases are drawn among the labelled cases of
    ``splits`` (``share``) or named (``cases``)."""
    manifest = Manifest.load(manifest_path)
    out_manifest = Path(out_manifest)
    labelled = [c for c in manifest.cases if c.label is not None]
    if not labelled:
        raise InputError("no case has a label to derive boxes from", manifest.source)
    pool = [c.id for c in labelled if c.split in splits] if not cases else [c.id for c in labelled]
    chosen = choose_box_only(pool, share, cases, seed)
    box_dir = out_manifest.parent / "boxes"
    planned = [box_dir / f"{c.id}.json" for c in labelled]
    inputs = [manifest.source] + [manifest.label_path(c) for c in labelled]
    check_output_file(out_manifest, inputs=inputs)
    check_output_folder(box_dir, inputs=inputs, planned=planned)
    sets = {}
    for c in labelled:  # read and check everything before writing anything
        lab = read_volume(manifest.label_path(c))
        values = np.unique(lab.array)
        if not np.isin(values, (0, 1)).all():
            raise InputError(f"label is not binary (values {values[:6].tolist()})", manifest.label_path(c))
        sets[c.id] = boxes_from_mask(lab.array, lab)
    out_cases = rebased_cases(manifest, out_manifest)
    written = []
    for i, c in enumerate(out_cases):
        if c.id in sets:
            written.append(write_boxes(box_dir / f"{c.id}.json", sets[c.id]))
            boxes_rel = os.path.relpath(written[-1].resolve(), out_manifest.parent.resolve())
            box_only = c.id in chosen
            out_cases[i] = dataclasses.replace(c, boxes=boxes_rel, label=None if box_only else c.label,
                                               label_source=None if box_only else c.label_source)
    out = Manifest(out_cases, manifest.name, manifest.description, manifest.seed)
    with writing(out_manifest):
        out.save(out_manifest)
    notes = [f"{len(written)} box files ({sum(len(s) for s in sets.values())} boxes)",
             f"{len(chosen)} box-only case(s)" + (f": {', '.join(chosen)}" if len(chosen) <= 10 else "")]
    return BoxesResult(out_manifest, written, chosen, notes)


__all__ = ["BoxesResult", "choose_box_only", "derive_manifest_boxes", "rebased_cases"]
