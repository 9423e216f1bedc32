"""Confidence intervals against published values and closed forms."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from lesion.stats import mean_interval, wilson_interval, z_value


def test_wilson_matches_newcombe_table():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 → Wilson 0.2553–0.3662.
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-5)
    assert hi == pytest.approx(0.3662, abs=5e-5)


def test_wilson_zero_successes_closed_form():
    # With no successes the lower end is 0 and the upper end is z²/(n + z²).
    z = 1.959963984540054
    for n in (1, 20, 1000):
        lo, hi = wilson_interval(0, n)
        assert lo == 0.0
        assert hi == pytest.approx(z * z / (n + z * z), rel=1e-12)
        assert wilson_interval(n, n)[0] == pytest.approx(n / (n + z * z), rel=1e-12)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_z_value():
    assert z_value(0.95) == pytest.approx(1.959963984540054, rel=1e-12)
    assert z_value(0.99) == pytest.approx(2.5758293035489, rel=1e-12)


def test_mean_interval_matches_scipy_t_interval():
    values = [0.91, 0.88, 0.95, 0.9, 0.87, 0.93]
    mean = sum(values) / len(values)
    expected = sps.t.interval(0.95, len(values) - 1, loc=mean, scale=sps.sem(values))
    assert mean_interval(values) == pytest.approx(expected, rel=1e-12)
    assert mean_interval([0.5]) == (0.5, 0.5)
    lo, hi = mean_interval([1.0, 1.0, 1.0])
    assert lo == hi == 1.0 and not math.isnan(lo)


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 499, 10_000])
def test_student_t_quantile_matches_scipy(df):
    from lesion.stats import student_t_quantile

    for p in (0.5 + 1e-9, 0.6, 0.8, 0.95, 0.975, 0.995, 0.9999):
        assert student_t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df), rel=1e-9)


def test_median_rank_matches_binomial_quantile():
    # r is scipy's binom.ppf(α/2, n, 1/2): the exact integer search up to n = 1000, the beta bisection beyond.
    from lesion.stats import _median_rank

    for confidence in (0.9, 0.95, 0.99):
        for n in list(range(1, 300)) + [999, 1000, 1001, 1500, 4000, 100_000]:
            assert _median_rank(n, confidence) == int(sps.binom.ppf((1 - confidence) / 2, n, 0.5)), (n, confidence)


def test_median_interval_level_is_its_exact_binomial_coverage():
    # 1 − 2·P(B ≤ r − 1), B ~ Binomial(n, 1/2): 93.75% for the whole range of 5 values, ≥ 95% from 6 on.
    from lesion.stats import _median_rank, median_interval_level

    assert median_interval_level(5) == pytest.approx(0.9375, abs=1e-12)
    assert median_interval_level(1) == 0.0
    for n in list(range(2, 120)) + [999, 1001, 5000]:
        r = max(1, _median_rank(n, 0.95))
        assert median_interval_level(n) == pytest.approx(1 - 2 * sps.binom.cdf(r - 1, n, 0.5), abs=1e-9), n
        assert (median_interval_level(n) >= 0.95) == (n >= 6), n


def test_heavy_tailed_median_ranks_broken_configurations_highest():
    # 46 of 50 configurations gave inf: the median is inf, not the median of the 4 finite errors; the mean
    # and its interval stay over the finite ones, whose count is reported apart.
    from lesion.stats import heavy_tailed_summary

    s = heavy_tailed_summary([0.1, 0.2, 0.3, 0.4] + [math.inf] * 23 + [math.nan] * 23)
    assert s["non_finite"] == 46 and s["median"] == math.inf and s["median_ci"] == [math.inf, math.inf]
    assert s["mean"] == pytest.approx(0.25) and s["min"] == 0.1 and s["max"] == 0.4
    few = heavy_tailed_summary([3.0, 1.0, math.inf])
    assert few["median"] == 3.0 and few["median_ci"] == [1.0, math.inf] and few["median_ci_level"] == 0.75
    finite = heavy_tailed_summary([float(v) for v in range(11)])
    assert finite["median"] == 5.0 and finite["median_ci_level"] >= 0.95
    assert heavy_tailed_summary([math.inf])["mean"] is None


def test_moments_at_once_keep_the_mean_within_the_extremes():
    from lesion.stats import RunningMean

    for value in (0.1, 0.7, 1 / 3, 0.9070):
        same = RunningMean.of([value] * 37)  # numpy's mean of 37 equal values can round below them
        assert same.mean == same.min == same.max == value and same.sd == 0.0
    values = np.random.default_rng(0).normal(size=200).tolist()
    running = RunningMean()
    for v in values:
        running.add(v)
    at_once = RunningMean.of(values)
    assert at_once.mean == pytest.approx(running.mean, rel=1e-12) and at_once.sd == pytest.approx(running.sd)
    assert (at_once.min, at_once.max, at_once.n) == (running.min, running.max, running.n)


def test_a_clipped_interval_of_one_value_is_the_whole_range():
    from lesion.stats import clipped_interval

    assert clipped_interval([0.3]) == (0.0, 1.0)
    lo, hi = clipped_interval([0.3, 0.5])  # two values: Student-t with one degree of freedom, clipped
    half = float(sps.t.ppf(0.975, 1)) * float(np.std([0.3, 0.5], ddof=1)) / np.sqrt(2)
    assert (lo, hi) == (0.0, pytest.approx(min(1.0, 0.4 + half)))


@pytest.mark.parametrize("n", [2, 7, 500, 300_000])
def test_bootstrap_interval_draws_its_resamples_as_one_call_would(n):
    """The percentile bootstrap of the mean, drawn a block of resamples at a time, equals the textbook one-call
    computation (every resample's indices from one (resamples, n) draw of the seeded generator), the same
    draws, summed to the same rounding; it lies within the values' range."""
    from lesion.stats import bootstrap_mean_interval

    values = np.random.default_rng(1).standard_cauchy(n)
    resamples = 2000 if n < 1000 else 40
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, n, (resamples, n))].mean(axis=1)
    expected = (np.quantile(means, 0.025), np.quantile(means, 0.975))
    low, high = bootstrap_mean_interval(list(values), resamples=resamples)
    assert low == pytest.approx(expected[0], rel=1e-12, abs=1e-15)
    assert high == pytest.approx(expected[1], rel=1e-12, abs=1e-15)
    assert values.min() <= low <= high <= values.max()
