"""Is a volume's intensity scale plausible for the modality a model expects (ct, cbct or mr)?

A network trained on CT in Hounsfield units gives confident nonsense on an MRI or on a CT stored
without its rescale intercept, because :func:`cmedl.data.preprocess.prepare_volume` maps any numbers
into [-1, 1]. :func:`modality_mismatch` looks at the intensity histogram (on at most
:data:`MAX_SAMPLES` evenly strided voxels, NaN/Inf ignored) and returns a one-line reason when the
volume does not look like the expected modality, else None. The rules are deliberately loose: they
refuse only what no scan of that modality looks like.

- **ct** (HU): air and lung near -1000 (at least 5 % of voxels below -500 HU: outside the body, in the
  lungs, or the scanner's padding outside its field of view), soft tissue around 0-100 HU (at least
  5 % within -200..300 HU) and no large share above 3000 HU (at most 2 %: metal implants are small).
  A volume without negative values is no CT in HU: with air near 0 and soft tissue near 1000 it is
  reported as a CT stored without the -1024 HU shift (e.g. uint16 with the rescale intercept
  dropped) or an MRI, otherwise as MRI-like arbitrary units.
- **cbct**: CBCT numbers are only roughly HU (scatter, cupping) and are standardised per image, so
  only the range is checked: at least 90 % of voxels within -1200..3000 (a padding value that fills
  the corners outside the cylindrical field of view, at the volume's minimum, is left out).
- **mr**: arbitrary units, usually non-negative; refused only with an air peak of a CT in HU (at
  least 5 % of voxels below -500).

Not detectable, so allowed: a CT stored without the shift given to an MRI model (both are
non-negative arbitrary-looking numbers), an MRI given to a CBCT model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmedl.data.modalities import MODALITIES
from cmedl.errors import InputError, did_you_mean
from cmedl.io.image import Volume

__all__ = ["MAX_SAMPLES", "MODALITY_NAMES", "check_modality", "modality_mismatch"]

#: Voxels looked at (an evenly strided subsample of larger volumes).
MAX_SAMPLES = 2_000_000
#: How each modality is named in messages.
MODALITY_NAMES = {"ct": "a CT in HU", "cbct": "a CBCT", "mr": "an MRI"}


def _sample(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    step = max(1, -(-flat.size // MAX_SAMPLES))
    values = flat[::step].astype(np.float32, copy=False)
    return values[np.isfinite(values)]


def _share(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / max(mask.size, 1)


def _ct_reason(v: np.ndarray) -> str | None:
    if _share(v < 0) < 0.001:
        air_at_zero = _share(v < 100) >= 0.05
        tissue_at_1000 = _share((v >= 900) & (v <= 1200)) >= 0.05
        if air_at_zero and tissue_at_1000:
            return ("no negative values, air near 0 and soft tissue near 1000: a CT stored without the "
                    "-1024 HU shift (rescale intercept; convert it to HU) or an MRI")
        return (f"no negative values (range {v.min():.4g}..{v.max():.4g}): arbitrary units like an MRI, "
                "while a CT in HU has air near -1000")
    air = _share(v < -500)
    if air < 0.05:
        return (f"only {air:.1%} of voxels below -500 (range {v.min():.4g}..{v.max():.4g}), while a chest CT "
                "in HU has air and lung near -1000")
    tissue = _share((v >= -200) & (v <= 300))
    if tissue < 0.05:
        return f"only {tissue:.1%} of voxels within -200..300, while soft tissue in HU is around 0-100"
    high = _share(v > 3000)
    if high > 0.02:
        return f"{high:.1%} of voxels above 3000, far more than bone or metal in HU"
    return None


def _cbct_reason(v: np.ndarray) -> str | None:
    low = v.min()
    if _share(v == low) > 0.05:  # padding outside the field of view
        v = v[v != low]
        if v.size == 0:
            return None
    inside = _share((v >= -1200) & (v <= 3000))
    if inside < 0.9:
        return (f"only {inside:.0%} of voxels within -1200..3000 (range {v.min():.4g}..{v.max():.4g}), "
                "the range of CBCT numbers")
    return None


def _mr_reason(v: np.ndarray) -> str | None:
    air = _share(v < -500)
    if air >= 0.05:
        return (f"{air:.0%} of voxels below -500 (air of a CT in HU near -1000), while MRI intensities are "
                "arbitrary non-negative units")
    return None


_RULES = {"ct": _ct_reason, "cbct": _cbct_reason, "mr": _mr_reason}


def modality_mismatch(array: np.ndarray, modality: str) -> str | None:
    """A one-line reason why ``array``'s intensities do not look like ``modality``, or None if plausible.

    See the module docstring for the rules. An empty or all-NaN array is not judged (None).
    """
    if modality not in MODALITIES:
        raise InputError(did_you_mean(str(modality), MODALITIES, "modality"))
    values = _sample(array)
    if values.size == 0:
        return None
    return _RULES[modality](values)


def check_modality(volume: Volume, modality: str, path: str | Path | None = None, hint: str = "") -> None:
    """Raise :class:`InputError` naming ``path`` (default: the volume's source file) when the volume does
    not look like ``modality``; ``hint`` is appended (e.g. how to proceed anyway)."""
    reason = modality_mismatch(volume.array, modality)
    if reason is not None:
        source = path if path is not None else volume.meta.get("source")
        raise InputError(f"does not look like {MODALITY_NAMES[modality]}: {reason}{hint}", source)
