"""Summary statistics and paired tests for per-case metric tables (papers' Tables II-IV).

- :func:`summarize`: n, mean +- SD (sample SD, ddof=1), median, IQR over the finite values, with the
  number of ``inf`` (e.g. HD95 of a missed tumour) and NaN (undefined) values counted separately so a
  missed tumour never silently vanishes from a mean: ``"12.30 ± 4.50 (1 inf)"``.
- :func:`wilcoxon_paired`: two-sided Wilcoxon signed-rank test on paired values (scipy).
- :func:`holm_bonferroni`: Holm's step-down adjustment of a family of p-values.
- :func:`coefficient_of_variation`: ``CV = SD / mean`` (CT paper, Table IV).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from cmedl.errors import InputError


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one metric over cases (finite values only; inf/NaN counted)."""

    n: int  # all values, including inf and NaN
    n_finite: int
    n_inf: int
    n_nan: int
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def format(self, digits: int = 2, unit: str = "") -> str:
        """``"mean ± SD[ unit]"`` plus ``" (k inf)"`` / ``" (k n/a)"`` notes; ``"n/a"`` if no finite value."""
        notes = []
        if self.n_inf:
            notes.append(f"{self.n_inf} inf")
        if self.n_nan:
            notes.append(f"{self.n_nan} n/a")
        note = f" ({', '.join(notes)})" if notes else ""
        if self.n_finite == 0:
            return f"n/a{note}"
        sd = f"{self.sd:.{digits}f}" if math.isfinite(self.sd) else "n/a"
        u = f" {unit}" if unit else ""
        return f"{self.mean:.{digits}f} ± {sd}{u}{note}"


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Summary of ``values``: statistics over the finite ones, inf and NaN counted apart.

    SD is the sample standard deviation (ddof=1; NaN for fewer than two finite values);
    quartiles use numpy's default linear interpolation.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = v[np.isfinite(v)]
    n_nan = int(np.isnan(v).sum())
    n_inf = int(np.isinf(v).sum())
    if finite.size == 0:
        nan = math.nan
        return Summary(int(v.size), 0, n_inf, n_nan, nan, nan, nan, nan, nan, nan, nan)
    q1, med, q3 = np.percentile(finite, [25, 50, 75])
    sd = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return Summary(
        int(v.size), int(finite.size), n_inf, n_nan, float(finite.mean()), sd, float(med),
        float(q1), float(q3), float(finite.min()), float(finite.max()),
    )


def coefficient_of_variation(values: Sequence[float] | np.ndarray, ddof: int = 1) -> float:
    """``SD / mean`` of the finite values (sample SD by default); NaN if the mean is 0 or n < 2."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size <= ddof or v.mean() == 0:
        return math.nan
    return float(v.std(ddof=ddof) / v.mean())


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired two-sided Wilcoxon signed-rank test."""

    n: int  # pairs used (both values not NaN)
    statistic: float
    p_value: float
    median_difference: float  # median of a - b over the pairs (inf allowed)


def wilcoxon_paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """Paired two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` (same cases, same order).

    Pairs with a NaN are dropped. ``inf`` values are allowed (HD95 of a missed tumour): two equal
    infinities are a zero difference; a single infinity is replaced by a difference larger than
    every finite one with the same sign. The signed-rank test only uses the signs and ranks of the
    differences, so this is exact. Zero differences are dropped (``zero_method="wilcox"``); if
    all differences are zero, p = 1. scipy chooses the exact or normal-approximation method.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"paired test needs equal lengths, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan)
    with np.errstate(invalid="ignore"):
        d = x - y
    d[x == y] = 0.0  # also inf == inf
    med = float(np.median(d))
    inf = np.isinf(d)
    if inf.any():
        big = (np.abs(d[~inf]).max() if (~inf).any() else 0.0) * 2.0 + 1.0
        d[inf] = np.sign(d[inf]) * big
    if not np.any(d != 0):
        return PairedTest(n, 0.0, 1.0, med)
    res = sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return PairedTest(n, float(res.statistic), float(res.pvalue), med)


def holm_bonferroni(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sort ascending; the i-th smallest (0-based) is multiplied by ``m - i``; a running maximum keeps
    the adjusted values monotone; values are capped at 1. NaN p-values are left out of the family
    and stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise InputError(f"p-values must be in [0, 1], got {p[valid].tolist()}")
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def format_p(p: float) -> str:
    """Papers' style: ``"< 0.001"``, else three decimals; ``"n/a"`` for NaN."""
    if not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
