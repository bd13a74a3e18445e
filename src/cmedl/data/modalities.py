"""Imaging modalities known to the toolkit (manifests, body masks and preprocessing share them)."""

from __future__ import annotations

#: ``ct`` (planning CT), ``cbct`` (cone-beam CT), ``mr`` (MRI).
MODALITIES = ("ct", "cbct", "mr")
