"""Unpaired CT <-> MRI translators a method can train inside it (``cmedl.translator``), by name."""

from cmedl.errors import ConfigError, did_you_mean
from cmedl.methods.translators.base import Translator, TranslatorForward
from cmedl.methods.translators.cyclegan import CycleGANConfig, CycleGANTranslator

#: registered translators by name (each has a config section of that name)
TRANSLATORS: dict[str, type[Translator]] = {CycleGANTranslator.name: CycleGANTranslator}


def get_translator(name: str) -> type[Translator]:
    """The translator class registered as ``name``; did-you-mean ConfigError otherwise."""
    if name not in TRANSLATORS:
        raise ConfigError(did_you_mean(str(name), TRANSLATORS, "translator"))
    return TRANSLATORS[name]


__all__ = ["TRANSLATORS", "CycleGANConfig", "CycleGANTranslator", "Translator", "TranslatorForward", "get_translator"]
