"""Test-time recipes: which of a method's networks run at test time, in which order, on what input.

Every method declares one :class:`TestTimeRecipe`; ``cmedl segment`` builds a
:class:`TestTimeModel` from the checkpoint's networks and runs it on the (preprocessed) CT or
CBCT, slice by slice or by sliding window. The three kinds:

- ``student``: the segmentation network alone on the CT (``ct-only``, ``cmedl``: the papers'
  "only the student runs at test time");
- ``translate-then-segment``: a translator makes pseudo-MRI from the CT and a segmentation
  network trained on (pseudo-)MRI segments it (the pMRI baselines);
- ``fuse``: the segmentation network sees the CT and its pseudo-MRI as two input channels
  (the CT+pMRI baselines).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cmedl.errors import ConfigError, did_you_mean
from cmedl.nets.predict import network_dims, size_multiple

RECIPE_KINDS = ("student", "translate-then-segment", "fuse")


@dataclass(frozen=True)
class TestTimeRecipe:
    """What runs at test time: the segmentation network and, for two-stage recipes, the translator
    (checkpoint network names)."""

    __test__ = False  # not a pytest test class

    kind: str = "student"
    segmenter: str = "student_ct"
    translator: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RECIPE_KINDS:
            raise ConfigError(did_you_mean(self.kind, RECIPE_KINDS, "test-time recipe"))
        if (self.kind == "student") != (self.translator is None):
            raise ConfigError(f"test-time recipe '{self.kind}' {'takes no' if self.kind == 'student' else 'needs a'} "
                              "translator network")

    @property
    def networks(self) -> tuple[str, ...]:
        """Checkpoint networks the recipe runs, in order."""
        return (self.segmenter,) if self.translator is None else (self.translator, self.segmenter)

    def describe(self) -> str:
        """E.g. ``student_ct(CT)``, ``teacher_mr(g_ct2mr(CT))``, ``student_ct([CT, g_ct2mr(CT)])``."""
        if self.kind == "student":
            return f"{self.segmenter}(CT)"
        if self.kind == "translate-then-segment":
            return f"{self.segmenter}({self.translator}(CT))"
        return f"{self.segmenter}([CT, {self.translator}(CT)])"


#: the student alone (most methods)
STUDENT = TestTimeRecipe()


class TestTimeModel(nn.Module):
    """The networks of a recipe composed into one network ``[B, 1, ...] -> logits [B, 1, ...]``, so the
    slice-wise and sliding-window runners treat every method alike. ``dims`` and ``stride`` are the
    segmentation network's (translators work at any size that is a multiple of their own stride)."""

    __test__ = False

    def __init__(self, recipe: TestTimeRecipe, segmenter: nn.Module, translator: nn.Module | None = None) -> None:
        super().__init__()
        if (translator is None) != (recipe.translator is None):
            raise ConfigError(f"test-time recipe '{recipe.kind}' needs networks {recipe.networks}")
        self.recipe = recipe
        self.segmenter = segmenter
        self.translator = translator
        self.dims = network_dims(segmenter)
        # the networks' size multiples are powers of two: the largest is a multiple of the others
        self.stride = max(size_multiple(n) for n in (segmenter, translator) if n is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.translator is None:
            return self.segmenter(x)
        pseudo = self.translator(x)
        if self.recipe.kind == "translate-then-segment":
            return self.segmenter(pseudo)
        return self.segmenter(torch.cat([x, pseudo.to(x.dtype)], dim=1))


__all__ = ["RECIPE_KINDS", "STUDENT", "TestTimeModel", "TestTimeRecipe"]
