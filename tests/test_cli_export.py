"""`cmedl data export` in-process: outputs, options, one-line errors and no output on failure."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.io import Volume, write_volume
from cmedl.io.dicom import read_dicom_series, write_dicom_series
from cmedl.io.rtstruct import rasterize_roi

runner = CliRunner()


def _case(tmp_path):
    vol = Volume(
        np.zeros((5, 14, 16), np.int16),
        (0.7, 0.9, 2.0),
        (3.0, -8.0, 50.0),
        (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0),
    )
    folder = tmp_path / "ct"
    write_dicom_series(vol, folder)
    ct = read_dicom_series(folder)
    m = np.zeros(ct.shape, np.uint8)
    m[1:4, 3:11, 4:13] = 1
    m[2, 5:8, 6:9] = 0  # a hole
    mask = write_volume(ct.with_array(m), tmp_path / "lesion.nii.gz")
    return folder, ct, m, mask


def test_export_writes_rtstruct_and_seg(tmp_path):
    folder, ct, m, mask = _case(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "data",
            "export",
            str(mask),
            "--dicom",
            str(folder),
            "--out",
            str(out),
            "--format",
            "rtstruct,seg",
            "--roi-name",
            "Tumour",
            "--colour",
            "0,255,0",
        ],
    )
    assert res.exit_code == 0, res.output
    rs, seg = out / "lesion_rtstruct.dcm", out / "lesion_seg.dcm"
    assert f"wrote {rs}" in res.stdout and f"wrote {seg}" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["lesion_rtstruct.dcm", "lesion_seg.dcm"]
    assert np.array_equal(rasterize_roi(rs, "Tumour", ct), m)
    ds = pydicom.dcmread(rs)
    assert list(ds.ROIContourSequence[0].ROIDisplayColor) == [0, 255, 0]
    s = hd.seg.segread(seg)
    assert s.SegmentSequence[0].SegmentLabel == "Tumour" and s.SegmentationType == "BINARY"


def test_export_one_format_and_name(tmp_path):
    folder, ct, m, mask = _case(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "data",
            "export",
            str(mask),
            "--dicom",
            str(folder),
            "--out",
            str(out),
            "--format",
            "seg",
            "--name",
            "p01",
            "--probabilities",
            str(write_volume(ct.with_array(m * 0.75), tmp_path / "prob.nii.gz")),
        ],
    )
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.iterdir()] == ["p01_seg.dcm"]
    seg = hd.seg.segread(out / "p01_seg.dcm")
    assert seg.SegmentationType == "FRACTIONAL"
    assert np.allclose(seg.get_volume().array.max(), 191 / 255)  # round(0.75 * 255) = 191


def test_export_errors_are_one_line_and_write_nothing(tmp_path):
    folder, ct, m, mask = _case(tmp_path)
    out = tmp_path / "out"
    other = write_volume(Volume(m, (1.0, 1.0, 1.0)), tmp_path / "other.nii.gz")
    cases = [
        (
            ["--format", "rtstrct"],
            mask,
            "error: unknown export format 'rtstrct'; did you mean 'rtstruct'?",
        ),
        (["--colour", "red"], mask, "error: colour 'red' must be three integers"),
        ([], other, f"error: {other} and {folder} are on different voxel grids: spacing"),
        ([], tmp_path / "missing.nii.gz", f"error: {tmp_path / 'missing.nii.gz'}: "),
    ]
    for extra, mask_path, message in cases:
        res = runner.invoke(
            app,
            ["data", "export", str(mask_path), "--dicom", str(folder), "--out", str(out), *extra],
        )
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith(message), res.stderr
        assert not out.exists() or not any(out.iterdir())
