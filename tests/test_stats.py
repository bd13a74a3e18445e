"""Statistics: summaries with inf counts, Wilcoxon, Holm-Bonferroni (known answers), CV."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from cmedl.errors import InputError
from cmedl.evaluation import coefficient_of_variation, holm_bonferroni, summarize, wilcoxon_paired
from cmedl.evaluation.stats import format_p


def test_holm_bonferroni_known_example() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    adjusted = holm_bonferroni([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    # capped at 1, NaN kept out of the family
    out = holm_bonferroni([0.6, math.nan, 0.2])
    np.testing.assert_allclose(out[[0, 2]], [0.6, 0.4])
    assert math.isnan(out[1])
    assert holm_bonferroni([0.9, 0.8]).tolist() == [1.0, 1.0]
    with pytest.raises(InputError):
        holm_bonferroni([1.5])


def test_summary_counts_inf_and_nan_and_formats_them() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, math.inf, math.nan])
    assert (s.n, s.n_finite, s.n_inf, s.n_nan) == (6, 4, 1, 1)
    assert s.mean == pytest.approx(2.5)
    assert s.sd == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert (s.median, s.q1, s.q3) == (2.5, 1.75, 3.25)
    assert s.format(2, "mm") == "2.50 ± 1.29 mm (1 inf, 1 n/a)"
    assert summarize([math.inf]).format() == "n/a (1 inf)"
    assert summarize([0.5]).format() == "0.50 ± n/a"


def test_wilcoxon_matches_scipy_on_finite_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.9, 20)
    b = a - rng.uniform(-0.02, 0.08, 20)
    res = wilcoxon_paired(a, b)
    expected = sps.wilcoxon(a - b)
    assert res.n == 20
    assert res.p_value == pytest.approx(expected.pvalue)
    assert res.statistic == pytest.approx(expected.statistic)


def test_wilcoxon_inf_is_the_largest_difference_and_ties_give_p1() -> None:
    a = np.array([5.0, 6.0, 7.0, math.inf, 4.0, 3.0, 8.0, 9.0])
    b = np.array([4.0, 4.5, 6.0, 5.0, 3.5, 2.0, 7.5, 8.2])
    big = a.copy()
    big[3] = 1e6  # any value larger than all finite differences gives the same ranks
    assert wilcoxon_paired(a, b).p_value == pytest.approx(wilcoxon_paired(big, b).p_value)
    both_inf = wilcoxon_paired([math.inf, 1.0, 2.0], [math.inf, 1.0, 2.0])
    assert both_inf.p_value == 1.0 and both_inf.n == 3
    nan = wilcoxon_paired([math.nan, 1.0, 2.0, 3.0], [0.0, 0.5, 1.0, 1.5])
    assert nan.n == 3
    with pytest.raises(InputError):
        wilcoxon_paired([1.0], [1.0, 2.0])


def test_coefficient_of_variation() -> None:
    v = [2.0, 4.0, 6.0]
    assert coefficient_of_variation(v) == pytest.approx(2.0 / 4.0)
    assert coefficient_of_variation(v, ddof=0) == pytest.approx(np.std(v) / 4.0)
    assert math.isnan(coefficient_of_variation([1.0]))


def test_format_p() -> None:
    assert format_p(0.0004) == "< 0.001"
    assert format_p(0.0456) == "0.046"
    assert format_p(math.nan) == "n/a"


# ------------------------------------------------------------------ bootstrap CIs, ties, diagnostics
def test_bootstrap_mean_ci_known_answers():
    from cmedl.evaluation.stats import bootstrap_mean_ci

    rng = np.random.default_rng(3)
    v = rng.normal(0.5, 0.1, 400)
    ci = bootstrap_mean_ci(v, n_resamples=2000, seed=1)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)  # large-sample normal interval
    assert ci.estimate == pytest.approx(v.mean())
    assert ci.low == pytest.approx(v.mean() - half, abs=0.3 * half)
    assert ci.high == pytest.approx(v.mean() + half, abs=0.3 * half)
    assert bootstrap_mean_ci(v, n_resamples=2000, seed=1) == ci  # reproducible from the seed
    const = bootstrap_mean_ci([0.2, 0.2, 0.2, float("nan")])
    assert (const.estimate, const.low, const.high, const.n) == (pytest.approx(0.2),) * 3 + (3,)
    empty = bootstrap_mean_ci([float("nan")])
    assert empty.n == 0 and np.isnan(empty.estimate) and empty.format() == "n/a"
    assert ci.format(2).startswith("+0.50 [+0.4")
    with pytest.raises(InputError, match="confidence"):
        bootstrap_mean_ci(v, confidence=1.5)


def test_paired_difference_and_tie_handling():
    from cmedl.evaluation.stats import paired_difference, wilcoxon_paired

    a = np.array([0.0, 0.0, 0.8, 0.7, 0.9, 0.6, 0.75, 0.85])
    b = np.array([0.0, 0.0, 0.7, 0.6, 0.8, 0.5, 0.65, 0.75])  # two ties at 0 (both missed), +0.1 else
    res = paired_difference(a, b, n_resamples=2000)
    assert res.difference.estimate == pytest.approx(0.075)  # mean over all 8 pairs, ties included
    assert res.difference.low <= 0.075 <= res.difference.high and res.difference.high <= 0.1 + 1e-9
    assert res.test.n == 8 and res.test.n_zero == 2
    # the zero differences are dropped from the ranking: the test is the one on the 6 others
    six = wilcoxon_paired(a[2:], b[2:])
    assert res.test.p_value == pytest.approx(six.p_value) and res.test.statistic == six.statistic
    assert wilcoxon_paired([0.3, 0.3], [0.3, 0.3]).p_value == 1.0
    with pytest.raises(InputError, match="equal lengths"):
        paired_difference([1, 2], [1])


def test_separation_auc_known_answers():
    from cmedl.evaluation.diagnostics import separation_auc

    img = np.array([1.0, 2.0, 3.0, 4.0, 2.0, 2.0])
    pos = np.array([0, 0, 1, 1, 0, 0], bool)
    neg = np.array([1, 1, 0, 0, 0, 0], bool)
    assert separation_auc(img, pos, neg) == 1.0
    assert separation_auc(img, neg, pos) == 0.0
    tie = np.array([0, 1, 0, 0, 1, 0], bool)  # 2 vs 2: all ties
    assert separation_auc(img, tie, np.array([0, 0, 0, 0, 0, 1], bool)) == 0.5
    # P(X > Y) + P(tie)/2 against a brute-force count
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 300).astype(float)
    p = rng.random(300) < 0.4
    n = ~p
    brute = np.mean([(u > w) + 0.5 * (u == w) for u in x[p] for w in x[n]])
    assert separation_auc(x, p, n) == pytest.approx(brute)
    assert np.isnan(separation_auc(img, np.zeros(6, bool), neg))
