"""Issue 13, outputs: never overwrite an input, check outputs before any work, one-line errors for
failed writes, per-case failures of segment/translate, evaluate --label sanity, demo checks first,
and the modality plausibility check of segment/translate."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from test_inference import make_checkpoint, phantom_ct
from typer.testing import CliRunner

from cmedl.cli import app
from cmedl.data.plausibility import check_modality, modality_mismatch
from cmedl.errors import InputError
from cmedl.inference import CasesFailed, segment_files, translate_files
from cmedl.io import Volume, read_volume, write_volume
from cmedl.io.outputs import check_output_file, check_output_folder

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder in which nothing can be created (read-only for a user; /proc for root)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    if not Path("/proc/self").is_dir():
        pytest.skip("needs a non-root user or /proc")
    return Path("/proc/self")


def mri_like(shape: tuple[int, int, int] = (4, 30, 34), seed: int = 0) -> Volume:
    """T2w-like MRI: background ~0 (Rician-like noise), body 150-600 arbitrary units, no negatives."""
    rng = np.random.default_rng(seed)
    _, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.42 * w)) ** 2 < 1
    arr = np.abs(rng.normal(0, 8, shape))
    arr[:, body] += rng.uniform(150, 600, (shape[0], int(body.sum())))
    return Volume(arr.astype(np.int16), spacing=(0.7, 0.9, 2.5))


def unshifted_ct(vol: Volume) -> Volume:
    """The same CT stored as uint16 without the -1024 HU rescale intercept (air at ~0)."""
    return vol.with_array(np.clip(vol.array.astype(np.int32) + 1024, 0, None).astype(np.uint16))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", with_generator=True)


# ====================================================================== one output-path check
def test_check_output_folder_and_file_refusals(tmp_path: Path) -> None:
    a = write_volume(phantom_ct((3, 20, 20)), tmp_path / "a.nii.gz")
    file_ = tmp_path / "results.csv"
    file_.write_text("x\n")
    with pytest.raises(InputError, match=r"results.csv: exists and is a file; a folder is needed"):
        check_output_folder(file_)
    with pytest.raises(InputError, match=r"run1: cannot be created: .*results.csv is a file, not a folder"):
        check_output_folder(file_ / "run1")
    with pytest.raises(InputError, match=r"x.csv: cannot be created: .*results.csv is a file"):
        check_output_file(file_ / "sub" / "x.csv")
    with pytest.raises(InputError, match=r"is a folder; a file name is needed"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match=r"a.nii.gz: is an input of this command and would be overwritten"):
        check_output_folder(tmp_path, inputs=[a], planned=[tmp_path / "a.nii.gz"])
    link = tmp_path / "link.nii.gz"
    os.link(a, link)  # a hard link: another name, the same file
    with pytest.raises(InputError, match=r"link.nii.gz: is an input"):
        check_output_file(link, inputs=[a])
    with pytest.raises(InputError, match=r"would be written twice"):
        check_output_folder(tmp_path / "o", planned=[tmp_path / "o" / "x.nii.gz", tmp_path / "o" / "." / "x.nii.gz"])
    (tmp_path / "o2" / "c.nii.gz").mkdir(parents=True)
    with pytest.raises(InputError, match=r"c.nii.gz: is a folder, but the command writes a file"):
        check_output_folder(tmp_path / "o2", planned=[tmp_path / "o2" / "c.nii.gz"])
    ro = unwritable_dir(tmp_path)
    with pytest.raises(InputError, match=r"cannot write here"):
        check_output_folder(ro / "new" / "deeper")
    with pytest.raises(InputError, match=r"x.csv: cannot write here"):
        check_output_file(ro / "x.csv")
    # allowed: an existing output folder, a new nested one; nothing is created by the check
    assert check_output_folder(tmp_path) == tmp_path
    assert check_output_folder(tmp_path / "n1" / "n2") == tmp_path / "n1" / "n2"
    assert not (tmp_path / "n1").exists()


def test_segment_refuses_to_overwrite_its_input_cts(ckpt: Path, tmp_path: Path) -> None:
    """D1: `cmedl segment --model M scans/a.nii.gz scans/b.nii.gz --out scans` would replace the CTs by masks."""
    scans = tmp_path / "scans"
    a = write_volume(phantom_ct((3, 20, 20), seed=1), scans / "a.nii.gz")
    b = write_volume(phantom_ct((3, 20, 20), seed=2), scans / "b.nii.gz")
    before = {p: p.read_bytes() for p in (a, b)}
    res = run("segment", "--model", ckpt, a, b, "--out", scans)
    one_line_error(res, "a.nii.gz: is an input of this command and would be overwritten")
    assert {p: p.read_bytes() for p in (a, b)} == before
    assert sorted(p.name for p in scans.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    # checked before any work: even the checkpoint is not read
    with pytest.raises(InputError, match="would be overwritten"):
        segment_files(tmp_path / "no-model.pt", [a], scans, progress=False)
    # a case named like another case's probability map would overwrite it
    c_prob = write_volume(phantom_ct((3, 20, 20)), tmp_path / "in" / "c_prob.nii.gz")
    c = write_volume(phantom_ct((3, 20, 20)), tmp_path / "in" / "c.nii.gz")
    with pytest.raises(InputError, match="c_prob.nii.gz: would be written twice"):
        segment_files(ckpt, [c, c_prob], tmp_path / "out", probabilities=True, progress=False)
    # segment --out an existing file / under a file: one line, before any work
    one_line_error(run("segment", "--model", ckpt, a, "--out", a), "a.nii.gz: exists and is a file")
    one_line_error(run("segment", "--model", ckpt, a, "--out", a / "x"), "cannot be created")


def test_translate_refuses_to_overwrite_an_input(ckpt: Path, tmp_path: Path) -> None:
    a = write_volume(phantom_ct((3, 20, 20)), tmp_path / "a.nii.gz")
    a_pmri = write_volume(phantom_ct((3, 20, 20)), tmp_path / "a_pmri.nii.gz")
    before = a_pmri.read_bytes()
    res = run("translate", "--model", ckpt, a, a_pmri, "--out", tmp_path)
    one_line_error(res, "a_pmri.nii.gz: is an input of this command and would be overwritten")
    assert a_pmri.read_bytes() == before


def test_evaluate_and_compare_refuse_to_overwrite_inputs(tmp_path: Path) -> None:
    """D3: `--out R/case.nii.gz` equal to a reference or prediction; `cmedl compare a.csv b.csv --out b.csv`."""
    m = np.zeros((6, 16, 16), np.uint8)
    m[2:4, 5:9, 5:9] = 1
    ref = write_volume(Volume(m), tmp_path / "R" / "case.nii.gz")
    pred = write_volume(Volume(m), tmp_path / "P" / "case.nii.gz")
    before = ref.read_bytes(), pred.read_bytes()
    one_line_error(run("evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--out", ref),
                   "R/case.nii.gz: is an input")
    one_line_error(run("evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--out", pred),
                   "P/case.nii.gz: is an input")
    one_line_error(run("evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--out", tmp_path / "R"),
                   "is a folder")
    assert (ref.read_bytes(), pred.read_bytes()) == before
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run("evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--out", a).exit_code == 0
    assert run("evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--out", b).exit_code == 0
    b_before = b.read_bytes()
    res = run("compare", a, b, "--out", b)
    one_line_error(res, "b.csv: is an input")
    assert b.read_bytes() == b_before and "DSC" not in res.stdout  # refused before the table
    ro = unwritable_dir(tmp_path)
    one_line_error(run("compare", a, b, "--out", ro / "t.csv"), "t.csv: cannot write here")
    assert run("compare", a, b, "--out", tmp_path / "t.csv").exit_code == 0


def test_train_refuses_out_that_is_a_file_before_any_work(tmp_path: Path) -> None:
    f = tmp_path / "run.txt"
    f.write_text("not a folder\n")
    # the data does not even exist: the run folder is checked first
    res = run("train", "--data", tmp_path / "missing.json", "--out", f, "--set", "training.max_epochs=1")
    one_line_error(res, "run.txt: exists and is a file")
    assert f.read_text() == "not a folder\n"
    one_line_error(run("train", "--data", tmp_path / "missing.json", "--out", unwritable_dir(tmp_path) / "run"),
                   "cannot write here")


# ====================================================================== disk full / unwritable
def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_train_disk_full_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmedl.data.phantom import generate_cohort
    from cmedl.training import trainer

    data = generate_cohort(tmp_path / "ph", n_ct=5, n_cbct=0, n_mr=0, seed=0, shape=(8, 48, 48), workers=1)
    monkeypatch.setattr(trainer, "save_checkpoint", _enospc)
    tiny = ["training.method=ct-only", "model.seg_base_width=4", "data.patch_size=32", "training.batch_size=2",
            "data.samples_per_epoch=2", "data.val_samples=2", "training.max_epochs=1", "training.device=cpu",
            "training.precision=fp32", "training.progress=false", "training.image_grid=false",
            "training.validation=patches"]
    args = ["train", "--data", data, "--out", tmp_path / "run", "-q"]
    for o in tiny:
        args += ["--set", o]
    res = run(*args)
    one_line_error(res, "run/best.pt: cannot write (No space left on device)")


def test_evaluate_disk_full_and_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmedl.evaluation import evaluate

    m = np.zeros((6, 16, 16), np.uint8)
    m[2:4, 5:9, 5:9] = 1
    write_volume(Volume(m), tmp_path / "R" / "c.nii.gz")
    write_volume(Volume(m), tmp_path / "P" / "c.nii.gz")
    args = ("evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--out")
    one_line_error(run(*args, unwritable_dir(tmp_path) / "r.csv"), "r.csv: cannot write here")
    monkeypatch.setattr(evaluate, "write_results_csv", _enospc)
    one_line_error(run(*args, tmp_path / "r.csv"), "r.csv: cannot write (No space left on device)")
    assert not (tmp_path / "r.csv").exists()


def test_cli_turns_a_stray_oserror_into_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cmedl.evaluation import compare

    a = tmp_path / "a.csv"
    a.write_text("case_id,dsc\nc1,0.5\nc2,0.6\n")
    b = tmp_path / "b.csv"
    b.write_text("case_id,dsc\nc1,0.7\nc2,0.8\n")

    def boom(path, *_a):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(compare, "read_results_csv", boom)
    one_line_error(run("compare", a, b), "a.csv: Permission denied")


# ====================================================================== demo: checks before work
def test_demo_checks_config_and_out_before_generating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmedl.demo import run as demo

    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(run("demo", "--out", f), "file: exists and is a file")
    out = tmp_path / "demo"
    # an invalid override for one method's section: refused before the phantom is generated
    res = run("demo", "--out", out, "--set", "cyclegan.gen_n_blocks=many")
    one_line_error(res, "cyclegan.gen_n_blocks")
    assert not out.exists()
    one_line_error(run("demo", "--out", unwritable_dir(tmp_path) / "demo"), "cannot write here")
    # a folder whose earlier demo stopped before producing anything takes new parameters ...
    out.mkdir()
    (out / "demo.json").write_text('{"config": "old"}\n')

    class Stop(Exception):
        pass

    def stop(*_a, **_k):
        raise Stop

    monkeypatch.setattr(demo, "_phantom_cohort", stop)
    with pytest.raises(Stop):
        demo.run_demo(out, n_ct=4, n_mr=2, log=lambda _m: None)
    assert '"cpu-demo"' in (out / "demo.json").read_text()
    # ... one with results refuses them (stale results)
    (out / "phantom").mkdir()
    (out / "phantom" / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="other parameters"):
        demo.run_demo(out, n_ct=5, n_mr=2, log=lambda _m: None)
    # disk full while writing its parameters: one line naming the file
    monkeypatch.setattr(demo, "atomic_path", _enospc)
    with pytest.raises(InputError, match=r"demo2/demo.json: cannot write \(No space left on device\)"):
        demo.run_demo(tmp_path / "demo2", log=lambda _m: None)


# ====================================================================== per-case failures (W10)
def test_segment_goes_on_after_a_failing_case(ckpt: Path, tmp_path: Path) -> None:
    good1 = write_volume(phantom_ct((3, 20, 20), seed=1), tmp_path / "in" / "g1.nii.gz")
    nan = phantom_ct((3, 20, 20)).array.astype(np.float32)
    nan[1, 5, 5] = np.nan
    bad = write_volume(Volume(nan, spacing=(0.7, 0.9, 2.5)), tmp_path / "in" / "bad.nii.gz")
    good2 = write_volume(phantom_ct((3, 20, 20), seed=2), tmp_path / "in" / "g2.nii.gz")
    res = run("segment", "--model", ckpt, good1, bad, good2, "--out", tmp_path / "seg", "--probabilities")
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"error: {bad}: ") and "NaN" in lines[0]
    assert lines[1].startswith("error: 1 of 3 inputs failed") and "bad.nii.gz" in lines[1]
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "g1.nii.gz", "g1_prob.nii.gz", "g2.nii.gz", "g2_prob.nii.gz"]
    # the library: the written masks and the failures, reported through on_failure
    seen: list[str] = []
    with pytest.raises(CasesFailed) as info:
        segment_files(ckpt, [good1, bad, good2], tmp_path / "seg2", progress=False,
                      on_failure=lambda exc: seen.append(str(exc)))
    assert [p.name for p in info.value.written] == ["g1.nii.gz", "g2.nii.gz"]
    assert [p for p, _ in info.value.failures] == [bad] and len(seen) == 1 and str(bad) in seen[0]


def test_segment_case_files_are_all_or_nothing_and_disk_full_stops(
        ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmedl.inference import files

    inputs = [write_volume(phantom_ct((3, 20, 20), seed=i), tmp_path / "in" / f"c{i}.nii.gz") for i in range(3)]
    real = files.write_volume

    def full_on_c1_prob(volume, path, **kw):
        if "c1_prob" in Path(path).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(volume, path, **kw)

    monkeypatch.setattr(files, "write_volume", full_on_c1_prob)
    with pytest.raises(CasesFailed) as info:
        segment_files(ckpt, inputs, tmp_path / "out", probabilities=True, progress=False, on_failure=lambda e: None)
    err = info.value
    assert [p.name for p in err.written] == ["c0.nii.gz"]
    assert "No space left on device" in str(err.failures[0][1]) and err.not_processed == [inputs[2]]
    assert "1 input(s) not processed" in str(err)
    # c1's mask was computed and written to a temporary file, but no file of c1 (nor a temporary) is left
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["c0.nii.gz", "c0_prob.nii.gz"], left


def test_translate_goes_on_after_a_failing_case(ckpt: Path, tmp_path: Path) -> None:
    good = write_volume(phantom_ct((3, 20, 20)), tmp_path / "in" / "good.nii.gz")
    mr = write_volume(mri_like((3, 20, 20)), tmp_path / "in" / "mr.nii.gz")
    with pytest.raises(CasesFailed) as info:
        translate_files(ckpt, [mr, good], tmp_path / "tr", progress=False, on_failure=lambda e: None)
    assert [p.name for p in info.value.written] == ["good_pmri.nii.gz"]
    assert "does not look like a CT in HU" in str(info.value.failures[0][1])
    assert "1 of 2 inputs failed" in str(info.value)


# ====================================================================== evaluate --label (W9)
def test_evaluate_refuses_a_label_in_no_reference_and_warns_for_predictions(tmp_path: Path) -> None:
    m = np.zeros((6, 16, 16), np.uint8)
    m[2:4, 5:9, 5:9] = 1
    for i in range(2):
        write_volume(Volume(m), tmp_path / "R" / f"c{i}.nii.gz")
        write_volume(Volume(m), tmp_path / "P" / f"c{i}.nii.gz")
    res = run("evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--label", "2", "--out", tmp_path / "x.csv")
    one_line_error(res, "R: label 2 occurs in none of the 2 reference mask(s)", "values in c0.nii.gz: 0, 1")
    assert not (tmp_path / "x.csv").exists()
    # label 2 in the references, only 1 in one prediction: scored as missed, with a warning
    write_volume(Volume(m * 2), tmp_path / "R2" / "c0.nii.gz")
    write_volume(Volume(m * 2), tmp_path / "R2" / "c1.nii.gz")
    write_volume(Volume(m * 2), tmp_path / "P2" / "c0.nii.gz")
    write_volume(Volume(m), tmp_path / "P2" / "c1.nii.gz")
    res = run("evaluate", "--pred", tmp_path / "P2", "--ref", tmp_path / "R2", "--label", "2",
              "--out", tmp_path / "y.csv")
    assert res.exit_code == 0, res.output
    assert "warning: label 2 occurs in no voxel of 1 prediction(s)" in res.stderr and "c1.nii.gz" in res.stderr
    assert (tmp_path / "y.csv").exists()


# ====================================================================== modality plausibility (W5)
def test_modality_plausibility_known_answers() -> None:
    ct = phantom_ct((6, 40, 48))
    assert modality_mismatch(ct.array, "ct") is None
    assert modality_mismatch(ct.array, "cbct") is None
    assert "below -500" in modality_mismatch(ct.array, "mr")  # an air peak at -1000: not an MRI
    mr = mri_like((6, 40, 48))
    assert modality_mismatch(mr.array, "mr") is None
    assert modality_mismatch(mr.array, "cbct") is None  # looser: allowed
    assert "no negative values" in modality_mismatch(mr.array, "ct") and "like an MRI" in modality_mismatch(
        mr.array, "ct")
    raw = unshifted_ct(ct)
    assert raw.array.dtype == np.uint16 and raw.array.min() >= 0
    assert "without the -1024 HU shift" in modality_mismatch(raw.array, "ct")
    assert modality_mismatch(raw.array, "mr") is None  # not distinguishable from an MRI: allowed
    # normalised MRI (z-scores), a CT in other units, a CBCT with FOV padding
    z = np.random.default_rng(0).normal(0, 1, (4, 20, 20)).astype(np.float32)
    assert "below -500" in modality_mismatch(z, "ct")
    assert "above 3000" in modality_mismatch(np.where(ct.array == -800, 4000, ct.array), "ct")
    cbct = ct.array.astype(np.float32) + np.float32(300)  # CBCT numbers: roughly HU, offset
    yy, xx = np.mgrid[:40, :48]
    cbct[:, (yy - 20) ** 2 + (xx - 24) ** 2 > 20**2] = -3024  # padding outside the cylindrical field of view
    assert modality_mismatch(cbct, "cbct") is None
    assert "within -1200..3000" in modality_mismatch(ct.array.astype(np.float32) * 10, "cbct")
    with pytest.raises(InputError, match="did you mean 'mr'"):
        modality_mismatch(ct.array, "mri")
    with pytest.raises(InputError, match=r"^/x/mr.nii.gz: does not look like a CT in HU: .*; go on$"):
        check_modality(mr, "ct", "/x/mr.nii.gz", "; go on")


def test_segment_refuses_implausible_modality_unless_allowed(ckpt: Path, tmp_path: Path) -> None:
    mr = write_volume(mri_like(), tmp_path / "mr.nii.gz")
    raw = write_volume(unshifted_ct(phantom_ct((4, 30, 34))), tmp_path / "raw.nii.gz")
    res = run("segment", "--model", ckpt, mr, "--out", tmp_path / "seg")
    one_line_error(res, f"{mr}: does not look like a CT in HU", "--allow-modality-mismatch")
    assert not (tmp_path / "seg").exists() or not any((tmp_path / "seg").iterdir())
    one_line_error(run("segment", "--model", ckpt, raw, "--out", tmp_path / "seg"), "-1024 HU shift")
    res = run("segment", "--model", ckpt, mr, raw, "--out", tmp_path / "seg", "--allow-modality-mismatch")
    assert res.exit_code == 0, res.output
    assert read_volume(tmp_path / "seg" / "mr.nii.gz").shape == (4, 30, 34)
    one_line_error(run("translate", "--model", ckpt, mr, "--out", tmp_path / "tr"), "--allow-modality-mismatch")
    res = run("translate", "--model", ckpt, mr, "--out", tmp_path / "tr", "--allow-modality-mismatch")
    assert res.exit_code == 0, res.output
    # mr2ct: the generator expects an MRI; a CT in HU is refused
    ct = write_volume(phantom_ct((4, 30, 34)), tmp_path / "ct.nii.gz")
    one_line_error(run("translate", "--model", ckpt, ct, "--direction", "mr2ct", "--out", tmp_path / "tr2"),
                   "does not look like an MRI")
    assert translate_files(ckpt, [mr], tmp_path / "tr2", direction="mr2ct", progress=False)[0].exists()

