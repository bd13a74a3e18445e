"""Dataset manifests: one small JSON file per data set, in the spirit of nnU-Net's ``dataset.json``.

Format (paths are relative to the manifest file's folder, or absolute)::

    {
      "name": "phantom-ct",
      "description": "free text",
      "seed": 0,                       # seed used for the split (informational)
      "cases": [
        {"id": "ct_000", "patient_id": "P000", "modality": "ct",
         "image": "images/ct_000.nii.gz", "label": "labels/ct_000.nii.gz", "split": "train"},
        ...
      ]
    }

``modality`` is one of ``ct``, ``cbct``, ``mr``; ``label`` may be null (e.g. unlabelled MRI);
``split`` is one of ``train``, ``val``, ``test``. All cases of one patient share one split.
Optional keys (written only when set): ``tumour_kind`` (a free-text stratum such as the phantom's
``lung`` / ``mediastinal`` / ``chest-wall``, which evaluation reports per kind) and ``paired_mr`` (an
MRI of the same patient on the case's image grid: the phantom's paired-oracle control arm), ``boxes`` (a
box file of axial bounding boxes on the image's grid, :mod:`cmedl.data.boxes`: weak labels; a case may
have a label, boxes or both) and ``label_source`` (``expert`` | ``pseudo``: who made the label, e.g. a
teacher's pseudo-label; only with a label).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cmedl.data.modalities import MODALITIES
from cmedl.errors import InputError, did_you_mean
from cmedl.io.volume import atomic_path

SPLITS = ("train", "val", "test")
#: values of ``Case.label_source``: an expert's mask or a teacher's pseudo-label
LABEL_SOURCES = ("expert", "pseudo")


@dataclass
class Case:
    """One image (and optional label) of one patient.

    ``id`` and ``patient_id`` given as integers (hand-written manifests) become strings; every other
    wrong type is an :class:`InputError` naming the field."""

    id: str
    patient_id: str
    modality: str
    image: str
    label: str | None = None
    split: str = "train"
    tumour_kind: str | None = None
    paired_mr: str | None = None
    boxes: str | None = None
    label_source: str | None = None

    def __post_init__(self) -> None:
        for name in ("id", "patient_id"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, str(value))
            elif not isinstance(value, str) or not value.strip():
                raise InputError(f"{name}: expected a non-empty string, got {value!r}")
        for name in ("modality", "split"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"{name}: expected a string, got {getattr(self, name)!r}")
        if self.modality not in MODALITIES:
            raise InputError(did_you_mean(self.modality, MODALITIES, "modality"))
        if self.split not in SPLITS:
            raise InputError(did_you_mean(self.split, SPLITS, "split"))
        for name in ("image", "label", "paired_mr", "boxes"):
            value = getattr(self, name)
            if (value is not None or name == "image") and (not isinstance(value, str) or not value.strip()):
                raise InputError(f"{name}: expected a file path (a non-empty string), got {value!r}")
        if self.tumour_kind is not None and (not isinstance(self.tumour_kind, str) or not self.tumour_kind.strip()):
            raise InputError(f"tumour_kind: expected a non-empty string or null, got {self.tumour_kind!r}")
        if self.label_source is not None:
            if not isinstance(self.label_source, str):
                raise InputError(f"label_source: expected one of {', '.join(LABEL_SOURCES)}, got {self.label_source!r}")
            if self.label_source not in LABEL_SOURCES:
                raise InputError(did_you_mean(self.label_source, LABEL_SOURCES, "label_source"))
            if self.label is None:
                raise InputError(f"label_source '{self.label_source}' is set but the case has no label")

    def to_dict(self) -> dict:
        """JSON form; the optional keys only when set (manifests without them stay as they were)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in _OPTIONAL_KEYS}


_CASE_KEYS = tuple(f.name for f in dataclasses.fields(Case))
_REQUIRED_KEYS = ("id", "patient_id", "modality", "image")
_OPTIONAL_KEYS = ("tumour_kind", "paired_mr", "boxes", "label_source")


def _case_from_json(index: int, item: object, path: Path) -> Case:
    """Case ``index`` of the manifest file ``path``; InputError naming the file and the case."""
    if not isinstance(item, dict):
        raise InputError(f"case {index}: expected a JSON object, got {item!r}", path)
    cid = item.get("id")
    where = f"case {index}" + (f" ('{cid}')" if isinstance(cid, (str, int)) and not isinstance(cid, bool) else "")
    for key in item:
        if key not in _CASE_KEYS:
            raise InputError(f"{where}: {did_you_mean(str(key), _CASE_KEYS, 'key')}", path)
    missing = [k for k in _REQUIRED_KEYS if k not in item]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}", path)
    try:
        return Case(**item)
    except InputError as exc:
        raise InputError(f"{where}: {exc}", path) from None


