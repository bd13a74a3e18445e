"""Choose a student's mask clean-up on validation cases (never on test).

A segmenter's probability map becomes a mask through a threshold and optional clean-ups
(:func:`cmedl.inference.postprocess.postprocess_probabilities`): small components dropped, the lung
filter (components reaching the lungs), the largest component. Which of them helps depends on the model
and the cohort (false-positive components on vessels or the liver dome, several true tumours per scan),
so a study picks them on its validation split: :func:`choose_postprocess` scores every candidate of
:func:`candidate_settings` on the validation probability maps and keeps the best mean DSC; ties keep the
simpler candidate (the earlier one: fewer and milder clean-ups first). The chosen setting is then applied
unchanged to the test split (:meth:`PostprocessSetting.apply`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cmedl.errors import InputError
from cmedl.evaluation.metrics import dice
from cmedl.inference.postprocess import postprocess_probabilities
from cmedl.inference.segment import lung_region
from cmedl.io.volume import Volume

__all__ = ["PostprocessSetting", "candidate_settings", "choose_postprocess"]


@dataclass(frozen=True)
class PostprocessSetting:
    """One clean-up of a probability map (threshold 0.5 unless given; per-slice hole filling by default)."""

    min_component_ml: float = 0.0
    lung_filter: bool = False
    largest_component: bool = False
    fill_holes: bool = True
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.min_component_ml < 0:
            raise ValueError(f"min_component_ml must be >= 0, got {self.min_component_ml}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    @property
    def label(self) -> str:
        parts = [f">= {self.min_component_ml:g} ml"] if self.min_component_ml else []
        parts += ["lung filter"] * self.lung_filter + ["largest"] * self.largest_component
        return " + ".join(parts) or "none"

    def apply(self, probabilities: Volume, image: Volume | None = None,
              region: np.ndarray | None = None) -> np.ndarray:
        """The ``uint8`` mask of ``probabilities``; the lung filter needs ``image`` (the CT on the same
        grid) or its precomputed lung ``region``."""
        if self.lung_filter and region is None:
            if image is None:
                raise InputError("the lung filter needs the CT the probabilities were computed on")
            if image.shape != probabilities.shape:
                raise InputError(f"image {image.shape} and probability map {probabilities.shape} differ in shape",
                                 image.meta.get("source"))
            region = lung_region(image)  # None when no lung is found: the filter keeps everything (as segment)
        return postprocess_probabilities(probabilities.array, self.threshold, self.largest_component,
                                         self.fill_holes, self.min_component_ml, probabilities.spacing_zyx,
                                         keep_region=region if self.lung_filter else None)


def candidate_settings(min_component_ml: Sequence[float] = (0.0, 1.0, 4.0), lung_filter: bool = True,
                       largest_component: bool = True) -> list[PostprocessSetting]:
    """The grid of clean-ups, simplest first (size threshold outermost, then lung filter, then largest)."""
    sizes = sorted(float(v) for v in min_component_ml)
    return [PostprocessSetting(ml, lung, largest) for ml in sizes for lung in (False, True)[: 1 + lung_filter]
            for largest in (False, True)[: 1 + largest_component]]


def choose_postprocess(probabilities: Sequence[Volume], references: Sequence[np.ndarray],
                       images: Sequence[Volume] | None = None,
                       candidates: Sequence[PostprocessSetting] | None = None,
                       ) -> tuple[PostprocessSetting, dict[str, float]]:
    """The candidate with the best mean DSC over the (validation) cases, and every candidate's mean DSC
    by :attr:`PostprocessSetting.label` (ties: the earlier candidate)."""
    candidates = list(candidates or candidate_settings())
    if not probabilities or len(probabilities) != len(references):
        raise InputError(f"need one reference per probability map, got {len(probabilities)} maps and "
                         f"{len(references)} references")
    if any(c.lung_filter for c in candidates) and (images is None or len(images) != len(probabilities)):
        raise InputError("the lung filter candidates need the CT of every validation case")
    regions = None
    if any(c.lung_filter for c in candidates):  # once per case, not per candidate; no lung found: keep all
        regions = [r if (r := lung_region(img)) is not None else np.ones(img.shape, bool)
                   for img in images]  # type: ignore[union-attr]
    scores: dict[str, float] = {}
    best, best_score = candidates[0], -1.0
    for cand in candidates:
        s = float(np.mean([dice(cand.apply(p, region=regions[i] if regions else None) != 0, np.asarray(r) != 0)
                           for i, (p, r) in enumerate(zip(probabilities, references))]))
        scores[cand.label] = s
        if s > best_score + 1e-12:
            best, best_score = cand, s
    return best, scores
