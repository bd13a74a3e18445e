"""Faults of the file layer (issue 13): never lose or silently corrupt a user's data.

Disk full (W1), truncated NIfTI (W2), bad NIfTI spacing (W3), sheared directions (W4), leftover
temporaries of killed writes (W11), file modes, NaN checkpoints (W6) and malicious pickles.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cmedl.errors import InputError
from cmedl.io import Volume, atomic_path, read_volume, write_volume
from cmedl.io import volume as volume_module
from cmedl.training.checkpoint import load_checkpoint, save_checkpoint
from cmedl.training.logging import write_history_csv

LEGACY = Path(__file__).parent / "data" / "legacy-cmedl-checkpoint-v1.pt"
NIFTI = [".nii", ".nii.gz"]


@pytest.fixture
def vol() -> Volume:
    arr = np.random.default_rng(0).normal(0, 300, (6, 20, 24)).astype(np.float32)
    return Volume(arr, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 30.0))


def one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    return msg


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------ W1: disk full on write
@pytest.mark.parametrize("suffix", [*NIFTI, ".nrrd", ".mha"])
def test_short_write_is_refused_and_keeps_the_previous_file(tmp_path, vol, monkeypatch, suffix):
    """SimpleITK's NIfTI writer reports a short write (disk full) only on stderr: the written file is
    read back before it is renamed into place."""
    out = write_volume(vol, tmp_path / f"mask{suffix}")  # a previous good file
    real_write = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) * 2 // 3])

    monkeypatch.setattr(volume_module.sitk, "WriteImage", short_write)
    with pytest.raises(InputError) as exc:
        write_volume(vol.with_array(vol.array + 1), out)
    assert "could not write" in one_line(exc, out) and "disk full?" in str(exc.value)
    assert listing(tmp_path) == [out.name]  # no temporary left behind
    monkeypatch.undo()
    np.testing.assert_array_equal(read_volume(out).array, vol.array)


def test_wrong_voxels_of_full_length_are_refused(tmp_path, vol, monkeypatch):
    real_write = sitk.WriteImage

    def flip_a_byte(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        data = bytearray(Path(name).read_bytes())
        data[-3] ^= 0xFF
        Path(name).write_bytes(bytes(data))

    monkeypatch.setattr(volume_module.sitk, "WriteImage", flip_a_byte)
    out = tmp_path / "ct.nii"
    with pytest.raises(InputError, match="voxels differ"):
        write_volume(vol, out)
    assert listing(tmp_path) == []


def test_writer_error_names_the_final_path_also_through_a_nested_temporary(tmp_path, vol, monkeypatch):
    def enospc(*_args, **_kwargs):
        raise RuntimeError("ITK ERROR: NiftiImageIO(0x1234): Could not write\nReason: No space left on device")

    monkeypatch.setattr(volume_module.sitk, "WriteImage", enospc)
    out = tmp_path / "images" / "case.nii.gz"
    with pytest.raises(InputError) as exc, atomic_path(out) as tmp:  # the importer's pattern
        write_volume(vol, tmp)
    assert one_line(exc, out) == f"{out}: could not write (No space left on device; disk full?)"
    assert listing(out.parent) == []


def test_enospc_in_checkpoint_and_text_writes(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "best.pt", {"method": "ct-only", "config": {}, "preprocess": {},
                                                  "networks": {}, "epoch": 1})
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):  # what torch's zip writer does on ENOSPC
        f.write(b"PK partial")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(InputError) as exc:
        save_checkpoint(ckpt, {"method": "ct-only", "config": {}, "preprocess": {}, "networks": {}, "epoch": 2})
    assert one_line(exc, ckpt) == f"{ckpt}: could not write (No space left on device: disk full?)"
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(ckpt)["epoch"] == 1

    def full_disk_text(self, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk_text)
    with pytest.raises(InputError, match=r"log\.csv: could not write \(No space left on device: disk full\?\)$"):
        write_history_csv(tmp_path / "log.csv", [{"epoch": 1}])
    assert listing(tmp_path) == ["best.pt"]


_TMPFS_SCRIPT = """
import json, sys
import numpy as np, torch
from cmedl.errors import InputError
from cmedl.io import Volume, write_volume
from cmedl.training.checkpoint import save_checkpoint
from cmedl.training.logging import write_history_csv
d = sys.argv[1]
vol = Volume(np.random.default_rng(0).normal(0, 300, (40, 64, 64)).astype(np.float32))
jobs = {"nii": lambda: write_volume(vol, d + "/x.nii"), "niigz": lambda: write_volume(vol, d + "/x.nii.gz"),
        "pt": lambda: save_checkpoint(d + "/best.pt", {"w": torch.zeros(300000)}),
        "csv": lambda: write_history_csv(d + "/log.csv", [{"a": "x" * 400000}])}
