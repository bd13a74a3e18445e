"""Unpaired CT <-> MRI translators a method can train inside it (``cmedl.translator``), by name.

Each has a config section of its name (found by the method registry through :data:`TRANSLATORS`):
``cyclegan`` (CycleGAN + contextual loss, the papers' default), ``drit`` (the CT paper's VAE
translator) and ``unit`` (UNIT). All expose the generators ``g_ct2mr`` / ``g_mr2ct`` as checkpoint
networks that run alone (``cmedl translate``, translate-then-segment recipes).
"""

from cmedl.errors import ConfigError, did_you_mean
from cmedl.methods.translators.base import Translator, TranslatorForward
from cmedl.methods.translators.cyclegan import CycleGANConfig, CycleGANTranslator
from cmedl.methods.translators.drit import DRITConfig, DRITTranslator
from cmedl.methods.translators.unit import UNITConfig, UNITTranslator

#: registered translators by name (each has a config section of that name)
TRANSLATORS: dict[str, type[Translator]] = {
    t.name: t for t in (CycleGANTranslator, DRITTranslator, UNITTranslator)
}


def get_translator(name: str) -> type[Translator]:
    """The translator class registered as ``name``; did-you-mean ConfigError otherwise."""
    if name not in TRANSLATORS:
        raise ConfigError(did_you_mean(str(name), TRANSLATORS, "translator"))
    return TRANSLATORS[name]


__all__ = [
    "TRANSLATORS", "CycleGANConfig", "CycleGANTranslator", "DRITConfig", "DRITTranslator", "Translator",
    "TranslatorForward", "UNITConfig", "UNITTranslator", "get_translator",
]