@dataclass
class Manifest:
    """A list of cases plus the folder their relative paths start from."""

    cases: list[Case] = field(default_factory=list)
    name: str = "dataset"
    description: str = ""
    seed: int | None = None
    root: Path = field(default=Path("."), repr=False)
    #: the JSON file this manifest was loaded from or last saved to (None: only in memory)
    path: Path | None = field(default=None, repr=False)

    @property
    def source(self) -> Path:
        """What messages name: the manifest file when known, else the folder paths start from."""
        return self.path if self.path is not None else self.root

    # ------------------------------------------------------------------ access
    def image_path(self, case: Case) -> Path:
        return (self.root / case.image).resolve()

    def label_path(self, case: Case) -> Path | None:
        return None if case.label is None else (self.root / case.label).resolve()

    def paired_mr_path(self, case: Case) -> Path | None:
        return None if case.paired_mr is None else (self.root / case.paired_mr).resolve()

    def boxes_path(self, case: Case) -> Path | None:
        """The case's box file (:mod:`cmedl.data.boxes`), or None when it has no boxes."""
        return None if case.boxes is None else (self.root / case.boxes).resolve()

    def select(
        self,
        split: str | Sequence[str] | None = None,
        modality: str | Sequence[str] | None = None,
        labelled: bool | None = None,
    ) -> list[Case]:
        """Cases filtered by split(s), modality(ies) and whether they have a label."""
        splits = (split,) if isinstance(split, str) else split
        mods = (modality,) if isinstance(modality, str) else modality
        out = []
        for c in self.cases:
            if splits is not None and c.split not in splits:
                continue
            if mods is not None and c.modality not in mods:
                continue
            if labelled is not None and (c.label is not None) != labelled:
                continue
            out.append(c)
        return out

    def get(self, case_id: str) -> Case:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise InputError(did_you_mean(case_id, [c.id for c in self.cases], "case id"), self.source)

    def add(self, case: Case, replace: bool = False) -> None:
        """Add a case; an existing id is an error unless ``replace``."""
        for i, c in enumerate(self.cases):
            if c.id == case.id:
                if not replace:
                    raise InputError(f"case id '{case.id}' is already in the manifest", self.source)
                self.cases[i] = case
                return
        self.cases.append(case)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "cases": [c.to_dict() for c in self.cases],
        }

    def save(self, path: str | Path) -> Path:
        """Write the manifest atomically; relative case paths are kept relative to ``path``'s folder."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.root = path.parent
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.exists():
            raise InputError("manifest not found", path)
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})", path) from None
        except OSError as exc:
            raise InputError(f"cannot read ({exc.strerror})", path) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("cases"), list):
            raise InputError("a manifest must be a JSON object with a 'cases' list", path)
        name, description, seed = raw.get("name", path.stem), raw.get("description") or "", raw.get("seed")
        if not isinstance(name, str) or not isinstance(description, str):
            raise InputError(f"'name' and 'description' must be strings, got {name!r}, {description!r}", path)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise InputError(f"'seed' must be an integer or null, got {seed!r}", path)
        cases = [_case_from_json(i, item, path) for i, item in enumerate(raw["cases"])]
        ids = [c.id for c in cases]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise InputError(f"duplicate case ids: {sorted(dup)}", path)
        m = cls(cases, name, description, seed, path.parent, path)
        check_patient_splits(m.cases, source=path)
        return m


def check_patient_splits(cases: Iterable[Case], source: str | Path | None = None) -> None:
    """Raise if any patient has cases in two splits (that would leak data between splits)."""
    seen: dict[str, str] = {}
    for c in cases:
        prev = seen.setdefault(c.patient_id, c.split)
        if prev != c.split:
            raise InputError(
                f"patient '{c.patient_id}' is in splits '{prev}' and '{c.split}'; splits must be by patient",
                source,
            )


def split_by_patient(
    cases: Sequence[Case],
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    stratify_by_modality: bool = True,
) -> list[Case]:
    """Assign ``split`` to every case so that each patient lands in exactly one split.

    Patients are shuffled with ``numpy.random.default_rng(seed)`` (per modality when
    ``stratify_by_modality``, so CT and MRI cohorts each get train/val/test) and cut by
    ``fractions`` (train, val, test). Every split with a non-zero fraction gets at least one
    patient when there are enough patients. Returns new Case objects; the input is unchanged.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise InputError(f"fractions must be three non-negative numbers (train, val, test), got {fractions}")
    fr = np.asarray(fractions, dtype=float) / float(sum(fractions))
    groups: dict[str, list[str]] = {}
    patient_mod: dict[str, str] = {}
    for c in cases:
        key = c.modality if stratify_by_modality else "all"
        if c.patient_id not in patient_mod:
            patient_mod[c.patient_id] = key
            groups.setdefault(key, []).append(c.patient_id)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for key in sorted(groups):
        patients = sorted(groups[key])
        order = rng.permutation(len(patients))
        n = len(patients)
        counts = np.floor(fr * n + 1e-9).astype(int)
        # give leftovers to the largest fractional remainders, then make sure non-zero splits are non-empty
        rem = np.maximum(fr * n - counts, 0.0)
        for i in np.argsort(-rem)[: n - counts.sum()]:
            counts[i] += 1
        for i in range(3):
            if fr[i] > 0 and counts[i] == 0 and n >= int((fr > 0).sum()):
                j = int(np.argmax(counts))
                counts[j] -= 1
                counts[i] += 1
        bounds = np.cumsum(counts)
        for rank, idx in enumerate(order):
            split = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
            assignment[patients[idx]] = split
    return [dataclasses.replace(c, split=assignment[c.patient_id]) for c in cases]
