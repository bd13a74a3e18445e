"""Summary statistics and paired tests for per-case metric tables (papers' Tables II-IV).

- :func:`summarize`: n, mean +- SD (sample SD, ddof=1), median, IQR over the finite values, with the
  number of ``inf`` (e.g. HD95 of a missed tumour) and NaN (undefined) values counted separately so a
  missed tumour never silently vanishes from a mean: ``"12.30 ± 4.50 (1 inf)"``.
- :func:`wilcoxon_paired`: two-sided Wilcoxon signed-rank test on paired values (scipy).
- :func:`holm_bonferroni`: Holm's step-down adjustment of a family of p-values.
- :func:`coefficient_of_variation`: ``CV = SD / mean`` (CT paper, Table IV).
- :func:`bootstrap_mean_ci`: a bootstrap confidence interval of a mean (BCa, scipy);
  :func:`paired_difference`: mean paired difference with its CI, plus the Wilcoxon test.
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
    n_zero: int = 0  # pairs with a zero difference (ties), left out of the ranking


def wilcoxon_paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """Paired two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` (same cases, same order).

    Pairs with a NaN are dropped. ``inf`` values are allowed (HD95 of a missed tumour): two equal
    infinities are a zero difference; a single infinity is replaced by a difference larger than
    every finite one with the same sign. The signed-rank test only uses the signs and ranks of the
    differences, so this is exact. Ties: zero differences (e.g. two methods that both miss a
    tumour, DSC 0 and 0) are dropped before ranking (``zero_method="wilcox"``, Wilcoxon's original
    rule) and counted in ``n_zero``; equal non-zero differences get their average rank. If all
    differences are zero, p = 1. scipy uses the exact null distribution for small samples without
    ties or zeros, otherwise the normal approximation with the tie correction of the variance.
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
    n_zero = int(np.sum(d == 0))
    if n_zero == n:
        return PairedTest(n, 0.0, 1.0, med, n_zero)
    res = sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return PairedTest(n, float(res.statistic), float(res.pvalue), med, n_zero)


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


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with a bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def format(self, digits: int = 3) -> str:
        """``"+0.052 [-0.010, +0.114]"``"""
        if not math.isfinite(self.estimate):
            return "n/a"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.estimate:+.{digits}f} [CI n/a]"
        return (f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]")


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> ConfidenceInterval:
    """Mean of the finite ``values`` with a bias-corrected and accelerated (BCa) bootstrap interval
    (``scipy.stats.bootstrap``, ``n_resamples`` resamples from ``seed``: reproducible). Constant
    values give a zero-width interval; fewer than 2 values give NaN bounds."""
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(v.mean())
    if n < 2:
        return ConfidenceInterval(mean, math.nan, math.nan, n, confidence)
    if np.all(v == v[0]):  # BCa is undefined on a degenerate sample; the interval is the point
        return ConfidenceInterval(mean, mean, mean, n, confidence)
    res = sps.bootstrap(
        (v,), np.mean, confidence_level=confidence, n_resamples=int(n_resamples),
        method="BCa", rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa failed (e.g. n tiny): percentile
        res = sps.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=int(n_resamples),
                            method="percentile", rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return ConfidenceInterval(mean, low, high, n, confidence)


@dataclass(frozen=True)
class PairedComparison:
    """Method ``a`` vs method ``b`` on the same cases: mean difference with its bootstrap CI and the
    Wilcoxon signed-rank test."""

    difference: ConfidenceInterval  # mean of a - b over the finite pairs
    test: PairedTest


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Mean paired difference ``a - b`` (pairs where both are finite) with a BCa bootstrap CI over
    cases, and :func:`wilcoxon_paired` on the same pairs (see there for how ties are handled)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"paired comparison needs equal lengths, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    ci = bootstrap_mean_ci(x[keep] - y[keep], confidence, n_resamples, seed)
    return PairedComparison(ci, wilcoxon_paired(x, y))
