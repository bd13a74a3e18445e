"""Reading and writing image files (NIfTI, NRRD, MHA/MHD through SimpleITK; DICOM series folders).

The :class:`~cmedl.io.image.Volume` type and its axis conventions live in :mod:`cmedl.io.image`;
it, :data:`IMAGE_SUFFIXES`, :func:`atomic_path` and :func:`check_same_geometry` are re-exported
here, so ``from cmedl.io.volume import Volume`` keeps working.

NIfTI files are checked by hand (header parsed with ``struct``, payload streamed) because SimpleITK reads a
truncated ``.nii``/``.nii.gz`` as valid (the missing voxels zero-filled), reads a zero, negative or
NaN ``pixdim`` as 1 mm (or its absolute value), silently falls back from a sheared sform to the qform,
reads NaN/Inf voxels as 0, and writes a short NIfTI file (disk full) without raising.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from cmedl.errors import InputError
from cmedl.io.atomic import atomic_path
from cmedl.io.dicom import read_dicom_series
from cmedl.io.image import IMAGE_SUFFIXES, Volume, check_same_geometry, orthonormal_error

__all__ = [
    "IMAGE_SUFFIXES",
    "NiftiHeader",
    "Volume",
    "atomic_path",
    "check_same_geometry",
    "nifti_has_nonfinite",
    "read_nifti_header",
    "read_volume",
    "write_volume",
]


def _has_image_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


# ------------------------------------------------------------------------------------ NIfTI header
#: NIfTI datatype codes -> numpy type (without byte order)
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_CHUNK = 1 << 24


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1/2 header that decide where the voxels are and what grid they are on."""

    endian: str  # "<" or ">"
    dims: tuple[int, ...]  # dim[1..dim[0]]: x, y, z, ...
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]  # pixdim[1..dim[0]]
    vox_offset: int
    scl: tuple[float, float]  # scl_slope, scl_inter
    sform_code: int
    sform: tuple[float, ...]  # srow_x, srow_y, srow_z (12 values)

    @property
    def end(self) -> int:
        """Bytes up to the end of the voxel data: ``vox_offset + nx*ny*nz*... * bitpix/8``."""
        return self.vox_offset + math.prod(self.dims) * self.bitpix // 8

    @property
    def dtype(self) -> np.dtype | None:
        code = _NIFTI_DTYPES.get(self.datatype)
        return None if code is None else np.dtype(self.endian + code)


def _parse_header(head: bytes) -> NiftiHeader | None:
    if len(head) < 348:
        return None
    e = next((e for e in "<>" if struct.unpack(e + "i", head[:4])[0] in (348, 540)), None)
    if e is None:
        return None
    if struct.unpack(e + "i", head[:4])[0] == 348:
        if head[344:347] != b"n+1":  # "ni1": a .hdr/.img pair, not a single file
            return None
        dim, (datatype, bitpix) = struct.unpack(e + "8h", head[40:56]), struct.unpack(e + "2h", head[70:74])
        pixdim, vox = struct.unpack(e + "8f", head[76:108]), struct.unpack(e + "f", head[108:112])[0]
        scl, sform_code = struct.unpack(e + "2f", head[112:120]), struct.unpack(e + "h", head[254:256])[0]
        srow, size = struct.unpack(e + "12f", head[280:328]), 348
    else:
        if len(head) < 540 or head[4:7] != b"n+2":
            return None
        (datatype, bitpix), dim = struct.unpack(e + "2h", head[12:16]), struct.unpack(e + "8q", head[16:80])
        pixdim, vox = struct.unpack(e + "8d", head[104:168]), struct.unpack(e + "q", head[168:176])[0]
        scl, sform_code = struct.unpack(e + "2d", head[176:192]), struct.unpack(e + "i", head[348:352])[0]
        srow, size = struct.unpack(e + "12d", head[400:496]), 540
    n = dim[0]
    if not 1 <= n <= 7 or min(dim[1:n + 1]) < 1 or bitpix <= 0 or bitpix % 8 or not size <= vox < 2**62:
        return None  # not a header we can vouch for: SimpleITK decides
    return NiftiHeader(e, tuple(dim[1:n + 1]), datatype, bitpix, tuple(pixdim[1:n + 1]), int(vox), scl,
                       sform_code, srow)


