"""Which cases feed training: :func:`select_cases`, the one place that picks them.

The student (CT or CBCT) trains on the labelled cases of the ``train`` split of its manifest and is
validated on the labelled cases of its ``val`` split. Methods that need MRI (``BatchKind.needs_mr``)
take it from ``mr_manifest`` when given (``cmedl train --mr-data``), else from the MRI cases of the
student's manifest: the ``train`` split of that manifest, or every MRI case when none is in the
``train`` split (a separate MRI set is often unsplit). MRI must come from other patients than the student's
cases (CMEDL is unpaired); labelled and unlabelled MRI are both used (the teacher's real-MRI loss
skips the unlabelled ones).

Labels may be expert contours or a teacher's pseudo labels (the manifest's ``label_source``,
``cmedl pseudo-label``). ``labels="expert"`` (the teacher-student paper's teachers and baseline)
keeps the expert-labelled cases only; ``labels="any"`` every labelled case. Box-only cases (boxes,
no label) never train a method that needs masks: a selection left with none names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmedl.data.manifest import Case, Manifest
from cmedl.errors import InputError


@dataclass
class CaseSelection:
    """The cases of one training run, with the manifests they come from."""

    manifest: Manifest
    train: list[Case]
    val: list[Case]
    mr_manifest: Manifest | None = None
    mr_train: list[Case] = field(default_factory=list)


def check_disjoint_patients(student_ids: set[str] | list[str], mr_ids: set[str] | list[str], modality: str = "ct",
                            where: str | Path | None = None) -> None:
    """Unpaired training needs MRI of other patients: InputError listing shared patient ids otherwise."""
    shared = sorted(set(student_ids) & set(mr_ids))
    if shared:
        more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
        raise InputError(f"MRI and {modality} cases share patients {', '.join(shared[:5])}{more}; unpaired training "
                         "needs MRI of other patients", where)


def as_manifest(manifest: Manifest | str | Path) -> Manifest:
    """A loaded manifest, or the one at ``manifest`` (a file or its folder)."""
    return manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)


#: which labels a selection accepts
LABEL_CHOICES = ("any", "expert")


def is_pseudo(case: Case) -> bool:
    """Whether the case's label was made by a teacher (``label_source: pseudo``)."""
    return case.label is not None and getattr(case, "label_source", None) == "pseudo"


def is_box_only(case: Case) -> bool:
    """A case with a box file and no label (weakly annotated)."""
    return case.label is None and getattr(case, "boxes", None) is not None


def _labelled(manifest: Manifest, split: str, modality: str, labels: str = "any") -> list[Case]:
    cases = manifest.select(split=split, modality=modality, labelled=True)
    if labels == "expert":
        cases = [c for c in cases if not is_pseudo(c)]
    if not cases:
        every = manifest.select(split=split, modality=modality)
        n_box = sum(is_box_only(c) for c in every)
        n_pseudo = sum(is_pseudo(c) for c in every)
        kind = "expert-labelled" if labels == "expert" else "labelled"
        why = []
        if n_box:
            why.append(f"{n_box} box-only (this method needs masks; `cmedl pseudo-label` makes them)")
        if n_pseudo and labels == "expert":
            why.append(f"{n_pseudo} pseudo-labelled (this method trains on expert masks only)")
        raise InputError(f"no {kind} {modality} cases in split '{split}'" + (f": {len(every)} cases, "
                         + " and ".join(why) if why else ""), manifest.source)
    return cases


def select_mr(student_cases: list[Case], manifest: Manifest, mr_manifest: Manifest | None,
              modality: str) -> tuple[Manifest, list[Case]]:
    """The MRI training cases (see the module docstring) and the manifest they belong to."""
    chosen = mr_manifest if mr_manifest is not None else manifest
    mr_cases = chosen.select(modality="mr")
    where = chosen.source
    if not mr_cases:
        raise InputError("no mr cases for the teacher (add MRI to the manifest or give --mr-data)", where)
    check_disjoint_patients([c.patient_id for c in student_cases], [c.patient_id for c in mr_cases], modality, where)
    return chosen, [c for c in mr_cases if c.split == "train"] or mr_cases


def select_cases(manifest: Manifest | str | Path, mr_manifest: Manifest | str | Path | None, modality: str,
                 needs_mr: bool, labels: str = "any") -> CaseSelection:
    """Pick the training, validation and (``needs_mr``) MRI cases; every check runs before any image
    is read. ``labels``: ``any`` labelled case, or ``expert`` labels only (see the module docstring).
    Raises :class:`InputError` naming the manifest for a missing modality, split or MRI, MRI of the
    student's patients, or no usable label (box-only or pseudo-labelled cases named)."""
    if labels not in LABEL_CHOICES:
        raise ValueError(f"labels must be one of {LABEL_CHOICES}, got {labels!r}")
    manifest = as_manifest(manifest)
    mr = as_manifest(mr_manifest) if mr_manifest is not None else None
    student_cases = manifest.select(modality=modality)
    if not student_cases:
        raise InputError(f"no {modality} cases (data.modality is '{modality}')", manifest.source)
    mr_source, mr_train = select_mr(student_cases, manifest, mr, modality) if needs_mr else (None, [])
    return CaseSelection(manifest, _labelled(manifest, "train", modality, labels),
                         _labelled(manifest, "val", modality, labels), mr_source, mr_train)


__all__ = ["LABEL_CHOICES", "CaseSelection", "as_manifest", "check_disjoint_patients", "is_box_only", "is_pseudo",
           "select_cases", "select_mr"]
