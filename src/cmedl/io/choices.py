"""Comma-separated choice lists from the command line or a config: ``"seg, NIfTI"`` or
``["rtstruct,seg"]`` -> the known names in their canonical order (``--format`` of ``cmedl segment`` and
``cmedl data export``)."""

from __future__ import annotations

from collections.abc import Sequence

from cmedl.errors import InputError, did_you_mean


def parse_choices(items: str | Sequence[str], choices: Sequence[str], what: str) -> tuple[str, ...]:
    """The names among ``choices`` that ``items`` gives, in ``choices`` order, each once; an item may itself
    be comma-separated, case and blanks are ignored.

    Raises:
        InputError: one line: an unknown name (``unknown <what> 'x'; did you mean ...``), or no name at all.
    """
    items = [items] if isinstance(items, str) else list(items)
    names = [n.strip().lower() for item in items for n in str(item).split(",") if n.strip()]
    for n in names:
        if n not in choices:
            raise InputError(did_you_mean(n, choices, what))
    if not names:
        raise InputError(f"no {what} given (choices: {', '.join(choices)})")
    return tuple(c for c in choices if c in names)


__all__ = ["parse_choices"]
