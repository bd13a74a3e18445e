"""What a phantom cohort holds: tumour sizes and kinds, the CT cue, the paired-oracle MRI.

:class:`PhantomOptions` is the one typed set of study settings shared by :func:`generate_case`,
:func:`generate_cohort`, ``cmedl data phantom`` and the demo. Defaults (the *cue cohort*):

- one dominant tumour per patient, diameter log-uniform in 20-50 mm (``nodule_share`` draws a share
  of them as 5-15 mm nodules instead; ``second_tumour`` adds a smaller one, 0.3-0.6x the first);
- a recorded kind per tumour: ``lung`` (enclosed by lung), ``mediastinal`` (abutting the mediastinum
  or hilum), ``chest-wall``; balanced thirds by default (``kind_mix``), assigned from the case index by
  a low-discrepancy sequence so that any run of consecutive cases holds the mix to within one case;
- the CT cue: tumour minus the soft tissue it abuts (mediastinum, or chest-wall muscle for
  ``chest-wall`` tumours) is ``+delta`` HU with ``delta`` in ``ct_cue_hu`` = 20-30 HU, the same sign in
  every patient (``cue_sign="positive"``). Against 18 HU image noise that is a per-voxel AUC at the
  interface of about 0.74-0.76 pooled over a cohort (measured; 15-25 HU gave 0.70-0.72, the lower edge
  of the 0.70-0.85 wanted, because a tumour often abuts several soft tissues while the cue is set
  against one) and a clear difference of 5x5 local means (SD ~7.5 HU): weak but learnable.
  :meth:`PhantomOptions.control` is the negative control, the calibrated random-sign 0-12 HU of the
  original phantom (``cue_sign="random"``, ``ct_cue_hu=(0, 12)``): no consistent cue exists.

The MRI contrast does not change (tumour 2.0-2.6x muscle: bright). ``paired_oracle`` also renders
each CT patient's own anatomy as T2w MRI on the CT grid: an upper-bound control arm only (CMEDL
itself trains on unpaired MRI of other patients).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from cmedl.errors import InputError, did_you_mean

#: Recorded tumour kinds, in the order of :attr:`PhantomOptions.kind_mix`.
TUMOUR_KINDS = ("lung", "mediastinal", "chest-wall")
CUE_SIGNS = ("positive", "random")
#: The original phantom's CT contrast: |tumour - mediastinum| in 0-12 HU with a random sign.
CONTROL_CUE_HU = (0.0, 12.0)
#: 1 / golden ratio: the additive recurrence ``frac(k * PHI_INV)`` spreads kinds evenly over indices.
_PHI_INV = (math.sqrt(5.0) - 1.0) / 2.0


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected two numbers LO,HI, got {value!r}") from None
    return lo, hi


@dataclass(frozen=True)
class PhantomOptions:
    """Study settings of a phantom cohort (see the module docstring)."""

    diameter_mm: tuple[float, float] = (20.0, 50.0)
    nodule_share: float = 0.0
    second_tumour: float = 0.0
    kind_mix: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    ct_cue_hu: tuple[float, float] = (20.0, 30.0)
    cue_sign: str = "positive"
    paired_oracle: bool = False
    #: share of the CT training cases made box-only (issue 16): every CT case gets ``boxes/<id>.json``
    #: and the chosen ones no label in the manifest (their label file is still written, for scoring)
    box_only_share: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = _pair(self.diameter_mm, "tumour diameter (mm)")
        if not (3.0 <= lo <= hi <= 150.0):
            raise InputError(f"tumour diameter (mm): need 3 <= LO <= HI <= 150, got {lo:g},{hi:g}")
        object.__setattr__(self, "diameter_mm", (lo, hi))
        for name in ("nodule_share", "second_tumour", "box_only_share"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name.replace('_', ' ')}: expected a share in [0, 1], got {v:g}")
            object.__setattr__(self, name, v)
        try:
            mix = tuple(float(v) for v in self.kind_mix)
        except (TypeError, ValueError):
            mix = ()
        if len(mix) != 3 or min(mix) < 0 or not math.isfinite(sum(mix)) or sum(mix) <= 0:
            raise InputError(
                f"tumour kind mix: expected 3 non-negative shares for {','.join(TUMOUR_KINDS)}, got {self.kind_mix!r}"
            )
        total = sum(mix)
        object.__setattr__(self, "kind_mix", tuple(v / total for v in mix))
        lo, hi = _pair(self.ct_cue_hu, "CT tumour cue (HU)")
        if not (0.0 <= lo <= hi <= 500.0):
            raise InputError(f"CT tumour cue (HU): need 0 <= LO <= HI <= 500, got {lo:g},{hi:g}")
        object.__setattr__(self, "ct_cue_hu", (lo, hi))
        if self.cue_sign not in CUE_SIGNS:
            raise InputError(did_you_mean(str(self.cue_sign), CUE_SIGNS, "cue sign"))
        object.__setattr__(self, "paired_oracle", bool(self.paired_oracle))

    @classmethod
    def control(cls, **changes: Any) -> PhantomOptions:
        """The negative control: today's random-sign 0-12 HU CT contrast (no consistent cue)."""
        return cls(**{"ct_cue_hu": CONTROL_CUE_HU, "cue_sign": "random", **changes})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> PhantomOptions:
        """From :meth:`to_dict` output (e.g. a manifest's ``phantom`` record); unknown keys are errors."""
        values = dict(values or {})
        names = [f.name for f in fields(cls)]
        for key in values:
            if key not in names:
                raise InputError(did_you_mean(str(key), names, "phantom option"))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``box_only_share`` only when set (records made before it stay the same)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k != "box_only_share" or v}

    @property
    def cohort_name(self) -> str:
        """``cue`` (consistent positive cue), ``control`` (random sign) for descriptions and tables."""
        return "cue" if self.cue_sign == "positive" else "control"

    def describe(self) -> str:
        lo, hi = self.ct_cue_hu
        cue = f"+{lo:g}..{hi:g} HU" if self.cue_sign == "positive" else f"random-sign {lo:g}..{hi:g} HU"
        mix = "/".join(f"{k} {v:.0%}" for k, v in zip(TUMOUR_KINDS, self.kind_mix))
        text = (f"{self.cohort_name} cohort: CT tumour cue {cue}; tumours {self.diameter_mm[0]:g}-"
                f"{self.diameter_mm[1]:g} mm ({mix})")
        if self.nodule_share:
            text += f", {self.nodule_share:.0%} 5-15 mm nodules"
        if self.second_tumour:
            text += f", second tumour in {self.second_tumour:.0%}"
        if self.box_only_share:
            text += f"; {self.box_only_share:.0%} of CT training cases box-only"
        return text + ("; paired-oracle MRI on the CT grid" if self.paired_oracle else "")

    def kind_for_index(self, index: int) -> str:
        """The dominant tumour's kind of case ``index``: the cumulative mix at ``frac((index + 0.5) / phi)``."""
        q = math.fmod((index + 0.5) * _PHI_INV, 1.0)
        acc = 0.0
        for kind, share in zip(TUMOUR_KINDS, self.kind_mix):
            acc += share
            if q < acc:
                return kind
        return next(k for k, s in zip(reversed(TUMOUR_KINDS), reversed(self.kind_mix)) if s > 0)


def parse_kind_mix(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"1,1,1"`` or three numbers -> the mix (normalised later by :class:`PhantomOptions`)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(f"tumour kind mix: expected three numbers for {','.join(TUMOUR_KINDS)}, got {text!r}")
    return values  # type: ignore[return-value]
