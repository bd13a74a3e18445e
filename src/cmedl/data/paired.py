"""A second image of the same patient on a case's grid, put on that case's working grid.

The phantom's paired-oracle control arm (``cmedl data phantom --paired-oracle``) renders the same
anatomy as MRI on the CT grid (manifest key ``paired_mr``). :func:`prepare_paired` gives that MRI
exactly the spatial path of the CT (:func:`cmedl.data.preprocess.prepare_volume`: in-plane
resampling, the CT's body window) but the MRI's own intensity normalisation, computed inside the
CT's body mask, so that a CT patch and its paired-MRI patch cover the same anatomy voxel for voxel.
This is an upper-bound control only: CMEDL itself never sees paired MRI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmedl.data.cropping import extract_window
from cmedl.data.preprocess import PreparedVolume, PreprocessConfig, normalise_intensity
from cmedl.data.resampling import resample_volume
from cmedl.errors import GeometryError, InputError
from cmedl.io.volume import Volume


def prepare_paired(volume: Volume, prepared: PreparedVolume, cfg: PreprocessConfig,
                   source: str | Path | None = None) -> np.ndarray:
    """``volume`` (on the input grid of ``prepared``) on ``prepared``'s working grid, normalised by ``cfg``.

    Returns float32 ``[z, rows, cols]`` of ``prepared.shape``. Raises :class:`GeometryError` naming
    ``source`` when ``volume`` is not on the grid ``prepared`` was made from, :class:`InputError`
    for non-finite voxels.
    """
    where = source if source is not None else volume.meta.get("source", "paired image")
    if volume.shape != prepared.input_shape or not (
        np.allclose(volume.spacing, prepared.input_spacing, atol=1e-3)
        and np.allclose(volume.origin, prepared.origin, atol=1e-3)
        and np.allclose(volume.direction, prepared.direction, atol=1e-3)
    ):
        raise GeometryError(f"paired image is not on its case's image grid ({volume.shape} {volume.spacing} vs "
                            f"{prepared.input_shape} {prepared.input_spacing})", where)
    arr = volume.array.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError("paired image has NaN or infinite voxels", where)
    if prepared.resampled:
        arr = resample_volume(Volume(arr, volume.spacing, volume.origin, volume.direction),
                              prepared.resampled_spacing).array
    window = extract_window(arr, (0, *prepared.crop_start), prepared.shape, float(arr.min()))
    body = prepared.body
    out = normalise_intensity(window, body if body.any() else None, cfg).astype(np.float32)
    if prepared.config.mask_outside_body and body.any():
        out = np.where(body, out, np.float32(out.min())).astype(np.float32)
    return out


__all__ = ["prepare_paired"]