out = {}
for name, job in jobs.items():
    try:
        job()
        out[name] = "written"
    except InputError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def test_disk_full_on_a_real_small_tmpfs(tmp_path):
    """Optional: a 128 KiB tmpfs in a private mount namespace (skipped where that is not allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_TMPFS_SCRIPT)
    cmd = (f"mount -t tmpfs -o size=128k tmpfs {mnt} || exit 77; "
           f"{sys.executable} {script} {mnt} && ls -A {mnt}")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()[-200:]}")
    import json

    lines = run.stdout.strip().splitlines()
    result, left = json.loads(lines[0]), lines[1:]
    assert left == []  # neither final files nor temporaries
    for name, message in result.items():
        assert "could not write" in message and "disk full?" in message, (name, message)


# ------------------------------------------------------------------------ W2: truncated NIfTI
@pytest.mark.parametrize("suffix", NIFTI)
def test_truncated_nifti_is_refused(tmp_path, vol, suffix):
    good = write_volume(vol, tmp_path / f"good{suffix}")
    data = good.read_bytes()
    expected = 352 + vol.array.nbytes
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"truncated: \d+ of {expected} bytes$") as exc:
        read_volume(cut)
    one_line(exc, cut)
    if suffix == ".nii":
        with pytest.raises(InputError, match=rf"^{cut}: truncated: {len(data) // 2} of {expected} bytes$"):
            read_volume(cut)
        extra = tmp_path / "padded.nii"  # trailing bytes after the voxels are allowed
        extra.write_bytes(data + b"\0" * 16)
        np.testing.assert_array_equal(read_volume(extra).array, vol.array)
        return
    no_trailer = tmp_path / f"no_trailer{suffix}"
    no_trailer.write_bytes(data[:-4])  # every voxel there, the length field of the trailer missing
    with pytest.raises(InputError, match="truncated: the gzip stream ends before its CRC trailer$"):
        read_volume(no_trailer)
    bad_crc = bytearray(data)
    bad_crc[-8] ^= 0xFF
    (tmp_path / "crc.nii.gz").write_bytes(bytes(bad_crc))
    with pytest.raises(InputError, match="corrupt gzip data"):
        read_volume(tmp_path / "crc.nii.gz")
    # concatenated gzip members (e.g. `cat a.gz b.gz`) are one valid stream
    raw = gzip.decompress(data)
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(read_volume(tmp_path / "members.nii.gz").array, vol.array)


def test_gzip_stream_check_handles_highly_compressible_masks(tmp_path):
    mask = Volume(np.zeros((40, 256, 256), np.uint8))  # 2.6 MB of zeros: a few KB compressed
    out = write_volume(mask, tmp_path / "empty.nii.gz")
    assert out.stat().st_size < 50_000
    assert read_volume(out).array.shape == (40, 256, 256)
    assert volume_module.nifti_has_nonfinite(out, chunk_bytes=1000) is False


# ------------------------------------------------------------------------ W3: NIfTI spacing
def _patched_nifti(path: Path, src: Path, pixdim=None, qform=None, sform=None, srow=None) -> Path:
    b = bytearray(src.read_bytes())
    if pixdim is not None:
        b[80:92] = struct.pack("<3f", *pixdim)
    if qform is not None:
        b[252:254] = struct.pack("<h", qform)
    if sform is not None:
        b[254:256] = struct.pack("<h", sform)
    if srow is not None:
        b[280:328] = struct.pack("<12f", *srow)
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize("bad", [0.0, -0.8, float("nan"), float("inf")])
@pytest.mark.parametrize("codes", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_nifti_spacing_that_is_not_positive_is_refused(tmp_path, vol, bad, codes):
    """SimpleITK reads pixdim 0/NaN as 1 mm and a negative one as its absolute value, with or without
    a qform/sform (it takes the spacing from pixdim)."""
    src = write_volume(vol, tmp_path / "src.nii")
    p = _patched_nifti(tmp_path / "bad.nii", src, pixdim=(bad, 0.9, 2.5), qform=codes[0], sform=codes[1])
    with pytest.raises(InputError, match=r"voxel spacing along x \(pixdim\) is .*; it must be a positive number$") as exc:
        read_volume(p)
    one_line(exc, p)


def test_volume_refuses_non_finite_geometry(vol):
    with pytest.raises(InputError, match="spacing must be positive"):
        Volume(vol.array, spacing=(float("nan"), 1.0, 1.0))
    with pytest.raises(InputError, match="origin must be finite"):
        Volume(vol.array, origin=(0.0, float("inf"), 0.0))


# ------------------------------------------------------------------------ W4: sheared directions
SHEARED = (1.0, 0.0, 0.3, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_volume_refuses_non_orthonormal_directions(vol):
    with pytest.raises(InputError, match="not orthonormal: its axes are sheared"):
        Volume(vol.array, direction=SHEARED)
    with pytest.raises(InputError, match="not orthonormal: its axes are not unit vectors"):
        Volume(vol.array, direction=(2.0, 0, 0, 0, 1, 0, 0, 0, 1))
    Volume(vol.array, direction=(1.0, 0, 0, 0, 1, 0, 0, 0, 1 - 3e-5))  # float32 / decimal noise is fine


@pytest.mark.parametrize("qform", [0, 1])
def test_sheared_nifti_sform_is_refused(tmp_path, vol, qform):
    """With a qform SimpleITK silently used it instead of the sheared sform (another grid); without it
    the error was ITK's."""
    src = write_volume(vol, tmp_path / "src.nii")
    shear = (-0.8, 0.0, 0.75, 0.0, 0.0, -0.9, 0.0, 0.0, 0.0, 0.0, 2.5, 0.0)
    p = _patched_nifti(tmp_path / "sheared.nii", src, qform=qform, sform=1, srow=shear)
    with pytest.raises(InputError, match="NIfTI sform direction matrix is not orthonormal: its axes are sheared") as exc:
        read_volume(p)
    one_line(exc, p)