def read_nifti_header(path: str | Path) -> NiftiHeader | None:
    """The header of a single-file NIfTI-1/2 (``.nii`` or ``.nii.gz``), or None if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(540)
            if path.name.lower().endswith(".gz"):
                d = zlib.decompressobj(31)
                head = d.decompress(head, 540)
                while len(head) < 540 and not d.eof and (more := d.unconsumed_tail or f.read(4096)):
                    head += d.decompress(more, 540 - len(head))
    except (OSError, zlib.error):
        return None
    return _parse_header(head)


def _check_header(h: NiftiHeader, path: Path) -> None:
    """Refuse what SimpleITK would silently replace: a spacing that is not a positive number (read
    as 1 mm or as its absolute value) and a sheared sform (it falls back to the qform)."""
    for axis, value in zip("xyz", h.pixdim[:3]):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"NIfTI header voxel spacing along {axis} (pixdim) is {value:g}; it must be a "
                             "positive number", path)
    if h.sform_code > 0:
        m = np.asarray(h.sform, dtype=float).reshape(3, 4)[:, :3]
        norms = np.linalg.norm(m, axis=0)
        if not (np.isfinite(m).all() and norms.min() > 0):
            raise InputError("NIfTI sform matrix is degenerate (zero or non-finite columns)", path)
        problem = orthonormal_error(m / norms)
        if problem is not None:
            raise InputError(f"NIfTI sform {problem}", path)


# ------------------------------------------------------------------------------------ NIfTI payload
def _blocks(f: BinaryIO, gz: bool, chunk: int) -> Iterator[bytes]:
    """The file's bytes in blocks of at most ``chunk`` (gzip: decompressed, CRC and length checked,
    members concatenated). Raises EOFError if a gzip stream is cut short, zlib.error if corrupt."""
    if not gz:
        while block := f.read(chunk):
            yield block
        return
    d, pending = zlib.decompressobj(31), b""
    while True:
        if d.eof:
            pending = pending.lstrip(b"\0")  # zero padding after a member is allowed (gzip(1) does too)
            if pending:
                d = zlib.decompressobj(31)  # another member follows
        if not pending:
            pending = f.read(1 << 20)
            if not pending:
                if tail := d.flush():
                    yield tail
                if not d.eof:
                    raise EOFError
                return
            continue
        out = d.decompress(pending, chunk)
        pending = d.unused_data if d.eof else d.unconsumed_tail
        if out:
            yield out


def _stream(path: Path, h: NiftiHeader, visit: Callable[[int, memoryview], None] | None,
            chunk: int = _CHUNK) -> None:
    """Read the whole file once, passing each piece of the voxel data to ``visit(offset, piece)``.

    Raises InputError naming ``path`` if it holds fewer bytes than the header promises, if a gzip
    stream is cut short (the last bytes missing) or fails its CRC.
    """
    pos, cut = 0, False
    try:
        with open(path, "rb") as f:
            for block in _blocks(f, path.name.lower().endswith(".gz"), chunk):
                a, b = max(pos, h.vox_offset), min(pos + len(block), h.end)
                if visit is not None and a < b:
                    visit(a - h.vox_offset, memoryview(block)[a - pos:b - pos])
                pos += len(block)
    except EOFError:
        cut = True
    except zlib.error as exc:
        raise InputError(f"corrupt gzip data after {pos} bytes ({exc})", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path) from None
    if pos < h.end:
        raise InputError(f"truncated: {pos} of {h.end} bytes", path)
    if cut:
        raise InputError("truncated: the gzip stream ends before its CRC trailer", path)


class _NonFinite:
    """A ``visit`` for :func:`_stream` that records whether float voxels hold NaN or Inf."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype, self.carry, self.found = dtype, b"", False

    def __call__(self, offset: int, piece: memoryview) -> None:
        if self.found:
            return
        buf = self.carry + bytes(piece) if self.carry else piece
        usable = len(buf) - len(buf) % self.dtype.itemsize
        self.carry = bytes(buf[usable:])
        if usable and not np.isfinite(np.frombuffer(buf[:usable], self.dtype)).all():
            self.found = True


def _check_nifti(path: Path) -> bool:
    """Check a NIfTI file before SimpleITK reads it; returns whether its float voxels hold NaN/Inf."""
    h = read_nifti_header(path)
    if h is None:
        return False
    _check_header(h, path)
    dtype = h.dtype
    scan = _NonFinite(dtype) if dtype is not None and dtype.kind == "f" else None
    if scan is None and not path.name.lower().endswith(".gz"):
        if (size := path.stat().st_size) < h.end:
            raise InputError(f"truncated: {size} of {h.end} bytes", path)
        return False
    _stream(path, h, scan)
    return bool(scan is not None and scan.found)


def nifti_has_nonfinite(path: str | Path, chunk_bytes: int = _CHUNK) -> bool:
    """Whether a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) stores NaN or infinite voxel values.

    Written by hand because SimpleITK's NIfTI reader silently turns NaN and Inf into 0 (checked with
    SimpleITK 2.5: NRRD and MHA keep them), which would make a NaN-padded resampled scan look like water
    instead of being refused. Streams the float payload in chunks (integer files are not scanned: they
    cannot hold NaN). Returns False for anything it cannot parse.
    """
    path = Path(path)
    h = read_nifti_header(path)
    if h is None or h.dtype is None or h.dtype.kind != "f":
        return False
    scan = _NonFinite(h.dtype)
    try:
        _stream(path, h, scan, max(8, chunk_bytes - chunk_bytes % 8))
    except InputError:
        pass  # truncated or corrupt: what was read still counts
    return scan.found


