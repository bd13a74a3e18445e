import json

import pytest

from cmedl.data.manifest import Case, Manifest, split_by_patient
from cmedl.errors import InputError


def _cases(n_patients=10, per_patient=2, modality="ct"):
    return [
        Case(f"{modality}_{p}_{k}", f"{modality}P{p}", modality, f"img/{p}_{k}.nii.gz", f"lab/{p}_{k}.nii.gz")
        for p in range(n_patients)
        for k in range(per_patient)
    ]


def test_split_is_by_patient_reproducible_and_covers_all_splits():
    cases = _cases(10) + _cases(5, 1, "mr")
    a = split_by_patient(cases, (0.6, 0.2, 0.2), seed=3)
    b = split_by_patient(cases, (0.6, 0.2, 0.2), seed=3)
    c = split_by_patient(cases, (0.6, 0.2, 0.2), seed=4)
    assert [x.split for x in a] == [x.split for x in b]
    assert [x.split for x in a] != [x.split for x in c]
    per_patient = {}
    for x in a:
        per_patient.setdefault(x.patient_id, set()).add(x.split)
    assert all(len(s) == 1 for s in per_patient.values())
    ct_splits = [x.split for x in a if x.modality == "ct" and x.id.endswith("_0")]
    assert ct_splits.count("train") == 6 and ct_splits.count("val") == 2 and ct_splits.count("test") == 2
    assert {x.split for x in a if x.modality == "mr"} == {"train", "val", "test"}


def test_save_load_round_trip_and_relative_paths(tmp_path):
    m = Manifest(split_by_patient(_cases(3), seed=0), name="demo")
    path = m.save(tmp_path / "sub" / "manifest.json")
    back = Manifest.load(path)
    assert [c.id for c in back.cases] == [c.id for c in m.cases]
    assert back.image_path(back.cases[0]) == (tmp_path / "sub" / "img/0_0.nii.gz").resolve()
    assert back.select(modality="ct", split="train") == [c for c in back.cases if c.split == "train"]


def test_bad_manifests_raise_one_line(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Manifest.load(p)
    p.write_text(json.dumps({"cases": [{"id": "a", "patient_id": "P", "modality": "ctt", "image": "x"}]}))
    with pytest.raises(InputError, match="did you mean 'ct'"):
        Manifest.load(p)
    leak = [
        {"id": "a", "patient_id": "P", "modality": "ct", "image": "x", "split": "train"},
        {"id": "b", "patient_id": "P", "modality": "ct", "image": "y", "split": "test"},
    ]
    p.write_text(json.dumps({"cases": leak}))
    with pytest.raises(InputError, match="splits must be by patient"):
        Manifest.load(p)


# ---------------------------------------------------------------- issue 16: boxes and label_source
def test_boxes_and_label_source_round_trip_and_are_written_only_when_set(tmp_path):
    cases = [
        Case("a", "P0", "ct", "img/a.nii.gz", label="lab/a.nii.gz", label_source="expert"),
        Case("b", "P1", "ct", "img/b.nii.gz", boxes="boxes/b.json"),
        Case("c", "P2", "ct", "img/c.nii.gz", label="lab/c.nii.gz", boxes="boxes/c.json", label_source="pseudo"),
        Case("d", "P3", "ct", "img/d.nii.gz", label="lab/d.nii.gz"),
    ]
    path = Manifest(cases).save(tmp_path / "m.json")
    raw = json.loads(path.read_text())["cases"]
    assert "boxes" not in raw[0] and raw[0]["label_source"] == "expert"
    assert raw[1]["boxes"] == "boxes/b.json" and "label_source" not in raw[1] and raw[1]["label"] is None
    assert set(raw[3]) == {"id", "patient_id", "modality", "image", "label", "split"}
    back = Manifest.load(path)
    assert back.cases == cases
    assert back.boxes_path(back.cases[1]) == (tmp_path / "boxes/b.json").resolve()
    assert back.boxes_path(back.cases[0]) is None


def test_bad_boxes_and_label_source_fields(tmp_path):
    p = tmp_path / "m.json"
    base = {"id": "a", "patient_id": "P", "modality": "ct", "image": "x", "label": "y"}
    for extra, needle in [({"label_source": "expret"}, "did you mean 'expert'"),
                          ({"label_source": 3}, "label_source: expected one of"),
                          ({"boxes": ""}, "boxes: expected a file path"),
                          ({"label": None, "label_source": "pseudo"}, "has no label")]:
        p.write_text(json.dumps({"cases": [{**base, **extra}]}))
        with pytest.raises(InputError, match=needle) as err:
            Manifest.load(p)
        assert str(err.value).startswith(str(p)) and "case 0 ('a')" in str(err.value)
