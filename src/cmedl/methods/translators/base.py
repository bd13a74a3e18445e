"""The interface of an unpaired CT <-> MRI translator used inside a method (CMEDL's ``translator``).

A translator owns its networks (stored in the method's ``networks`` under its names), its optimisers
(in the method's ``optimizers``) and its extra state. Within one training step the method calls, in
this order: :meth:`Translator.forward` (under the method's autocast, with the discriminators frozen:
pseudo-MRI of the CT batch and the translator's own loss terms), then its own segmentation terms on
the pseudo-MRI, then :meth:`Translator.generator_step` with the total generator loss (translator
terms + the segmentation and hint terms that reach the generator), then
:meth:`Translator.discriminator_step` on detached fakes.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class TranslatorForward:
    """One forward pass of a translator: ``pseudo_mr`` (G_CT->MR(ct)), its unweighted loss terms and
    their weights, and whatever its discriminator step needs (``extras``)."""

    pseudo_mr: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


class Translator(abc.ABC):
    """An unpaired translator; subclasses set the class attributes and implement the steps."""

    name: ClassVar[str] = "translator"
    description: ClassVar[str] = ""
    #: dataclass of its config section (named like the translator)
    config_section: ClassVar[type]
    #: translation direction -> generator network name
    generators: ClassVar[dict[str, str]] = {}

    @classmethod
    @abc.abstractmethod
    def build_networks(cls, section: Any, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        """The translator's networks by name, in a fixed order (``names`` limits them)."""

    @abc.abstractmethod
    def forward(self, ct: torch.Tensor, mr: torch.Tensor) -> TranslatorForward:
        """Pseudo-MRI of ``ct`` and the translator's loss terms (discriminators frozen)."""

    @abc.abstractmethod
    def generator_step(self, loss_g: torch.Tensor) -> None:
        """Step the generator(s) on ``loss_g`` (the graph is kept for the method's other steps)."""

    @abc.abstractmethod
    def discriminator_step(self, fwd: TranslatorForward, ct: torch.Tensor, mr: torch.Tensor) -> dict[str, float]:
        """Step the discriminator(s) on real images and detached fakes; return their losses."""

    @abc.abstractmethod
    def visuals(self, ct: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images for the per-epoch grid (eval mode is set by the caller)."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""
