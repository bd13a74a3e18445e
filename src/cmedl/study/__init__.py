"""Studies: grids of training runs on a user's cohort and the papers' tables (``cmedl study``).

- :mod:`.spec`: the study file (families of runs x seeds), shipped presets in ``cmedl/studies/``;
- :mod:`.runner`: train, segment and score every run, resumable, one run per device;
- :mod:`.tables`: per-family tables (mean ± SD, paired differences with CIs, Wilcoxon + Holm, per
  tumour kind), every case in one CSV, pMRI quality (histogram KL).
"""

from cmedl.study.runner import RunOutcome, run_study
from cmedl.study.spec import RunSpec, StudySpec, load_study, parse_study, study_presets
from cmedl.study.tables import write_tables

__all__ = ["RunOutcome", "RunSpec", "StudySpec", "load_study", "parse_study", "run_study", "study_presets",
           "write_tables"]
