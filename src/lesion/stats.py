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
    running = RunningMean()
    for value in values:
        running.add(float(value))
    return running.interval(confidence)


def sample_size_for_mean(sd: float, width: float, confidence: float = 0.95) -> int:
    """Samples needed for a normal-approximation interval of total width `width` on a mean with spread `sd`:
    n = ⌈(2·z·sd / width)²⌉ (at least 2)."""
    if not width > 0:
        raise ValueError(f"an interval width must be positive, got {width}")
    return max(2, math.ceil((2.0 * z_value(confidence) * sd / width) ** 2))


def sample_size_for_rate(width: float, rate: float = 0.5, confidence: float = 0.95) -> int:
    """Trials needed for a rate's interval of total width `width`: n = ⌈z²·p(1−p) / (width/2)²⌉, with the
    worst case p = 0.5 unless a rate is known."""
    if not width > 0:
        raise ValueError(f"an interval width must be positive, got {width}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a rate lies in [0, 1], got {rate}")
    z = z_value(confidence)
    return max(1, math.ceil(z * z * rate * (1.0 - rate) / (width / 2.0) ** 2))


class RunningMean:
    """Mean, standard deviation, extremes and Student-t interval of a stream of values (Welford's update),
    for campaigns that stop once the interval is narrow enough (SPEC §4)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Take one more value (non-finite values make the mean non-finite, as they should)."""
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (value - self.mean)
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    @property
    def sd(self) -> float:
        """Sample standard deviation (0 for fewer than 2 values)."""
        return math.sqrt(self._m2 / (self.n - 1)) if self.n > 1 else 0.0

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Student-t interval for the mean."""
        if self.n < 2 or not math.isfinite(self.mean):
            return self.mean, self.mean
        half = float(student_t.ppf(0.5 + confidence / 2.0, self.n - 1)) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def width(self, confidence: float = 0.95) -> float:
        """Total width of the interval (infinite with fewer than 2 values)."""
        if self.n < 2:
            return math.inf
        lo, hi = self.interval(confidence)
        return hi - lo

    def to_dict(self) -> dict[str, float | int | list[float]]:
        """JSON-able summary."""
        return {"mean": self.mean, "ci": list(self.interval()), "sd": self.sd, "min": self.min, "max": self.max,
                "n": self.n}


def clipped_interval(values: list[float], low: float = 0.0, high: float = 1.0,
                     confidence: float = 0.95) -> tuple[float, float]:
    """`mean_interval` clipped to [low, high]: for means of bounded quantities (accuracies, rates) over few
    configurations, where a Student-t interval can otherwise leave the range (issue 14)."""
    lo, hi = mean_interval(values, confidence)
    return max(low, lo), min(high, hi)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median from order statistics: [X_(r), X_(n−r+1)] with r the
    largest rank such that 2·P(B ≤ r−1) ≤ 1 − confidence, B ~ Binomial(n, 1/2) (the whole range when no rank
    qualifies, n < 6 at 95%)."""
    from scipy.stats import binom

    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("a median needs at least one value")
    r = int(binom.ppf((1 - confidence) / 2, n, 0.5))  # smallest k with P(B ≤ k) ≥ α/2, so P(B ≤ k−1) < α/2
    if r < 1:
        return ordered[0], ordered[-1]
    return ordered[r - 1], ordered[n - r]


def bootstrap_mean_interval(values: list[float], confidence: float = 0.95, resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reproducible): it stays within the values' range,
    which a Student-t interval on a heavy-tailed sample does not."""
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, (resamples, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def heavy_tailed_summary(values: list[float]) -> dict[str, float | int | list[float] | None]:
    """Summary of a heavy-tailed per-configuration quantity (output error under bit flips, loss): mean with a
    bootstrap interval and median with its order-statistics interval over the finite values, and the count of
    non-finite ones reported apart, so that one inf/NaN does not poison the mean (issue 14)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    out: dict[str, float | int | list[float] | None] = {"n": len(values), "non_finite": len(values) - len(finite)}
    if not finite:
        return {**out, "mean": None, "ci": None, "median": None, "median_ci": None, "min": None, "max": None,
                "sd": None}
    running = RunningMean()
    for v in finite:
        running.add(v)
    ordered = sorted(finite)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
    return {**out, "mean": running.mean, "ci": list(bootstrap_mean_interval(finite)), "median": median,
            "median_ci": list(median_interval(finite)), "min": running.min, "max": running.max, "sd": running.sd}