@pytest.mark.parametrize("suffix, key, value", [
    (".nrrd", b"space directions", b"space directions: (1,0,0) (0,1,0) (0.3,0,1)"),
    (".mha", b"TransformMatrix", b"TransformMatrix = 1 0 0 0 1 0 0.3 0 1"),
])
def test_sheared_nrrd_and_mha_are_refused(tmp_path, vol, suffix, key, value):
    src = tmp_path / f"src{suffix}"
    sitk.WriteImage(vol.to_sitk(), str(src), useCompression=False)
    text = src.read_bytes()
    i = text.index(key)
    p = tmp_path / f"sheared{suffix}"
    p.write_bytes(text[:i] + value + text[text.index(b"\n", i):])
    with pytest.raises(InputError, match="direction matrix is not orthonormal") as exc:
        read_volume(p)
    one_line(exc, p)


def test_dicom_cosine_rounding_noise_gives_an_orthonormal_volume(tmp_path, vol):
    import pydicom

    from cmedl.io.dicom import write_dicom_series

    files = write_dicom_series(vol.with_array(np.rint(vol.array).astype(np.int16)), tmp_path / "ct")
    for f in files:  # column cosine 5e-4 off orthogonal: within DICOM's tolerance, not Volume's
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = ["1", "0", "0", "0.0005", "0.99999988", "0"]
        ds.save_as(f)
    back = read_volume(tmp_path / "ct")
    d = back.direction_matrix
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)


