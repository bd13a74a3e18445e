"""``cmedl segment`` over folders and manifest splits: folder expansion, skipping finished cases on a rerun,
going on after a failing case, and ``--format nifti,rtstruct,seg`` for DICOM series inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from test_inference import make_checkpoint, phantom_ct
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.errors import InputError
from cmedl.inference import CasesFailed, segment_files
from cmedl.inference.files import collect_inputs
from cmedl.inference.formats import check_output_formats
from cmedl.io import Volume, read_volume, write_volume
from cmedl.io.dicom import write_dicom_series

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def cohort_folder(root: Path) -> Path:
    """scans/: a.nii.gz, b.nrrd, c/ (a DICOM series), notes/ (no images), .hidden.nii.gz, readme.txt."""
    scans = root / "scans"
    write_volume(phantom_ct((3, 20, 22), seed=1), scans / "a.nii.gz")
    write_volume(phantom_ct((3, 20, 22), seed=2), scans / "b.nrrd")
    write_dicom_series(phantom_ct((3, 20, 22), seed=3), scans / "c", modality="CT")
    (scans / "notes").mkdir()
    (scans / "notes" / "x.txt").write_text("not an image\n")
    (scans / "readme.txt").write_text("hello\n")
    write_volume(phantom_ct((3, 20, 22), seed=4), scans / ".hidden.nii.gz")
    return scans


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


# ====================================================================== folders and reruns
def test_folder_inputs_expand_but_a_dicom_folder_is_one_series(tmp_path: Path) -> None:
    scans = cohort_folder(tmp_path)
    assert collect_inputs([scans]) == [scans / "a.nii.gz", scans / "b.nrrd", scans / "c"]
    assert collect_inputs([scans / "c"]) == [scans / "c"]  # a series folder stays one input, as before
    assert collect_inputs([scans / "a.nii.gz", scans / "c"]) == [scans / "a.nii.gz", scans / "c"]
    with pytest.raises(InputError, match=r"notes: holds no image volumes"):
        collect_inputs([scans / "notes"])


def test_rerun_skips_finished_cases_and_overwrite_redoes_them(ckpt: Path, tmp_path: Path) -> None:
    scans = cohort_folder(tmp_path)
    out = tmp_path / "seg"
    res = run("segment", scans, "--model", ckpt, "--out", out, "--probabilities")
    assert res.exit_code == 0, res.output
    names = ["a.nii.gz", "a_prob.nii.gz", "b.nii.gz", "b_prob.nii.gz", "c.nii.gz", "c_prob.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert "wrote 3 case(s)" in res.stdout
    for case, seed in (("a", 1), ("c", 3)):
        mask = read_volume(out / f"{case}.nii.gz")
        assert mask.same_geometry(phantom_ct((3, 20, 22), seed=seed)) and mask.array.dtype == np.uint8
    before = stamps(out)

    # a rerun: every case is done; nothing is read or written
    res = run("segment", scans, "--model", ckpt, "--out", out, "--probabilities")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == 3 and all("already done" in ln and "--overwrite" in ln for ln in lines), res.stdout
    assert "wrote 0 case(s)" in res.stdout and "3 already done" in res.stdout
    assert stamps(out) == before

    # a case with a missing output is not finished: only it is segmented again
    (out / "b_prob.nii.gz").unlink()
    mask_b = read_volume(out / "b.nii.gz").array
    res = run("segment", scans, "--model", ckpt, "--out", out, "--probabilities")
    assert res.exit_code == 0, res.output
    assert "wrote 1 case(s)" in res.stdout and "2 already done" in res.stdout
    after = stamps(out)
    assert {k for k in after if after[k] != before.get(k)} == {"b.nii.gz", "b_prob.nii.gz"}
    np.testing.assert_array_equal(read_volume(out / "b.nii.gz").array, mask_b)  # same model, same mask

    # --overwrite redoes the finished cases (their masks; the probability maps are not asked for this time)
    res = run("segment", scans, "--model", ckpt, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert "skipped" not in res.stdout and "wrote 3 case(s)" in res.stdout
    assert all(after[k] != v for k, v in stamps(out).items() if not k.endswith("_prob.nii.gz"))


def test_failing_case_is_reported_and_the_rest_go_on_then_skipped(ckpt: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_volume(phantom_ct((3, 20, 20), seed=1), scans / "g1.nii.gz")
    nan = phantom_ct((3, 20, 20)).array.astype(np.float32)
    nan[1, 5, 5] = np.nan
    write_volume(Volume(nan, spacing=(0.7, 0.9, 2.5)), scans / "bad.nii.gz")
    write_volume(phantom_ct((3, 20, 20), seed=2), scans / "g2.nii.gz")
    out = tmp_path / "seg"
    res = run("segment", scans, "--model", ckpt, "--out", out)
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {scans / 'bad.nii.gz'}: ") and "NaN" in lines[0]
    assert lines[1].startswith("error: 1 of 3 inputs failed") and "2 case(s) written" in lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["g1.nii.gz", "g2.nii.gz"]
    # rerun: the finished cases are skipped, the broken one fails again, the summary says both
    res = run("segment", scans, "--model", ckpt, "--out", out)
    assert res.exit_code == 1, res.output
    assert res.stdout.count("skipped ") == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "1 of 3 inputs failed" in last and "0 case(s) written" in last and "2 already done" in last
    with pytest.raises(CasesFailed) as info:
        segment_files(ckpt, [scans], out, overwrite=False, progress=False, on_failure=lambda e: None,
                      on_skip=lambda p, o: None)
    assert [p.name for p in info.value.skipped] == ["g1.nii.gz", "g2.nii.gz"] and info.value.written == []


def test_manifest_split_of_the_models_modality_named_by_case_id(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cases = []
    for i, (split, modality) in enumerate([("train", "ct"), ("test", "ct"), ("test", "ct"), ("test", "mr")]):
        write_volume(phantom_ct((3, 20, 20), seed=i), data / "images" / f"img{i}.nii.gz")
        cases.append({"id": f"case{i}", "patient_id": f"P{i}", "modality": modality,
                      "image": f"images/img{i}.nii.gz", "split": split})
    (data / "manifest.json").write_text(json.dumps({"name": "t", "cases": cases}))
    out = tmp_path / "seg"
    res = run("segment", "--manifest", data / "manifest.json", "--split", "test", "--model", ckpt, "--out", out)
    assert res.exit_code == 0, res.output
    # the test split's CT cases (the model's modality), named by case id; the MRI case is left out
    assert sorted(p.name for p in out.iterdir()) == ["case1.nii.gz", "case2.nii.gz"]
    assert read_volume(out / "case1.nii.gz").same_geometry(phantom_ct((3, 20, 20), seed=1))
    one_line_error(run("segment", "--manifest", data / "manifest.json", "--split", "tset", "--model", ckpt,
                       "--out", out), "unknown split 'tset'; did you mean 'test'?")
    one_line_error(run("segment", "--manifest", data, "--split", "val", "--model", ckpt, "--out", out),
                   "manifest.json: has no case of split 'val'")
    one_line_error(run("segment", "--model", ckpt, "--out", out), "give input volumes or folders, or --manifest")


# ====================================================================== output formats
def test_format_checks_come_before_any_work(tmp_path: Path) -> None:
    nii = write_volume(phantom_ct((3, 20, 20)), tmp_path / "ct.nii.gz")
    missing_model = tmp_path / "no-model.pt"  # never read: the refusals come first
    one_line_error(run("segment", nii, "--model", missing_model, "--out", tmp_path / "o1", "--format", "nifti,rtstruct"),
                   f"{nii}: is not a DICOM series: --format rtstruct")
    one_line_error(run("segment", nii, "--model", missing_model, "--out", tmp_path / "o2", "--format", "nifti,sge"),
                   "unknown output format 'sge'; did you mean 'seg'?")
    one_line_error(run("segment", nii, "--model", missing_model, "--out", tmp_path / "o3", "--roi-colour", "300,0,0"),
                   "colour")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
    assert check_output_formats(["seg, NIfTI", "rtstruct"]) == ("nifti", "rtstruct", "seg")


def test_dicom_series_to_nifti_rtstruct_and_seg(ckpt: Path, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    from cmedl.io.rtstruct import rasterize_roi

    vol = phantom_ct((6, 40, 44), seed=5)
    series = tmp_path / "patient7"
    write_dicom_series(vol, series, modality="CT")
    # a threshold that gives a mask of ~15 % of the voxels (the tiny untrained model's probabilities)
    segment_files(ckpt, [series], tmp_path / "probe", probabilities=True, progress=False)
    prob = read_volume(tmp_path / "probe" / "patient7_prob.nii.gz").array
    threshold = float(np.quantile(prob, 0.85))
    out = tmp_path / "seg"
    res = run("segment", series, "--model", ckpt, "--out", out, "--format", "nifti,rtstruct,seg", "--roi-name",
              "GTV_auto", "--threshold", f"{threshold:.6f}", "--largest-component", "--fill-holes")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["patient7.nii.gz", "patient7_rtstruct.dcm", "patient7_seg.dcm"]
    mask = read_volume(out / "patient7.nii.gz").array.astype(bool)
    assert 0.02 * mask.size < mask.sum() < 0.3 * mask.size
    reference = read_volume(series)
    back = rasterize_roi(out / "patient7_rtstruct.dcm", "GTV_auto", reference).astype(bool)
    dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
    assert dice >= 0.97, dice
    seg = hd.seg.segread(out / "patient7_seg.dcm")
    source_uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted(series.iterdir())]
    assert seg.SeriesInstanceUID != reference.meta.get("SeriesInstanceUID")
    assert {str(u[2]) for u in seg.get_source_image_uids()} <= set(source_uids)
    assert int((np.asarray(seg.pixel_array) > 0).sum()) == int(mask.sum())  # BINARY, the same voxel count
    # the rerun skips the case (all three files exist)
    res = run("segment", series, "--model", ckpt, "--out", out, "--format", "nifti,rtstruct,seg",
              "--threshold", f"{threshold:.6f}")
    assert res.exit_code == 0 and "skipped" in res.stdout, res.output
    # DICOM outputs alone: no NIfTI written
    res = run("segment", series, "--model", ckpt, "--out", tmp_path / "dcm_only", "--format", "rtstruct")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "dcm_only").iterdir()] == ["patient7_rtstruct.dcm"]
    assert not list(out.glob(".*tmp*"))


def test_a_failed_write_leaves_none_of_the_case_files(ckpt: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The DICOM files are written first; when the NIfTI mask then fails (disk full), they are removed."""
    import errno

    from cmedl.inference import files

    series = tmp_path / "p1"
    write_dicom_series(phantom_ct((4, 24, 24), seed=2), series, modality="CT")

    def disk_full(volume, path, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_volume", disk_full)
    with pytest.raises(CasesFailed, match="No space left on device"):
        segment_files(ckpt, [series], tmp_path / "out", formats="nifti,rtstruct,seg", threshold=0.3, progress=False)
    assert not (tmp_path / "out").exists() or sorted(p.name for p in (tmp_path / "out").iterdir()) == []
