"""Box files (cmedl.data.boxes): derivation from masks, rasterising, centres, reading with checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmedl.data.boxes import (
    AxialBox,
    BoxGeometry,
    BoxSet,
    box_centres,
    box_label_map,
    box_mask,
    boxes_from_label_map,
    boxes_from_mask,
    centre_mask,
    read_boxes,
    write_boxes,
)
from cmedl.errors import GeometryError, InputError
from cmedl.io import Volume


def _ref(shape=(6, 20, 24)) -> Volume:
    return Volume(np.zeros(shape, np.int16), spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 30.0))


def _two_lesions() -> np.ndarray:
    m = np.zeros((6, 20, 24), bool)
    m[1, 2:5, 3:7] = True  # lesion 1, slices 1-2
    m[2, 3:8, 4:6] = True
    m[4, 10:12, 15:20] = True  # lesion 2 (not touching lesion 1), slice 4 only
    return m


def test_boxes_from_mask_known_answer_half_open_and_lesion_ids():
    bs = boxes_from_mask(_two_lesions(), _ref())
    assert [b.to_dict() for b in bs.boxes] == [
        {"slice": 1, "x0": 3, "y0": 2, "x1": 7, "y1": 5, "lesion": 1},
        {"slice": 2, "x0": 4, "y0": 3, "x1": 6, "y1": 8, "lesion": 1},
        {"slice": 4, "x0": 15, "y0": 10, "x1": 20, "y1": 12, "lesion": 2},
    ]
    assert bs.slices() == [1, 2, 4] and bs.lesions() == [1, 2]
    assert bs.geometry.size == (24, 20, 6) and bs.shape == (6, 20, 24)
    assert bs.bounding_box() == (slice(1, 5), slice(2, 12), slice(3, 20))


def test_box_mask_covers_the_mask_and_is_the_per_slice_bounding_box():
    m = _two_lesions()
    bm = box_mask(boxes_from_mask(m, _ref()))
    assert bm.dtype == bool and not (m & ~bm).any()  # every tumour voxel is inside a box
    assert bm.sum() == 4 * 3 + 2 * 5 + 5 * 2
    assert bm[1, 2:5, 3:7].all() and not bm[1, 5, 3] and not bm[1, 2, 7]
    lm = box_label_map(boxes_from_mask(m, _ref()))
    assert set(np.unique(lm)) == {0, 1, 2} and (lm[4, 10:12, 15:20] == 2).all()
    # round trip: boxes of the box label map are the same boxes
    assert boxes_from_label_map(lm, _ref()).boxes == boxes_from_mask(m, _ref()).boxes


def test_centres_lower_middle_voxel():
    bs = BoxSet((AxialBox(1, 3, 2, 7, 5), AxialBox(4, 15, 10, 20, 12)), BoxGeometry.of(_ref()))
    assert box_centres(bs).tolist() == [[1, 3, 4], [4, 10, 17]]
    cm = centre_mask(bs)
    assert cm.sum() == 2 and cm[1, 3, 4] and cm[4, 10, 17]
    assert box_centres(BoxSet((), BoxGeometry.of(_ref()))).shape == (0, 3)


def test_write_read_round_trip_and_file_layout(tmp_path):
    ref = _ref()
    bs = boxes_from_mask(_two_lesions(), ref)
    p = write_boxes(tmp_path / "boxes" / "case.json", bs)
    raw = json.loads(p.read_text())
    assert raw["format"] == "cmedl-boxes" and raw["version"] == 1
    assert raw["image"] == {"size": [24, 20, 6], "spacing": [0.8, 0.9, 2.5], "origin": [-10.0, 5.0, 30.0],
                            "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}
    back = read_boxes(p, ref)
    assert back == bs
    assert [x.name for x in p.parent.iterdir()] == ["case.json"]  # nothing temporary left


def _write_raw(tmp_path, boxes, **image):
    geo = {"size": [24, 20, 6], "spacing": [0.8, 0.9, 2.5], "origin": [-10.0, 5.0, 30.0],
           "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    geo.update(image)
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"format": "cmedl-boxes", "version": 1, "image": geo, "boxes": boxes}))
    return p


@pytest.mark.parametrize(
    ("box", "needle"),
    [
        ({"slice": 6, "x0": 0, "y0": 0, "x1": 2, "y1": 2}, "slices 0..5 only"),
        ({"slice": -1, "x0": 0, "y0": 0, "x1": 2, "y1": 2}, "slices 0..5 only"),
        ({"slice": 0, "x0": 20, "y0": 0, "x1": 25, "y1": 2}, "outside the image"),
        ({"slice": 0, "x0": 0, "y0": -1, "x1": 2, "y1": 2}, "outside the image"),
        ({"slice": 0, "x0": 3, "y0": 0, "x1": 3, "y1": 2}, "is empty"),
        ({"slice": 0, "x0": 1.5, "y0": 0, "x1": 3, "y1": 2}, "expected an integer"),
        ({"slice": 0, "x0": 0, "y0": 0, "x1": 3}, "missing y1"),
        ({"slice": 0, "x0": 0, "y0": 0, "x1": 3, "y1": 2, "lesoin": 1}, "unknown key"),
        ({"slice": 0, "x0": 0, "y0": 0, "x1": 3, "y1": 2, "lesion": 0}, "lesion must be"),
    ],
)
def test_bad_boxes_are_one_line_errors_naming_the_file(tmp_path, box, needle):
    p = _write_raw(tmp_path, [box])
    with pytest.raises(InputError, match=needle) as err:
        read_boxes(p)
    assert str(err.value).startswith(str(p)) and "\n" not in str(err.value)


def test_geometry_mismatch_and_bad_files(tmp_path):
    p = _write_raw(tmp_path, [{"slice": 0, "x0": 0, "y0": 0, "x1": 2, "y1": 2}])
    read_boxes(p, _ref())  # same grid: fine
    with pytest.raises(GeometryError, match=r"b.json: box file was made for another image.*size"):
        read_boxes(p, _ref((7, 20, 24)))
    shifted = Volume(np.zeros((6, 20, 24)), spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 32.5))
    with pytest.raises(GeometryError, match="origin"):
        read_boxes(p, shifted)
    p2 = _write_raw(tmp_path, [], spacing=[0.8, 0, 2.5])
    with pytest.raises(InputError, match="spacing must be positive"):
        read_boxes(p2)
    p2.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_boxes(p2)
    p2.write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a box file"):
        read_boxes(p2)
    with pytest.raises(InputError, match="not found"):
        read_boxes(tmp_path / "missing.json")


def test_mask_shape_mismatch_and_rasterising_on_a_smaller_grid():
    with pytest.raises(GeometryError, match="differs"):
        boxes_from_mask(np.zeros((5, 20, 24), bool), _ref())
    bs = boxes_from_mask(_two_lesions(), _ref())
    with pytest.raises(GeometryError, match="outside the image"):
        box_mask(bs, (6, 20, 16))


# ---------------------------------------------------------------- cmedl data boxes
def _dataset(tmp_path):
    from cmedl.data.manifest import Case, Manifest
    from cmedl.io import write_volume

    cases = []
    for i in range(4):
        ref = _ref()
        m = np.zeros(ref.shape, np.uint8)
        m[1 + i % 3, 2:5, 3 + i:7 + i] = 1
        write_volume(ref, tmp_path / "data" / "images" / f"c{i}.nii.gz")
        write_volume(ref.with_array(m), tmp_path / "data" / "labels" / f"c{i}.nii.gz")
        cases.append(Case(f"c{i}", f"P{i}", "ct", f"images/c{i}.nii.gz", f"labels/c{i}.nii.gz",
                          split="test" if i == 3 else "train"))
    return Manifest(cases, name="d").save(tmp_path / "data" / "manifest.json")


def test_cli_from_masks_share_makes_box_only_cases_in_a_new_manifest(tmp_path):
    from typer.testing import CliRunner

    from cmedl.cli import app
    from cmedl.data.manifest import Manifest

    src = _dataset(tmp_path)
    before = src.read_text()
    out = tmp_path / "weak" / "manifest.json"
    res = CliRunner().invoke(app, ["data", "boxes", str(src), "--out", str(out), "--from-masks", "--share", "0.67",
                                   "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert src.read_text() == before  # the input is untouched
    m = Manifest.load(out)
    box_only = [c.id for c in m.cases if c.label is None]
    assert len(box_only) == 2 and "c3" not in box_only  # round(0.67 * 3 train cases); never the test case
    for c in m.cases:
        assert m.boxes_path(c) == (out.parent / "boxes" / f"{c.id}.json").resolve()
        assert m.image_path(c) == (src.parent / "images" / f"{c.id}.nii.gz").resolve()  # rebased paths
        bs = read_boxes(m.boxes_path(c), _ref())
        i = int(c.id[1])
        assert [b.to_dict() for b in bs.boxes] == [{"slice": 1 + i % 3, "x0": 3 + i, "y0": 2, "x1": 7 + i, "y1": 5,
                                                    "lesion": 1}]
    for c in box_only:
        assert (src.parent / "labels" / f"{c}.nii.gz").exists()  # removed from the manifest, not from disk
    # same seed, same draw; --cases names them
    out2 = tmp_path / "weak2" / "m.json"
    res = CliRunner().invoke(app, ["data", "boxes", str(src), "--out", str(out2), "--from-masks", "--cases", "c3"])
    assert res.exit_code == 0, res.output
    assert [c.id for c in Manifest.load(out2).cases if c.label is None] == ["c3"]


def test_cli_bad_arguments_are_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from cmedl.cli import app

    src = _dataset(tmp_path)
    runner = CliRunner()
    for args, needle in [
        (["--out", str(src), "--from-masks"], "is an input"),
        (["--out", str(tmp_path / "o.json")], "choose one source"),
        (["--out", str(tmp_path / "o.json"), "--from-masks", "--cases", "c9"], "unknown case"),
        (["--out", str(tmp_path / "o.json"), "--from-masks", "--share", "1.5"], "--share must be in [0, 1]"),
        (["--out", str(tmp_path / "o.json"), "--voc", str(tmp_path)], "--voc needs --dicom"),
    ]:
        res = runner.invoke(app, ["data", "boxes", str(src), *args])
        assert res.exit_code == 1, res.output
        err = res.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "boxes").exists()