# ------------------------------------------------------------------------------------ reading
def read_volume(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read a 3D volume from NIfTI, NRRD, MHA/MHD, or a DICOM series folder.

    Args:
        path: an image file, or a folder holding one DICOM series (or several: then pass
            ``series_uid``).
        series_uid: SeriesInstanceUID to pick when a DICOM folder holds several series.

    Raises:
        InputError: one line naming ``path`` and the problem (missing, unreadable, truncated, not 3D,
            spacing not positive, direction not orthonormal, ...).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid)
    if path.suffix.lower() == ".dcm":
        raise InputError("is a single DICOM file; pass the folder holding the whole series", path)
    nonfinite = _check_nifti(path) if _is_nifti(path) else False
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "ERROR" in line or "rror" in line), "")
        raise InputError(f"cannot read image ({detail.strip()[:160] or 'unreadable or corrupt'})", path) from None
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and 1 in image.GetSize()[2:]):
        raise InputError(f"image is 2D (size {image.GetSize()}); a 3D volume is required", path)
    try:
        vol = Volume.from_sitk(image, meta={"source": str(path)})
    except InputError as exc:
        raise InputError(str(exc), path) from None
    if np.issubdtype(vol.array.dtype, np.floating) and (nonfinite or not np.isfinite(vol.array).all()):
        # has_nonfinite also covers NIfTI files whose NaN SimpleITK read as 0: consumers refuse them
        vol.meta["has_nonfinite"] = "1"
    return vol


# ------------------------------------------------------------------------------------ writing
class _Differs(Exception):
    pass


def _written_difference(volume: Volume, tmp: Path) -> str | None:
    """How the file just written differs from ``volume`` (None if it holds exactly its grid and voxels).

    NIfTI voxels are compared byte for byte while the file is streamed (decompressed, CRC-checked),
    without a second copy of the image; other formats are read back whole. Cost measured on a
    512x512x134 float32 CT-like volume (2-core machine): .nii.gz written in 9.4 s, checked in 0.9 s
    (+9 %); .nii 0.5 s + 0.2 s; a uint8 mask .nii.gz 2.1 s + 0.3 s.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "unreadable header"
    if tuple(reversed(reader.GetSize())) != volume.shape:
        return f"size {reader.GetSize()}"
    for name, got, want in (("spacing", reader.GetSpacing(), volume.spacing),
                            ("origin", reader.GetOrigin(), volume.origin),
                            ("direction", reader.GetDirection(), volume.direction)):
        if not np.allclose(got, want, rtol=1e-6, atol=1e-3):
            return f"{name} {tuple(round(v, 4) for v in got)}"
    arr = volume.array.view(np.uint8) if volume.array.dtype == np.bool_ else volume.array
    h = read_nifti_header(tmp) if _is_nifti(tmp) else None
    dtype = None if h is None or h.scl[0] not in (0.0, 1.0) or h.scl[1] != 0.0 else h.dtype
    if dtype is not None and (dtype.kind, dtype.itemsize) == (arr.dtype.kind, arr.dtype.itemsize):
        expected = np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8)

        def compare(offset: int, piece: memoryview) -> None:
            if not np.array_equal(np.frombuffer(piece, np.uint8), expected[offset:offset + len(piece)]):
                raise _Differs(offset)

        try:
            _stream(tmp, h, compare)
        except InputError as exc:
            return str(exc)[len(str(tmp)) + 2:]
        except _Differs as exc:
            return f"voxels differ from byte {exc.args[0]} of the voxel data"
        return None
    try:
        image = sitk.ReadImage(str(tmp))
    except RuntimeError:
        return "unreadable voxel data"
    back = sitk.GetArrayViewFromImage(image)  # a view: `image` must stay alive while it is used
    if back.shape != arr.shape or not np.array_equal(back, arr, equal_nan=arr.dtype.kind == "f"):
        return "voxels differ"
    return None


def write_volume(volume: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``volume`` to NIfTI/NRRD/MHA (chosen by suffix), atomically, and check it reads back
    identical before it gets its final name (SimpleITK's NIfTI writer does not report a short write).

    Raises:
        InputError: naming ``path``: unsupported suffix, or the file could not be written completely
            (then neither it nor a temporary file is left behind).
    """
    path = Path(path)
    if not _has_image_suffix(path) or path.name.lower().endswith((".mhd", ".nhdr")):
        raise InputError(
            "unsupported output suffix; use .nii.gz, .nii, .nrrd or .mha", path
        )
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=compress)
        except RuntimeError as exc:
            # the temporary folder is ours and writable, so a failed write is most likely a full disk
            lines = [line.strip() for line in str(exc).replace(str(tmp), str(path)).splitlines() if line.strip()]
            reason = next((ln for ln in reversed(lines) if "Reason" in ln or "rror" in ln), "SimpleITK error")
            reason = re.sub(r"^(ITK ERROR: )?\w+\(0x[0-9a-f]+\): |^Reason: ", "", reason)[:160]
            raise InputError(f"could not write ({reason}; disk full?)", path) from None
        problem = _written_difference(volume, tmp)
        if problem is not None:
            raise InputError(f"could not write: the file read back is wrong ({problem}); disk full?", path)
    return path
