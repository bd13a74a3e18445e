"""``cmedl demo``: the built-in phantom study (:mod:`.run`), its tables (:mod:`.report`), mechanism
diagnostics (:mod:`.diagnostics`) and figure (:mod:`.figure`)."""

from cmedl.demo.figure import save_demo_figure
from cmedl.demo.run import COHORTS, DEMO_METHODS, DEMO_PRESETS, DemoResult, run_demo

__all__ = ["COHORTS", "DEMO_METHODS", "DEMO_PRESETS", "DemoResult", "run_demo", "save_demo_figure"]
