"""Surface elements ("surfels") of a binary mask: corner points of the voxel grid and their areas.

A surfel is a voxel-corner point whose 2x2x2 neighbourhood is mixed (some voxels in, some out); its
area is that of the marching-cubes triangles of the neighbourhood, as in DeepMind's
``surface-distance`` package (definition in :mod:`cmedl.evaluation.metrics`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cmedl.evaluation.binary_masks import Spacing, bounding_box, check_spacing


@functools.cache
def _unit_triangle_normals() -> np.ndarray:
    """Area vectors of the marching-cubes triangles of each 2x2x2 neighbourhood code, unit spacing.

    Returns ``[256, T, 3]`` float64 (zero-padded): triangle ``t`` of code ``c`` has area
    ``|n|`` and normal direction ``n`` in array axes ``(0, 1, 2)``. Bit ``7 - (4i + 2j + k)`` of a
    code is the voxel at corner offset ``(i, j, k)``.

    DeepMind's table is the marching-cubes (Lorensen) triangulation of the configuration whose
    "inside" voxels are the minority (codes with more than 4 voxels set use their complement's
    triangles), so the table is symmetric under complement. We rebuild it with scikit-image's
    marching cubes instead of carrying 256 hard-coded rows; a test checks it against the
    ``surface-distance`` package for random spacings.
    """
    from skimage import measure  # lazy: heavy import, needed once per process (the table is cached)

    per_code: list[np.ndarray] = []
    for code in range(256):
        n_set = code.bit_count()
        if n_set in (0, 8):
            per_code.append(np.zeros((0, 3)))
            continue
        use = code if n_set <= 4 else 255 - code
        cube = np.zeros((2, 2, 2))
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    cube[i, j, k] = (use >> (7 - (4 * i + 2 * j + k))) & 1
        verts, faces, _, _ = measure.marching_cubes(cube, 0.5, method="lorensen", allow_degenerate=True)
        tri = verts[faces]
        per_code.append(0.5 * np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    t_max = max(len(n) for n in per_code)
    out = np.zeros((256, t_max, 3))
    for code, n in enumerate(per_code):
        out[code, : len(n)] = n
    return out


def surfel_area_table(spacing: Spacing) -> np.ndarray:
    """Surface area in mm^2 of the surfel at a corner with each 2x2x2 neighbourhood code (256,).

    ``spacing`` is ``(z, y, x)`` mm. An axis scaling ``diag(s)`` maps a triangle's area vector
    ``n`` to ``(s1*s2*n0, s0*s2*n1, s0*s1*n2)``; the surfel area is the sum of triangle areas.
    """
    s0, s1, s2 = check_spacing(spacing)
    weights = np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.linalg.norm(_unit_triangle_normals() * weights, axis=-1).sum(axis=-1)


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """2x2x2 neighbourhood code of every voxel corner of ``mask`` (shape + 1 per axis), uint8.

    Corner ``p`` lies between voxels ``p - 1`` and ``p`` on each axis; voxels outside the array
    count as background. Same bit order as DeepMind's ``ENCODE_NEIGHBOURHOOD_3D_KERNEL``.
    """
    n0, n1, n2 = mask.shape
    padded = np.zeros((n0 + 2, n1 + 2, n2 + 2), np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    code = np.zeros((n0 + 1, n1 + 1, n2 + 1), np.uint8)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                bit = 7 - (4 * i + 2 * j + k)
                code |= padded[i : i + n0 + 1, j : j + n1 + 1, k : k + n2 + 1] << np.uint8(bit)
    return code


@dataclass(frozen=True)
class MaskSurface:
    """Surfels of one mask: global corner indices ``[N, 3]`` (z, y, x), areas (mm^2), voxel count."""

    corners: np.ndarray
    areas: np.ndarray
    n_voxels: int
    box: tuple[slice, slice, slice] | None


def mask_surface(mask: np.ndarray, table: np.ndarray) -> MaskSurface:
    """Surfels of ``mask`` computed on its own bounding box (exact: outside it the codes are 0)."""
    bb = bounding_box(mask)
    if bb is None:
        return MaskSurface(np.zeros((0, 3), np.int64), np.zeros(0), 0, None)
    box = tuple(slice(a, b) for a, b in bb)
    crop = mask[box]
    code = _neighbour_codes(crop)
    idx = np.nonzero((code != 0) & (code != 255))
    corners = np.stack(idx, axis=1).astype(np.int64)
    corners += np.array([a for a, _ in bb], dtype=np.int64)
    return MaskSurface(corners, table[code[idx]], int(np.count_nonzero(crop)), box)  # type: ignore[arg-type]
