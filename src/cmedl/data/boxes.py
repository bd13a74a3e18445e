"""Axial bounding-box annotations (weak labels): the box file, derivation from masks, rasterising.

The box file (one JSON per case, referenced by a manifest case's ``boxes`` key)::

    {"format": "cmedl-boxes", "version": 1,
     "image": {"size": [nx, ny, nz], "spacing": [sx, sy, sz], "origin": [ox, oy, oz],
               "direction": [9 floats]},
     "boxes": [{"slice": z, "x0": 10, "y0": 20, "x1": 31, "y1": 42, "lesion": 1}, ...]}

Boxes are in voxel indices of the image (arrays are ``[z, y, x]``): a box covers rows ``y0 <= y < y1``
and columns ``x0 <= x < x1`` of slice ``z`` (half-open, like Python slices; so ``x1 - x0`` is the
width in voxels). ``lesion`` is optional: the integer id (>= 1) of the 3D lesion the box belongs to.
``image`` records the geometry (ITK order, like :class:`~cmedl.io.image.Volume`) of the image the boxes
were drawn on; :func:`read_boxes` with a reference image refuses a box file made for another image.
A box-only case has no tumour voxels outside the union of its boxes; an empty ``boxes`` list means the
annotator found no tumour.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cmedl.errors import GeometryError, InputError
from cmedl.io.atomic import atomic_path
from cmedl.io.image import Volume
from cmedl.io.outputs import writing

BOX_FORMAT = "cmedl-boxes"
BOX_VERSION = 1
_BOX_KEYS = ("slice", "x0", "y0", "x1", "y1", "lesion")


@dataclass(frozen=True)
class AxialBox:
    """One axial box on slice ``slice``: rows ``y0 <= y < y1``, columns ``x0 <= x < x1`` (voxel indices)."""

    slice: int
    x0: int
    y0: int
    x1: int
    y1: int
    lesion: int | None = None

    def __post_init__(self) -> None:
        for name in ("slice", "x0", "y0", "x1", "y1", "lesion"):
            value = getattr(self, name)
            if value is None and name == "lesion":
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise InputError(f"box {name}: expected an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise InputError(f"box on slice {self.slice} is empty: x {self.x0}..{self.x1}, y {self.y0}..{self.y1} "
                             "(x1 > x0 and y1 > y0 are required; x1, y1 are exclusive)")
        if self.lesion is not None and self.lesion < 1:
            raise InputError(f"box on slice {self.slice}: lesion must be an integer >= 1, got {self.lesion}")

    @property
    def centre(self) -> tuple[int, int, int]:
        """The box's centre voxel ``(z, y, x)`` (the lower middle voxel for an even width)."""
        return (self.slice, (self.y0 + self.y1 - 1) // 2, (self.x0 + self.x1 - 1) // 2)

    def to_dict(self) -> dict:
        d = {"slice": self.slice, "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}
        if self.lesion is not None:
            d["lesion"] = self.lesion
        return d


@dataclass(frozen=True)
class BoxGeometry:
    """The grid the boxes were drawn on: ``size`` ``(nx, ny, nz)``, spacing/origin ``(x, y, z)`` mm, direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        for name in ("spacing", "origin", "direction"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    @classmethod
    def of(cls, volume: Volume) -> BoxGeometry:
        nz, ny, nx = volume.shape
        return cls((nx, ny, nz), tuple(volume.spacing), tuple(volume.origin), tuple(volume.direction))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return (self.size[2], self.size[1], self.size[0])

    def volume(self, array: np.ndarray | None = None) -> Volume:
        """A :class:`Volume` on this grid (zeros unless ``array`` is given)."""
        arr = np.zeros(self.shape, np.uint8) if array is None else array
        return Volume(arr, self.spacing, self.origin, self.direction)

    def difference(self, reference: Volume | BoxGeometry, atol: float = 1e-3) -> str | None:
        """How this grid differs from ``reference``'s (None: the same grid); tolerance as Volume.same_geometry."""
        other = reference if isinstance(reference, BoxGeometry) else BoxGeometry.of(reference)
        if self.size != other.size:
            return f"size (x, y, z) {self.size} != {other.size}"
        for name in ("spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            if not np.allclose(a, b, atol=atol):
                return f"{name} {tuple(round(v, 4) for v in a)} != {tuple(round(v, 4) for v in b)}"
        return None

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}


@dataclass(frozen=True)
class BoxSet:
    """The axial boxes of one image plus that image's grid."""

    boxes: tuple[AxialBox, ...]
    geometry: BoxGeometry

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", tuple(sorted(self.boxes, key=_box_key)))
        problem = bounds_problem(self.boxes, self.geometry.shape)
        if problem is not None:
            raise InputError(problem)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The image's array shape ``(z, y, x)``."""
        return self.geometry.shape

    def __len__(self) -> int:
        return len(self.boxes)

    def slices(self) -> list[int]:
        """Sorted indices of the slices that have at least one box."""
        return sorted({b.slice for b in self.boxes})

    def lesions(self) -> list[int]:
        """Sorted lesion ids used by the boxes (boxes without an id are not counted)."""
        return sorted({b.lesion for b in self.boxes if b.lesion is not None})

    def bounding_box(self) -> tuple[slice, slice, slice] | None:
        """The 3D ``(z, y, x)`` slices enclosing every box (None when there are no boxes)."""
        if not self.boxes:
            return None
        z = [b.slice for b in self.boxes]
        return (slice(min(z), max(z) + 1), slice(min(b.y0 for b in self.boxes), max(b.y1 for b in self.boxes)),
                slice(min(b.x0 for b in self.boxes), max(b.x1 for b in self.boxes)))

    def to_dict(self) -> dict:
        return {"format": BOX_FORMAT, "version": BOX_VERSION, "image": self.geometry.to_dict(),
                "boxes": [b.to_dict() for b in self.boxes]}


def _box_key(b: AxialBox) -> tuple:
    return (b.slice, b.lesion or 0, b.y0, b.x0, b.y1, b.x1)


def bounds_problem(boxes: Iterable[AxialBox], shape_zyx: Sequence[int]) -> str | None:
    """Why some box lies outside an image of array shape ``shape_zyx`` (None: every box fits)."""
    nz, ny, nx = (int(s) for s in shape_zyx)
    for b in boxes:
        if not 0 <= b.slice < nz:
            return f"box on slice {b.slice}: the image has slices 0..{nz - 1} only"
        if b.x0 < 0 or b.y0 < 0 or b.x1 > nx or b.y1 > ny:
            return (f"box on slice {b.slice} (x {b.x0}..{b.x1}, y {b.y0}..{b.y1}) is outside the image "
                    f"({nx} x {ny} voxels; x1, y1 are exclusive)")
    return None


# ---------------------------------------------------------------------- derivation and rasterising
def boxes_from_mask(mask: np.ndarray, reference: Volume, connectivity: int = 3) -> BoxSet:
    """Axial boxes of a binary mask ``[z, y, x]`` on ``reference``'s grid: per 3D connected lesion, per slice
    it touches, the bounding box of its voxels on that slice (``lesion`` = component number, 1, 2, ... in
    scan order). ``connectivity`` 3 = 26-connected lesions (1 = 6-connected)."""
    mask = np.asarray(mask)
    if mask.shape != reference.shape:
        raise GeometryError(f"mask shape {mask.shape} differs from the image shape {reference.shape}")
    labels, n = ndimage.label(mask > 0, ndimage.generate_binary_structure(3, connectivity))
    return boxes_from_label_map(labels, reference, n)


def boxes_from_label_map(labels: np.ndarray, reference: Volume | BoxGeometry, n: int | None = None) -> BoxSet:
    """Axial boxes of an integer lesion map ``[z, y, x]`` (0 background, k >= 1 lesion k): per lesion, per
    slice, the bounding box of its voxels. Used to re-derive boxes on another grid (resampling)."""
    geometry = reference if isinstance(reference, BoxGeometry) else BoxGeometry.of(reference)
    labels = np.asarray(labels)
    if labels.shape != geometry.shape:
        raise GeometryError(f"lesion map shape {labels.shape} differs from the image shape {geometry.shape}")
    n = int(labels.max()) if n is None and labels.size else (n or 0)
    boxes = []
    for lesion, obj in enumerate(ndimage.find_objects(labels.astype(np.int32, copy=False), max_label=n), 1):
        if obj is None:
            continue
        sub = labels[obj] == lesion
        z0, y_off, x_off = obj[0].start, obj[1].start, obj[2].start
        rows_any = sub.any(axis=2)  # [z, y]
        cols_any = sub.any(axis=1)  # [z, x]
        for k in range(sub.shape[0]):
            ys, xs = np.flatnonzero(rows_any[k]), np.flatnonzero(cols_any[k])
            if ys.size:
                boxes.append(AxialBox(z0 + k, x_off + int(xs[0]), y_off + int(ys[0]),
                                      x_off + int(xs[-1]) + 1, y_off + int(ys[-1]) + 1, lesion))
    return BoxSet(tuple(boxes), geometry)


def box_mask(boxset: BoxSet, shape: Sequence[int] | None = None) -> np.ndarray:
    """The union of the boxes as a bool array ``[z, y, x]`` (``shape`` defaults to the box file's image)."""
    return box_label_map(boxset, shape) > 0


def box_label_map(boxset: BoxSet, shape: Sequence[int] | None = None) -> np.ndarray:
    """The boxes rasterised as an int32 map ``[z, y, x]``: each box's lesion id (1 for boxes without one;
    where boxes of two lesions overlap the larger id wins)."""
    shape = tuple(boxset.shape if shape is None else shape)
    problem = bounds_problem(boxset.boxes, shape)
    if problem is not None:
        raise GeometryError(problem)
    out = np.zeros(shape, np.int32)
    for b in boxset.boxes:
        region = out[b.slice, b.y0:b.y1, b.x0:b.x1]
        np.maximum(region, b.lesion or 1, out=region)
    return out


def box_centres(boxset: BoxSet) -> np.ndarray:
    """The centre voxel ``(z, y, x)`` of every box, an int array ``(n, 3)`` (the point-guided baseline's input)."""
    return np.asarray([b.centre for b in boxset.boxes], dtype=np.int64).reshape(-1, 3)


def centre_mask(boxset: BoxSet, shape: Sequence[int] | None = None) -> np.ndarray:
    """A bool array ``[z, y, x]`` true at the centre voxel of every box (one point per box and slice)."""
    shape = tuple(boxset.shape if shape is None else shape)
    problem = bounds_problem(boxset.boxes, shape)
    if problem is not None:
        raise GeometryError(problem)
    out = np.zeros(shape, bool)
    c = box_centres(boxset)
    out[c[:, 0], c[:, 1], c[:, 2]] = True
    return out


# ---------------------------------------------------------------------- files
def write_boxes(path: str | Path, boxset: BoxSet) -> Path:
    """Write ``boxset`` as a box file (atomic; the folder is created)."""
    path = Path(path)
    with writing(path), atomic_path(path) as tmp:
        tmp.write_text(json.dumps(boxset.to_dict(), indent=1) + "\n")
    return path


def _number_list(value: object, n: int, what: str, path: Path, integer: bool = False) -> tuple:
    ok = isinstance(value, list) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    if ok and integer:
        ok = all(float(v).is_integer() and v > 0 for v in value)
    if not ok:
        kind = "positive integers" if integer else "numbers"
        raise InputError(f"image {what}: expected a list of {n} {kind}, got {value!r}", path)
    return tuple(int(v) for v in value) if integer else tuple(float(v) for v in value)


def parse_boxes(raw: object, path: Path) -> BoxSet:
    """A :class:`BoxSet` from a box file's JSON content; InputError (``path`` first) on any bad field."""
    if not isinstance(raw, dict) or raw.get("format") != BOX_FORMAT:
        raise InputError(f"not a box file (expected a JSON object with \"format\": \"{BOX_FORMAT}\")", path)
    if raw.get("version") != BOX_VERSION:
        raise InputError(f"unsupported box file version {raw.get('version')!r} (this cmedl reads {BOX_VERSION})",
                         path)
    image = raw.get("image")
    if not isinstance(image, dict):
        raise InputError("missing 'image' (the geometry of the image the boxes were drawn on)", path)
    try:
        geometry = BoxGeometry(_number_list(image.get("size"), 3, "size", path, integer=True),
                               _number_list(image.get("spacing"), 3, "spacing", path),
                               _number_list(image.get("origin"), 3, "origin", path),
                               _number_list(image.get("direction"), 9, "direction", path))
        # Volume checks spacing > 0 and an orthonormal direction
        Volume(np.zeros((1, 1, 1), np.uint8), geometry.spacing, geometry.origin, geometry.direction)
    except InputError as exc:
        if exc.path is not None:
            raise
        raise InputError(f"image: {exc}", path) from None
    items = raw.get("boxes")
    if not isinstance(items, list):
        raise InputError("'boxes' must be a list", path)
    boxes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"box {i}: expected a JSON object, got {item!r}", path)
        unknown = [k for k in item if k not in _BOX_KEYS]
        missing = [k for k in _BOX_KEYS[:5] if k not in item]
        if unknown or missing:
            what = f"unknown key(s) {', '.join(map(str, unknown))}" if unknown else f"missing {', '.join(missing)}"
            raise InputError(f"box {i}: {what} (keys: {', '.join(_BOX_KEYS)})", path)
        try:
            boxes.append(AxialBox(**item))
        except InputError as exc:
            raise InputError(f"box {i}: {exc}", path) from None
    problem = bounds_problem(boxes, geometry.shape)
    if problem is not None:
        raise InputError(problem, path)
    return BoxSet(tuple(boxes), geometry)


def read_boxes(path: str | Path, reference: Volume | None = None) -> BoxSet:
    """Read and check a box file. With ``reference`` (the case's image), a box file made for another grid is
    a :class:`GeometryError` (``path`` first). Boxes off the image or on slices it lacks: InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("box file not found" if not path.exists() else "box file is not a file", path)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"box file is not valid JSON ({getattr(exc, 'msg', exc)})", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None
    boxset = parse_boxes(raw, path)
    if reference is not None:
        diff = boxset.geometry.difference(reference)
        if diff is not None:
            raise GeometryError(f"box file was made for another image grid than the case's image ({diff})", path)
    return boxset
