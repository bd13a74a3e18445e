"""Pseudo-MRI baselines (CT paper Sec. II-D and Table III; CBCT paper Tables 1-2): a translator
trained alone, then a segmentation network trained on what it makes of the labelled CT.

:class:`TwoPhaseMethod` is the shared machinery, :class:`PMRICycle` (``pmri-cycle``) and
:class:`PMRIUnit` (``pmri-unit``) segment the pMRI alone (recipe ``translate-then-segment``:
``seg_pmri(g_ct2mr(CT))``); :mod:`cmedl.methods.ct_pmri` adds the CT + pMRI fusions.

Training runs in two phases on unpaired batches (CT with labels, MRI of other patients):

1. the first ``<method>.translator_epochs`` epochs train the translator alone (``<method>.translator``:
   ``cyclegan``, ``unit``, ``drit``; its own section holds its settings), exactly as CMEDL trains it
   (the :class:`~cmedl.methods.translators.base.Translator` interface: forward with the
   discriminators frozen, G step on the translator's terms, D step) but with no segmentation or hint
   term reaching the generator; the segmentation network is not touched;
2. the remaining epochs train the segmentation network alone (soft Dice against the CT labels) on the
   pMRI of the frozen generator (eval mode, no gradient); the translator's networks are not touched.

The switch is at global step ``translator_epochs * iterations_per_epoch``, an epoch boundary, so every
epoch's logged means belong to one phase (``phase`` 1 or 2 is logged too). The switch step is stored in
the method state, and with the restored global step an interrupted run resumes exactly. The
translator's optimisers, pools and schedule are untouched in phase 2 (and the segmenter's in phase 1).

Validation (every epoch) runs the test-time recipe: :attr:`TwoPhaseMethod.student` is the composed
:class:`~cmedl.methods.recipe.TestTimeModel`, so ``val_loss`` and ``best.pt`` measure what ``cmedl
segment`` runs. In phase 1 the segmenter is untrained and the validation scores mean little, so
``translator_epochs`` must be below ``training.patience`` (else early stopping would end the run before
the segmenter trains) and below ``training.max_epochs``.

The papers' Table I lists no contextual loss for the pMRI-Cycle / pMRI-UNIT translators (and one for
CT+pMRI): the CycleGAN's ``cyclegan.use_contextual`` is shared with CMEDL and defaults to true, so a
run reproducing the paper's pMRI-Cycle sets ``cyclegan.use_contextual=false``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cmedl.config import TrainConfig
from cmedl.config.schema import check_positive
from cmedl.data.batches import BatchKind
from cmedl.errors import ConfigError, did_you_mean
from cmedl.methods.base import Method, build_segmenter
from cmedl.methods.recipe import TestTimeModel, TestTimeRecipe
from cmedl.methods.translators import TRANSLATORS, get_translator

#: ``method_state`` key of the global step where phase 2 begins
SWITCH_STEP = "switch_step"


@dataclass
class PMRIConfig:
    """Settings of a two-phase pMRI method (the translator's own settings: its section)."""

    #: the unpaired translator trained in phase 1: ``cyclegan``, ``unit``, ``drit`` (checked when the
    #: method is configured, so that a translator registered later can be named)
    translator: str = "cyclegan"
    #: epochs of phase 1 (translator alone); the segmenter trains in the remaining epochs
    translator_epochs: int = 5

    def __post_init__(self) -> None:
        check_positive("translator_epochs", self.translator_epochs)


@dataclass
class PMRIUnitConfig(PMRIConfig):
    """``pmri-unit``: the same settings with the UNIT translator."""

    translator: str = "unit"


def translator_generators(name: str) -> dict[str, str]:
    """Direction -> generator network of the registered translator ``name`` (CycleGAN's names
    ``g_ct2mr``/``g_mr2ct`` when it is not registered (yet): the method then refuses to configure)."""
    cls = TRANSLATORS.get(name)
    return dict(cls.generators) if cls is not None else {"ct2mr": "g_ct2mr", "mr2ct": "g_mr2ct"}


@contextlib.contextmanager
def eval_mode(*nets: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (previous modes restored after)."""
    modes = [n.training for n in nets]
    for n in nets:
        n.eval()
    try:
        yield
    finally:
        for n, m in zip(nets, modes, strict=True):
            n.train(m)


class TwoPhaseMethod(Method):
    """Translator alone (phase 1), then a segmenter on its output (phase 2); see the module docstring.

    Subclasses set ``name``, ``description``, ``config_section``, ``recipe`` (its ``segmenter`` is the
    checkpoint name of the segmentation network, its ``translator`` the CT->MR generator) and
    ``translators``, and may override :meth:`build_segmentation_network` and
    :meth:`segmenter_input`."""

    batch_kind: ClassVar[BatchKind] = BatchKind.UNPAIRED_SLICES
    config_section: ClassVar[type] = PMRIConfig

    # ------------------------------------------------------------------ declarations
    @classmethod
    def config_sections(cls, config: TrainConfig) -> tuple[str, ...]:
        return (cls.name, cls.section_of(config).translator)

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        super().check_config(config)
        own, key = cls.section_of(config), cls.name
        if own.translator not in TRANSLATORS:
            raise ConfigError(f"{key}.translator: {did_you_mean(own.translator, TRANSLATORS, 'translator')}")
        gens = translator_generators(own.translator)
        if gens.get("ct2mr") != cls.recipe.translator:
            users = [c.name for c in _variants() if c.recipe.translator == gens.get("ct2mr") and c.recipe.kind
                     == cls.recipe.kind]
            raise ConfigError(f"{key}.translator: '{own.translator}' stores its CT->MR generator as "
                              f"'{gens.get('ct2mr')}', but method '{key}' runs '{cls.recipe.translator}' at test "
                              f"time" + (f" (use method {', '.join(users)})" if users else ""))
        tc = config.training
        if own.translator_epochs >= tc.max_epochs:
            raise ConfigError(f"{key}.translator_epochs ({own.translator_epochs}) must be below training.max_epochs "
                              f"({tc.max_epochs}): the segmenter trains in the epochs after the translator's")
        if own.translator_epochs >= tc.patience:
            raise ConfigError(f"{key}.translator_epochs ({own.translator_epochs}) must be below training.patience "
                              f"({tc.patience}): early stopping would end the run before the segmenter trains")

    @classmethod
    def build_segmentation_network(cls, config: TrainConfig) -> nn.Module:
        """The phase-2 network (stored as ``recipe.segmenter``): the configured segmenter on pMRI."""
        return build_segmenter(config)

    @classmethod
    def build_networks(cls, config: TrainConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        own = cls.section_of(config)
        nets: dict[str, nn.Module] = {}
        if names is None or cls.recipe.segmenter in names:
            nets[cls.recipe.segmenter] = cls.build_segmentation_network(config)
        translator = get_translator(own.translator)
        nets.update(translator.build_networks(config.section(own.translator), names))
        return nets

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.own = self.section_of(config)
        self.translator = get_translator(self.own.translator)(self, config.section(self.own.translator))
        o = config.optim
        self.optimizers["s"] = self.adam(self.segmenter.parameters(), o.lr_segmentation, o.betas_segmentation)
        #: global step at which phase 2 (segmenter) begins: an epoch boundary
        self.switch_step = self.own.translator_epochs * config.iterations_per_epoch

    # ------------------------------------------------------------------ networks
    @property
    def segmenter(self) -> nn.Module:
        return self.networks[self.recipe.segmenter]

    @property
    def generator(self) -> nn.Module:
        """The CT -> pMRI generator."""
        return self.networks[self.recipe.translator]  # type: ignore[index]

    @property
    def student(self) -> nn.Module:
        """The test-time composition (validated every epoch: what ``cmedl segment`` runs)."""
        return TestTimeModel(self.recipe, self.segmenter, self.generator)

    @property
    def phase(self) -> int:
        """1 while the translator trains, 2 once the segmenter does (from the next step on)."""
        return 1 if self.global_step < self.switch_step else 2

    def segmenter_input(self, ct: torch.Tensor, pmri: torch.Tensor) -> torch.Tensor:
        """What the segmenter sees: the pMRI (``translate-then-segment``) or CT and pMRI (``fuse``)."""
        if self.recipe.kind == "fuse":
            return torch.cat([ct, pmri.to(ct.dtype)], dim=1)
        return pmri

    def pseudo_mri(self, ct: torch.Tensor) -> torch.Tensor:
        """pMRI of the frozen generator (eval mode, no gradient), float32 in the batch layout."""
        with torch.no_grad(), eval_mode(self.generator), self.autocast():
            return self.generator(ct).float().contiguous(memory_format=self.memory_format)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        logs = self.translator_step(batch) if self.phase == 1 else self.segmenter_step(batch)
        logs["phase"] = float(self.phase)
        self.global_step += 1
        return logs

    def translator_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Phase 1: the translator's G and D steps on its own terms (as inside CMEDL, without the
        segmentation and hint terms)."""
        ct, mr = self.to_device(batch["ct"]), self.to_device(batch["mr"])
        with self.autocast():
            fwd = self.translator.forward(ct, mr)
        zero = torch.zeros((), device=self.device)
        loss_g = sum((fwd.weights[k] * v for k, v in fwd.terms.items()), zero)
        self.translator.generator_step(loss_g)
        logs = self.translator.discriminator_step(fwd, ct, mr)
        for k, v in itertools.chain(fwd.terms.items(), [("loss_g", loss_g)]):
            logs[k] = float(v.detach())
        return logs

    def segmenter_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Phase 2: soft Dice of the segmenter on the frozen generator's pMRI against the CT labels."""
        ct, label = self.to_device(batch["ct"]), self.to_device(batch["ct_label"])
        x = self.segmenter_input(ct, self.pseudo_mri(ct))
        opt = self.optimizers["s"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.segmenter(x)
        loss = self.seg_loss(logits, label)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        return {"seg_pmri": value, "loss_s": value}

    # ------------------------------------------------------------------ visuals / state
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """CT, pMRI, expert and predicted masks (eval mode)."""
        image = self.to_device(batch["image"])
        with self.evaluating(), self.autocast():
            pmri = self.generator(image).float()
            pred = (self.segmenter(self.segmenter_input(image, pmri)).float() > 0).float()
        return {"CT": image.cpu(), "pMRI": pmri.cpu(), "expert": batch["label"].float().cpu(), "predicted": pred.cpu()}

    def extra_state(self) -> dict[str, Any]:
        return {**self.translator.extra_state(), SWITCH_STEP: int(self.switch_step)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.switch_step = int(state.pop(SWITCH_STEP, self.switch_step))
        self.translator.load_extra_state(state)


class PMRICycle(TwoPhaseMethod):
    """``pmri-cycle``: CycleGAN alone, then a segmenter on its pMRI; CT -> pMRI -> segmenter at test time."""

    name: ClassVar[str] = "pmri-cycle"
    description: ClassVar[str] = ("pMRI baseline: a translator (default CycleGAN) trained alone, then a segmentation "
                                  "network on its pMRI of the labelled CT; CT -> pMRI -> segmenter at test time")
    config_section: ClassVar[type] = PMRIConfig
    translators: ClassVar[dict[str, str]] = translator_generators("cyclegan")
    recipe: ClassVar[TestTimeRecipe] = TestTimeRecipe("translate-then-segment", "seg_pmri", translators["ct2mr"])


class PMRIUnit(PMRICycle):
    """``pmri-unit``: :class:`PMRICycle` with the UNIT translator (``pmri-unit.translator: unit``)."""

    name: ClassVar[str] = "pmri-unit"
    description: ClassVar[str] = ("pMRI baseline with the UNIT translator: UNIT trained alone, then a segmentation "
                                  "network on its pMRI; CT -> pMRI -> segmenter at test time")
    config_section: ClassVar[type] = PMRIUnitConfig
    translators: ClassVar[dict[str, str]] = translator_generators("unit")
    recipe: ClassVar[TestTimeRecipe] = TestTimeRecipe("translate-then-segment", "seg_pmri", translators["ct2mr"])


def _variants() -> list[type[TwoPhaseMethod]]:
    """Every two-phase method class defined so far (for configuration hints)."""
    out, todo = [], list(TwoPhaseMethod.__subclasses__())
    while todo:
        cls = todo.pop(0)
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


__all__ = ["PMRICycle", "PMRIConfig", "PMRIUnit", "PMRIUnitConfig", "TwoPhaseMethod", "translator_generators"]
