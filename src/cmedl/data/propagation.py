"""Propagating a planning-CT contour onto a CBCT (CBCT paper, Sec. II.A): register
(:func:`cmedl.data.registration.register_images`), resample the mask on the CBCT grid, write the results.

Outputs of :func:`propagate_files` (``<out>/<case>_mask.nii.gz`` on the fixed grid, optionally the warped
CT and the transform) are checked before any work and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmedl.data.registration import (
    MASK_INTERPOLATIONS,
    PropagateConfig,
    PropagationResult,
    register_images,
)
from cmedl.errors import GeometryError, InputError, did_you_mean
from cmedl.io.atomic import atomic_path
from cmedl.io.image import IMAGE_SUFFIXES
from cmedl.io.outputs import check_output_folder, writing
from cmedl.io.volume import Volume, read_volume, write_volume


def _check_mask(mask: Volume, moving: Volume, mask_name: str | Path, moving_name: str | Path) -> None:
    """The mask is on the moving image's grid and holds 0 and 1, at least one 1."""
    diff = mask.geometry_difference(moving)
    if diff is not None:
        raise GeometryError(f"mask is not on the voxel grid of the moving image {moving_name} (the planning CT it "
                            f"was drawn on): {diff}", mask_name)
    arr = mask.array
    bad = (arr != 0) & (arr != 1)
    if mask.meta.get("has_nonfinite") == "1" or bad.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(arr[bad]).astype(np.float64)[:6]) or "NaN"
        raise InputError(f"mask is not binary (values {shown} besides 0 and 1); a mask must hold 0 and 1 only",
                         mask_name)
    if not arr.any():
        raise InputError("mask is empty (no voxel is 1): nothing to propagate", mask_name)


def resample_mask(mask: Volume, fixed: Volume, transform: sitk.Transform, interpolation: str = "linear") -> Volume:
    """``mask`` (0/1) resampled onto ``fixed``'s grid through ``transform`` (fixed point -> mask point):
    linear interpolation then ``>= 0.5``, or nearest neighbour. Returns uint8 on ``fixed``'s grid."""
    if interpolation not in MASK_INTERPOLATIONS:
        raise InputError(did_you_mean(str(interpolation), MASK_INTERPOLATIONS, "mask interpolation"))
    image = sitk.Cast(mask.to_sitk(), sitk.sitkFloat32 if interpolation == "linear" else sitk.sitkUInt8)
    kind = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
    out = sitk.GetArrayFromImage(sitk.Resample(image, fixed.to_sitk(), transform, kind, 0.0))
    return fixed.with_array((out >= 0.5).astype(np.uint8) if interpolation == "linear" else out.astype(np.uint8))


def resample_image(moving: Volume, fixed: Volume, transform: sitk.Transform) -> Volume:
    """``moving`` resampled (linear) onto ``fixed``'s grid; outside it: ``moving``'s minimum (air).
    Integer images stay integer (rounded)."""
    out = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(moving.to_sitk(), sitk.sitkFloat32), fixed.to_sitk(),
                                               transform, sitk.sitkLinear, float(moving.array.min())))
    if moving.array.dtype.kind in "iu":
        info = np.iinfo(moving.array.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(moving.array.dtype)
    return fixed.with_array(out)


def propagate_mask(fixed: Volume, moving: Volume, mask: Volume, config: PropagateConfig | None = None, *,
                   warped: bool = False, progress: bool = True) -> PropagationResult:
    """Carry ``mask`` (0/1 on ``moving``'s grid, the planning CT's contour) onto ``fixed`` (the CBCT):
    :func:`register_images` then :func:`resample_mask`; ``warped`` also resamples ``moving``.

    Raises:
        InputError / GeometryError: the mask is not on the moving grid, not binary or empty; an image
            holds NaN; the registration failed.
    """
    config = config or PropagateConfig()
    for image, what in ((fixed, "fixed image"), (moving, "moving image")):
        problem = ("image has NaN or infinite voxels" if image.meta.get("has_nonfinite") == "1" else
                   f"image is too small to register (shape {image.shape}; 4 voxels a side at least)"
                   if min(image.shape) < 4 else None)
        if problem:
            raise InputError(problem, image.meta.get("source", what))
    _check_mask(mask, moving, mask.meta.get("source", "mask"), moving.meta.get("source", "moving image"))
    transform, quality = register_images(fixed, moving, mask, config, progress=progress)
    return PropagationResult(
        mask=resample_mask(mask, fixed, transform, config.mask_interpolation),
        transform=transform,
        quality=quality,
        warped=resample_image(moving, fixed, transform) if warped else None,
    )


def _case(path: Path) -> str:
    """Output name of an input: the file name without its image suffix, or the DICOM folder's name."""
    lower = path.name.lower()
    suffix = next((s for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), "")
    return path.name[: len(path.name) - len(suffix)] if suffix and not path.is_dir() else path.name


def propagate_files(fixed: str | Path, moving: str | Path, mask: str | Path, out_dir: str | Path,
                    config: PropagateConfig | None = None, *, save_warped: bool = False,
                    save_transform: bool = False, progress: bool = True) -> PropagationResult:
    """``cmedl data propagate``: read the CBCT (``fixed``), the planning CT (``moving``) and its mask
    (files or DICOM series folders), propagate the mask, write into ``out_dir`` (``<case>`` = the CBCT's
    name): ``<case>.nii.gz`` (uint8 mask on the CBCT grid), with ``save_warped``
    ``<case>_warped.nii.gz`` (the planning CT on the CBCT grid), with ``save_transform``
    ``<case>_transform.h5`` (ITK transform, CBCT point -> planning-CT point; readable by SimpleITK,
    3D Slicer). Outputs are checked before any work and written atomically.

    Returns:
        The result, with ``written`` = the files written (mask first).
    """
    config = config or PropagateConfig()
    paths = [Path(fixed), Path(moving), Path(mask)]
    for path in paths:
        if not path.exists():
            raise InputError("no such file or folder", path)
    out = Path(out_dir)
    case = _case(paths[0])
    planned = [out / f"{case}.nii.gz"]
    if save_warped:
        planned.append(out / f"{case}_warped.nii.gz")
    if save_transform:
        planned.append(out / f"{case}_transform.h5")
    check_output_folder(out, inputs=paths, planned=planned)
    images = [read_volume(p) for p in paths]
    result = propagate_mask(*images, config, warped=save_warped, progress=progress)
    written: list[Path] = []
    try:  # the mask last (it says the case is done); a failed write leaves none of the files
        if save_transform:
            with writing(planned[-1]), atomic_path(planned[-1]) as tmp:
                sitk.WriteTransform(result.transform, str(tmp))
            written.append(planned[-1])
        for volume, target in ((result.warped, planned[1] if save_warped else None), (result.mask, planned[0])):
            if target is not None:
                with writing(target):
                    written.append(write_volume(volume, target))  # type: ignore[arg-type]
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    result.written = planned
    return result


__all__ = ["propagate_files", "propagate_mask", "resample_image", "resample_mask"]
