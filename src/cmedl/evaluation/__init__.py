"""Evaluation: segmentation metrics in mm, object-wise detection, pMRI translation KL, statistics.

- :mod:`~cmedl.evaluation.metrics`      DSC, surface DSC, HD95/HD/ASSD (DeepMind surfels), volumes
  (built on :mod:`~cmedl.evaluation.binary_masks`, :mod:`~cmedl.evaluation.surfels` and
  :mod:`~cmedl.evaluation.surface_metrics`)
- :mod:`~cmedl.evaluation.objects`      object-wise precision / recall / F1 / DSC-TP
- :mod:`~cmedl.evaluation.translation`  KL divergence of pMRI vs MRI intensity histograms
- :mod:`~cmedl.evaluation.stats`        mean ± SD, median/IQR, Wilcoxon, Holm-Bonferroni, CV
- :mod:`~cmedl.evaluation.evaluate`     folders/manifests of masks -> per-case rows / CSV
  (pairing in :mod:`~cmedl.evaluation.pairing`, CSV in :mod:`~cmedl.evaluation.results_csv`,
  summary table in :mod:`~cmedl.evaluation.summary`)
- :mod:`~cmedl.evaluation.compare`      several per-case CSVs -> papers-style table with p-values

All metric functions take numpy masks ``[z, y, x]`` and ``spacing`` in mm in array order
``(z, y, x)`` (``Volume.spacing_zyx``), prediction first.
"""

from cmedl.evaluation.compare import Comparison, compare_results
from cmedl.evaluation.evaluate import (
    evaluate_folders,
    format_summary,
    read_results_csv,
    summary_table,
    write_results_csv,
)
from cmedl.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    SurfaceDistances,
    assd,
    compute_all,
    dice,
    hausdorff,
    hausdorff95,
    relative_volume_difference,
    robust_hausdorff,
    surface_dice,
    surface_distances,
    volume_ml,
)
from cmedl.evaluation.objects import object_metrics
from cmedl.evaluation.stats import (
    coefficient_of_variation,
    holm_bonferroni,
    summarize,
    wilcoxon_paired,
)
from cmedl.evaluation.translation import histogram_kl

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "Comparison",
    "SurfaceDistances",
    "assd",
    "coefficient_of_variation",
    "compare_results",
    "compute_all",
    "dice",
    "evaluate_folders",
    "format_summary",
    "hausdorff",
    "hausdorff95",
    "histogram_kl",
    "holm_bonferroni",
    "object_metrics",
    "read_results_csv",
    "relative_volume_difference",
    "robust_hausdorff",
    "summarize",
    "summary_table",
    "surface_dice",
    "surface_distances",
    "volume_ml",
    "wilcoxon_paired",
    "write_results_csv",
]
