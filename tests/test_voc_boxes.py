"""PASCAL VOC (Lung-PET-CT-Dx) box import: XML per SOP Instance UID -> box file on the series' grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmedl.data.voc_boxes import import_voc_boxes, read_voc_file
from cmedl.errors import InputError
from cmedl.io import Volume
from cmedl.io.dicom import write_dicom_series


def _series(tmp_path: Path, descending: bool = False) -> tuple[Path, list[str]]:
    """A 5-slice 12x16 CT series; returns the folder and the SOP UIDs in the z order cmedl reads.

    ``descending``: files written with a flipped z axis (positions decreasing with the file order), so the
    file order and the volume's z order differ."""
    arr = np.full((5, 12, 16), -1000, np.int16)
    direction = (1, 0, 0, 0, 1, 0, 0, 0, -1) if descending else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    vol = Volume(arr, spacing=(0.7, 0.8, 2.5), origin=(-5.0, 3.0, 40.0), direction=direction)
    names = [f"f{i}.dcm" for i in (3, 0, 4, 1, 2)]  # file names unrelated to the order
    paths = write_dicom_series(vol, tmp_path / "dcm", file_names=names)
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    z = sorted(heads, key=lambda ds: float(ds.ImagePositionPatient[2]))  # cmedl's z: ascending along the normal
    return tmp_path / "dcm", [str(ds.SOPInstanceUID) for ds in z]


def _xml(path: Path, boxes, size=(16, 12)) -> None:
    objs = "".join(
        f"<object><name>A</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>" for a, b, c, d in boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth>"
                    f"</size>{objs}</annotation>")


@pytest.mark.parametrize("descending", [False, True])
def test_known_answer_boxes_on_the_right_slices(tmp_path, descending):
    folder, uids = _series(tmp_path, descending)
    voc = tmp_path / "Annotation" / "A0001"
    _xml(voc / f"{uids[1]}.xml", [(3, 2, 8, 6)])
    _xml(voc / f"{uids[2]}.xml", [(4, 3, 9, 7), (14, 10, 16, 12)])
    _xml(voc / "1.2.3.999.xml", [(1, 1, 2, 2)])  # a slice of another series
    res = import_voc_boxes(voc.parent, folder)
    got = [b.to_dict() for b in res.boxset.boxes]
    # VOC 1-based inclusive / LabelImg edges -> 0-based half-open [xmin - 1, xmax)
    assert got == [
        {"slice": 1, "x0": 2, "y0": 1, "x1": 8, "y1": 6, "lesion": 1},
        {"slice": 2, "x0": 3, "y0": 2, "x1": 9, "y1": 7, "lesion": 1},  # overlaps slice 1's box: one lesion
        {"slice": 2, "x0": 13, "y0": 9, "x1": 16, "y1": 12, "lesion": 2},
    ]
    assert res.n_files == 2 and [p.name for p in res.unmatched] == ["1.2.3.999.xml"] and res.names == ["A"]
    assert res.boxset.geometry.size == (16, 12, 5)
    assert res.boxset.geometry.spacing == pytest.approx((0.7, 0.8, 2.5))


def test_bad_voc_inputs_are_one_line_errors(tmp_path):
    folder, uids = _series(tmp_path)
    voc = tmp_path / "voc"
    _xml(voc / f"{uids[0]}.xml", [(3, 2, 17, 6)])
    with pytest.raises(InputError, match=r"outside the slice \(16 columns x 12 rows\)") as err:
        import_voc_boxes(voc, folder)
    assert str(err.value).startswith(str(voc / f"{uids[0]}.xml"))
    _xml(voc / f"{uids[0]}.xml", [(3, 2, 5, 6)], size=(512, 512))
    with pytest.raises(InputError, match="differs from the DICOM slice"):
        import_voc_boxes(voc, folder)
    (voc / f"{uids[0]}.xml").write_text("<annotation><object><bndbox><xmin>x</xmin></bndbox></object></annotation>")
    with pytest.raises(InputError, match="not a number"):
        import_voc_boxes(voc, folder)
    (voc / f"{uids[0]}.xml").write_text("<annotation")
    with pytest.raises(InputError, match="not a valid XML"):
        read_voc_file(voc / f"{uids[0]}.xml")
    (voc / f"{uids[0]}.xml").unlink()
    _xml(voc / "9.9.xml", [(1, 1, 2, 2)])
    with pytest.raises(InputError, match="none of the 1 XML files"):
        import_voc_boxes(voc, folder)


def test_cli_voc_import_single_case_and_cohort_matching(tmp_path):
    from typer.testing import CliRunner

    from cmedl.cli import app
    from cmedl.data.boxes import read_boxes
    from cmedl.data.manifest import Case, Manifest
    from cmedl.io import read_volume, write_volume
    from cmedl.io.dicom import read_dicom_series

    folder, uids = _series(tmp_path)
    vol = read_dicom_series(folder)
    write_volume(vol, tmp_path / "ds" / "images" / "a.nii.gz")
    other = Volume(np.zeros((4, 12, 16), np.int16))  # another grid: must not match
    write_volume(other, tmp_path / "ds" / "images" / "b.nii.gz")
    src = Manifest([Case("a", "P0", "ct", "images/a.nii.gz"), Case("b", "P1", "ct", "images/b.nii.gz")]).save(
        tmp_path / "ds" / "manifest.json")
    voc = tmp_path / "Annotation" / "A0001"
    _xml(voc / f"{uids[3]}.xml", [(5, 5, 10, 9)])
    runner = CliRunner()
    for extra, out in [(["--case", "a"], tmp_path / "one" / "m.json"), ([], tmp_path / "cohort" / "m.json")]:
        res = runner.invoke(app, ["data", "boxes", str(src), "--out", str(out), "--voc", str(voc.parent),
                                  "--dicom", str(folder if extra else tmp_path), *extra])
        assert res.exit_code == 0, res.output
        m = Manifest.load(out)
        assert m.get("b").boxes is None
        bs = read_boxes(m.boxes_path(m.get("a")), read_volume(m.image_path(m.get("a"))))
        assert [b.to_dict() for b in bs.boxes] == [{"slice": 3, "x0": 4, "y0": 4, "x1": 10, "y1": 9, "lesion": 1}]
    res = runner.invoke(app, ["data", "boxes", str(src), "--out", str(tmp_path / "x.json"), "--voc", str(voc.parent),
                              "--dicom", str(folder), "--case", "b"])
    assert res.exit_code == 1 and "is not that of case 'b'" in res.stderr and "\n" not in res.stderr.strip()
    assert not (tmp_path / "x.json").exists()
