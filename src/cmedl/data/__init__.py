"""Data sets: manifests, synthetic phantom cohorts, preprocessing and 2D slice datasets.

Import the sub-modules directly (``cmedl.data.manifest``, ``cmedl.data.phantom``,
``cmedl.data.preprocess``, ``cmedl.data.datasets``); this package imports nothing heavy.
"""