# ------------------------------------------------------------------------ W11: temporaries
def test_killed_write_leaves_no_globbable_file_and_is_cleaned_up(tmp_path, vol):
    target = tmp_path / "pred" / "case.nii.gz"
    code = ("import os, signal\nfrom cmedl.io.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_bytes(b'partial')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert run.returncode == -signal.SIGKILL
    folder = target.parent
    stale = [p for p in folder.iterdir() if p.name.startswith(".cmedl-tmp-")]
    assert len(stale) == 1 and (stale[0] / "case.nii.gz").exists()
    assert list(folder.glob("*.nii.gz")) == [] and list(folder.glob("*.gz")) == []  # hidden folder: no suffix
    # temporaries of live processes (pid 1) and of other hosts are kept
    alive = folder / f".cmedl-tmp-1-{stale[0].name.split('-')[3]}-abcdefgh"
    other_host = folder / ".cmedl-tmp-999999-00000000-abcdefgh"
    alive.mkdir()
    other_host.mkdir()
    # leftovers of the earlier `.<name>.XXXXXXXX.tmp<suffix>` scheme for this file: removed when old
    old = folder / ".case.nii.gz.ab_cd123.tmp.nii.gz"
    fresh = folder / ".case.nii.gz.zz_cd123.tmp.nii.gz"
    for p in (old, fresh):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    write_volume(vol, target)
    assert listing(folder) == sorted([alive.name, other_host.name, fresh.name, "case.nii.gz"])


def test_stale_checkpoint_temporary_of_the_old_scheme_is_removed(tmp_path):
    old = tmp_path / ".best.pt.k2j4h5g6.tmp"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    save_checkpoint(tmp_path / "best.pt", {"method": "ct-only", "config": {}, "preprocess": {}, "networks": {}})
    assert listing(tmp_path) == ["best.pt"]


# ------------------------------------------------------------------------ permissions
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_normal_mode(tmp_path, vol, umask):
    old = os.umask(umask)
    try:
        paths = [
            write_volume(vol, tmp_path / "a.nii.gz"),
            write_volume(vol, tmp_path / "a.nrrd"),
            save_checkpoint(tmp_path / "best.pt", {"method": "ct-only", "config": {}, "preprocess": {},
                                                    "networks": {}}),
            write_history_csv(tmp_path / "log.csv", [{"epoch": 1}]),
        ]
    finally:
        os.umask(old)
    for p in paths:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p.name


# ------------------------------------------------------------------------ checkpoints
def test_nan_weights_are_refused_naming_checkpoint_and_network(tmp_path):
    from cmedl.methods.checkpoints import build_student_from_checkpoint

    ckpt = load_checkpoint(LEGACY)
    weights = ckpt["networks"]["student_ct"]
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = float("nan")
    source = tmp_path / "diverged.pt"
    with pytest.raises(InputError) as exc:
        build_student_from_checkpoint(ckpt, source)
    assert one_line(exc, source) == (f"{source}: 'student_ct' weights hold NaN or infinite values (in '{key}'); "
                                     "the checkpoint is unusable (was it saved after training diverged?)")


class _Payload:
    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self):
        return (os.remove, (str(self.victim),))


def test_malicious_pickle_is_refused_in_one_line_without_warnings(tmp_path, capfd):
    victim = tmp_path / "precious.txt"
    victim.write_text("data")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cmedl-checkpoint/1", "x": _Payload(victim)}, evil)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError) as exc:
            load_checkpoint(evil)
    msg = one_line(exc, evil)
    assert msg == (f"{evil}: not a cmedl checkpoint: it holds Python objects that a weights-only checkpoint "
                   f"may not hold ({os.remove.__module__}.remove); it was not loaded")
    assert victim.exists() and caught == [] and capfd.readouterr().err == ""
