"""Confidence intervals (SPEC §4: every sampled figure carries its count and a 95% interval)."""

from __future__ import annotations

import math

from scipy.stats import norm
from scipy.stats import t as student_t


def z_value(confidence: float = 0.95) -> float:
    """Two-sided standard-normal quantile: 1.959964… for 95%."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate (SPEC §4: Wilson for accuracies and rates).

    centre = (p̂ + z²/2n) / (1 + z²/n), half-width = z·sqrt(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n).
    """
    if trials <= 0:
        raise ValueError("a rate needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    z = z_value(confidence)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return lo, hi


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of independent samples (e.g. accuracies over random crash sets).

    With one sample, or no spread, the interval collapses to the mean.
    """
    if not values:
        raise ValueError("a mean needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, mean
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = float(student_t.ppf(0.5 + confidence / 2.0, n - 1)) * math.sqrt(var / n)
    return mean - half, mean + half
