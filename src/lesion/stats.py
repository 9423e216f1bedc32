"""Confidence intervals (SPEC §4: every sampled figure carries its count and a 95% interval)."""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np

# The quantiles below are computed here rather than with scipy.stats, whose import alone takes a second, more
# than a 100-configuration campaign computes (issue 16: a command costs at most `import torch` + 0.5 s).


def z_value(confidence: float = 0.95) -> float:
    """Two-sided standard-normal quantile: 1.959964… for 95%."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz), on the
    side of x where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` degrees of freedom, through the incomplete beta function:
    P(|T| ≤ t) = I_{t²/(df+t²)}(1/2, df/2) near the centre, P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2) in the tails
    (each form where its argument keeps its digits)."""
    t2 = t * t
    if t2 < df:
        central = 0.5 * _incomplete_beta(0.5, df / 2.0, t2 / (df + t2))
        return 0.5 + central if t > 0 else 0.5 - central
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t2))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=256)  # a campaign asks for the same few (p, df) again and again
def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p (0.5 < p < 1): Newton steps on `student_t_cdf` with its density, kept inside a
    bracket that bisection narrows whenever a step would leave it, to the last bits of a double."""
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    t = min(max(NormalDist().inv_cdf(p), lo), hi)
    for _ in range(200):
        gap = student_t_cdf(t, df) - p
        if gap == 0.0:
            return t
        lo, hi = (t, hi) if gap < 0 else (lo, t)
        density = math.exp(log_scale - (df + 1) / 2 * math.log1p(t * t / df))
        step = t - gap / density
        t = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= 4e-16 * hi or abs(gap) < 1e-17:
            break
    return t


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), as the regularised incomplete beta function I_p(k, n − k + 1)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return float(p >= 1.0)
    return _incomplete_beta(k, n - k + 1, p)


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
    return RunningMean.of([float(v) for v in values]).interval(confidence)


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

    @classmethod
    def of(cls, values: list[float]) -> RunningMean:
        """The summary of `values` at once (numpy's mean and squared deviations: what adding them one by one
        gives, up to rounding)."""
        out = cls()
        if values:
            data = np.asarray(values, dtype=np.float64)
            out.min, out.max = float(data.min()), float(data.max())
            # within the extremes, as a mean is (numpy's rounding can leave them: 0.1 ten times → 0.09999…)
            out.n, out.mean = len(data), min(max(float(data.mean()), out.min), out.max)
            out._m2 = float(((data - out.mean) ** 2).sum())
        return out

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
        half = student_t_quantile(0.5 + confidence / 2.0, self.n - 1) * self.sd / math.sqrt(self.n)
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
    configurations, where a Student-t interval can otherwise leave the range (issue 14). One value says nothing of
    the spread: the interval is then the whole range, not the value alone."""
    if len(values) < 2:
        return low, high
    lo, hi = mean_interval(values, confidence)
    return max(low, lo), min(high, hi)


def _half_binomial_cdf(n: int, k: int) -> float:
    """P(B ≤ k) for B ~ Binomial(n, 1/2): exact up to n = 1000, else I_{1/2}(n − k, k + 1) (good to ~1e-14)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if n <= 1000:
        return sum(math.comb(n, j) for j in range(k + 1)) / 2**n
    return _incomplete_beta(n - k, k + 1, 0.5)


@functools.lru_cache(maxsize=256)
def _median_rank(n: int, confidence: float) -> int:
    """The smallest r with P(B ≤ r) ≥ α/2 for B ~ Binomial(n, 1/2) and α = 1 − confidence, so that
    P(B ≤ r − 1) < α/2. Exact rational arithmetic up to n = 1000; beyond, bisection on the incomplete beta
    function, P(B ≤ k) = I_{1/2}(n − k, k + 1), good to about 1e-14."""
    alpha_half = Fraction(1.0 - confidence) / 2
    if n <= 1000:
        r, weight, total = 0, 1, 2**n  # weight = C(n, r)
        cumulative = weight
        while cumulative < alpha_half * total:
            r += 1
            weight = weight * (n - r + 1) // r
            cumulative += weight
        return r
    target = float(alpha_half)
    lo, hi = 0, n  # P(B ≤ lo − 1) < α/2 ≤ P(B ≤ hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if _half_binomial_cdf(n, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median from order statistics: [X_(r), X_(n−r+1)] with r the
    largest rank such that 2·P(B ≤ r−1) ≤ 1 − confidence, B ~ Binomial(n, 1/2) (the whole range when no rank
    qualifies, n < 6 at 95%: its coverage is then below `confidence`, see `median_interval_level`)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("a median needs at least one value")
    r = _median_rank(n, confidence)
    if r < 1:
        return ordered[0], ordered[-1]
    return ordered[r - 1], ordered[n - r]


def median_interval_level(n: int, confidence: float = 0.95) -> float:
    """The exact coverage of `median_interval` over n values of a continuous distribution: 1 − 2·P(B ≤ r−1),
    B ~ Binomial(n, 1/2), r its rank (1 for the whole range). At least `confidence` from n = 6 at 95%; below,
    the whole range covers only 1 − 2·2⁻ⁿ (93.75% for n = 5, 0 for n = 1)."""
    if n < 1:
        raise ValueError("a median needs at least one value")
    r = max(1, _median_rank(n, confidence))
    return max(0.0, 1.0 - 2.0 * _half_binomial_cdf(n, r - 1))


def bootstrap_mean_interval(values: list[float], confidence: float = 0.95, resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reproducible): it stays within the values' range,
    which a Student-t interval on a heavy-tailed sample does not."""

    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    # resamples drawn a block at a time, a block's indices within a cache (~1 MB): the same draws in the same
    # order as one (resamples, n) call (numpy's generator fills row after row), at half the time
    block = max(1, (1 << 17) // data.size)
    means = np.empty(resamples)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        means[start:start + rows] = data[rng.integers(0, data.size, (rows, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def heavy_tailed_summary(values: list[float]) -> dict[str, float | int | list[float] | None]:
    """Summary of a heavy-tailed per-configuration quantity (output error under bit flips, loss): mean with a
    bootstrap interval over the finite values, the count of non-finite ones reported apart, so that one inf/NaN
    does not poison the mean (issue 14); median with its order-statistics interval over all values, a non-finite
    one ranked above every finite one (inf: broken outputs are the worst), so that the median of 50 configurations
    of which 46 broke is inf, not the median of the 4 that did not. `median_ci_level` is the interval's exact
    coverage, below 0.95 for fewer than 6 configurations."""
    finite = [float(v) for v in values if math.isfinite(v)]
    out: dict[str, float | int | list[float] | None] = {"n": len(values), "non_finite": len(values) - len(finite)}
    ranked = sorted(finite) + [math.inf] * (len(values) - len(finite))
    middle = len(ranked) // 2
    median_part: dict[str, float | list[float] | None] = {"median": None, "median_ci": None, "median_ci_level": None}
    if ranked:
        median_part = {"median": ranked[middle] if len(ranked) % 2 else 0.5 * (ranked[middle - 1] + ranked[middle]),
                       "median_ci": list(median_interval(ranked)),
                       "median_ci_level": median_interval_level(len(ranked))}
    if not finite:
        return {**out, "mean": None, "ci": None, **median_part, "min": None, "max": None, "sd": None}
    running = RunningMean.of(finite)
    return {**out, "mean": running.mean, "ci": list(bootstrap_mean_interval(finite)), **median_part,
            "min": running.min, "max": running.max, "sd": running.sd}
