"""Finding mask files and pairing predictions with references by case id.

A source (``pred`` or ``ref``) is either

- a **folder** of mask files (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ...; not recursive): the
  case id is the file name without its suffix (``ct_003.nii.gz`` -> ``ct_003``); or
- a **manifest** (a ``.json`` file, or a folder holding ``manifest.json`` and no mask files): the
  ``label`` of every labelled case (optionally of one ``split``), keyed by case id.

Every case must have both a prediction and a reference, else :class:`~cmedl.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cmedl.data.manifest import SPLITS, Manifest
from cmedl.errors import InputError, did_you_mean
from cmedl.io.volume import IMAGE_SUFFIXES


@dataclass(frozen=True)
class CasePair:
    """One prediction/reference pair to evaluate."""

    case_id: str
    pred: Path
    ref: Path
    modality: str | None = None  # from the reference (or prediction) manifest, if any


def _strip_suffix(name: str) -> str | None:
    low = name.lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return None


def list_masks(source: str | Path, split: str | None = None) -> dict[str, tuple[Path, str | None]]:
    """Map case id -> (mask path, modality or None) for a folder of masks or a manifest."""
    source = Path(source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    if split is not None and split not in SPLITS:
        raise InputError(did_you_mean(split, SPLITS, "split"))
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise InputError("expected a folder of masks or a manifest (.json)", source)
        return _manifest_masks(Manifest.load(source), source, split)
    found: dict[str, tuple[Path, str | None]] = {}
    for p in sorted(source.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        cid = _strip_suffix(p.name)
        if cid is None or p.name.lower().endswith((".raw", ".zraw")):
            continue
        if cid in found:
            raise InputError(f"two masks for case '{cid}': {found[cid][0].name} and {p.name}", source)
        found[cid] = (p, None)
    if not found and (source / "manifest.json").exists():
        return _manifest_masks(Manifest.load(source / "manifest.json"), source / "manifest.json", split)
    if not found:
        raise InputError(f"no mask files ({', '.join(IMAGE_SUFFIXES)}) found", source)
    return found


def _manifest_masks(
    manifest: Manifest, path: Path, split: str | None
) -> dict[str, tuple[Path, str | None]]:
    cases = manifest.select(split=split, labelled=True)
    if not cases:
        what = f" in split '{split}'" if split else ""
        raise InputError(f"manifest has no labelled cases{what}", path)
    return {c.id: (manifest.label_path(c), c.modality) for c in cases}


def _few(ids: Iterable[str], k: int = 5) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids)} cases)" if len(ids) > k else ""
    return ", ".join(ids[:k]) + more


def match_cases(pred: str | Path, ref: str | Path, split: str | None = None) -> list[CasePair]:
    """Pair predictions with references by case id; every case must have both (else InputError)."""
    p_map, r_map = list_masks(pred, split), list_masks(ref, split)
    no_ref = set(p_map) - set(r_map)
    no_pred = set(r_map) - set(p_map)
    if no_ref:
        raise InputError(f"predictions without a reference in {ref}: {_few(no_ref)}", pred)
    if no_pred:
        hint = " (evaluate one split of a manifest with --split)" if split is None and str(ref).endswith(".json") else ""
        raise InputError(f"references without a prediction in {pred}: {_few(no_pred)}{hint}", ref)
    return [
        CasePair(cid, p_map[cid][0], r_map[cid][0], r_map[cid][1] or p_map[cid][1]) for cid in sorted(r_map)
    ]
