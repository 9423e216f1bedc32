"""Keyed (counter-based) random draws: the random numbers of a configuration are a function of one 63-bit key and
a counter, so the draws of hundreds of configurations are computed together, array-wide, and still equal what
each configuration draws alone from its own key (SPEC §4: sample i is reproducible from its seed).

The generator is SplitMix64's output function applied to key + counter × golden ratio (Steele, Lea and Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014), in numpy's wrapping uint64 arithmetic. A key is
drawn once from a configuration's torch.Generator (`key_of`), so a damage composed after others still draws
from the state they left.

Used for random bit flips (`lesion.damage.bits.random_bit_positions`): a Binomial(total, p) count by inversion
of its exact CDF, then that many distinct positions, uniform without replacement.
"""

from __future__ import annotations

import bisect
import functools
import math

import numpy as np
import torch

GOLDEN, MIX_1, MIX_2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64's constants
_GOLDEN, _MIX_1, _MIX_2 = np.uint64(GOLDEN), np.uint64(MIX_1), np.uint64(MIX_2)
_KEY_LIMIT = 1 << 63
COUNT_COUNTER = 0  # counter of the uniform that sets a configuration's count; positions use 1, 2, ...
# Where a configuration keeps at least this share of its candidates, positions come from a keyed permutation.
_DENSE_SHARE = 0.5


def key_of(generator: torch.Generator) -> int:
    """One 63-bit key drawn from `generator` (the draws of a configuration hang off it)."""
    return int(torch.randint(0, _KEY_LIMIT - 1, (1,), generator=generator, dtype=torch.int64))


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 values (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


_MASK = (1 << 64) - 1


def _uniform_int(key: int, counter: int) -> float:
    """`uniforms` of one (key, counter) pair in Python integers: the same bits, the same float (a single
    configuration's few draws cost less this way than through numpy's array set-up)."""
    z = (key + counter * GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * MIX_1) & _MASK
    z = ((z ^ (z >> 27)) * MIX_2) & _MASK
    return float((z ^ (z >> 31)) >> 11) * 2.0 ** -53


def uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniform float64 values in [0, 1) with 53 random bits, one per (key, counter) pair (broadcast)."""
    with np.errstate(over="ignore"):
        z = np.asarray(keys, dtype=np.uint64) + np.asarray(counters, dtype=np.uint64) * _GOLDEN
        return (_mix(z) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@functools.lru_cache(maxsize=64)
def _binomial_table(total: int, p: float) -> tuple[int, np.ndarray]:
    """(lowest count, CDF from it) of Binomial(total, p), over the counts within 12 standard deviations of the
    mean (the mass outside is below 1e-30), from the exact log-probabilities."""
    mean, sd = total * p, math.sqrt(total * p * (1 - p))
    lo, hi = max(0, int(mean - 12 * sd) - 8), min(total, int(mean + 12 * sd) + 8)
    k = torch.arange(lo, hi + 1, dtype=torch.float64)
    n = torch.tensor(float(total), dtype=torch.float64)
    log_pmf = (torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
               + k * math.log(p) + (n - k) * math.log1p(-p))
    pmf = torch.exp(log_pmf - log_pmf.max()).numpy()
    cdf = np.cumsum(pmf)
    return lo, cdf / cdf[-1]


@functools.lru_cache(maxsize=64)
def _as_list(total: int, p: float) -> list[float]:
    return _binomial_table(total, p)[1].tolist()


def binomial_counts(keys: np.ndarray, total: int, p: float) -> np.ndarray:
    """Binomial(total, p) counts, one per key, by inversion of the exact CDF at the key's uniform of counter
    `COUNT_COUNTER` (int64)."""
    keys = np.asarray(keys, dtype=np.uint64)
    if total == 0 or p == 0.0:
        return np.zeros(len(keys), dtype=np.int64)
    if p == 1.0:
        return np.full(len(keys), total, dtype=np.int64)
    lo, cdf = _binomial_table(total, p)
    if len(keys) == 1:
        u1 = _uniform_int(int(keys[0]), COUNT_COUNTER)
        return np.array([min(lo + bisect.bisect_right(_as_list(total, p), u1), total)], dtype=np.int64)
    u = uniforms(keys, np.uint64(COUNT_COUNTER))
    return np.minimum(lo + np.searchsorted(cdf, u, side="right"), total).astype(np.int64)


def at_rate(keys: np.ndarray, total: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Each of `total` candidates hit independently with probability `p`, per key: a Binomial(total, p) count
    (`binomial_counts`), then that many distinct candidates (`distinct_positions`). (key index, candidate)."""
    keys = np.asarray(keys, dtype=np.uint64)
    return distinct_positions(keys, binomial_counts(keys, total, p), total)


def distinct_positions(keys: np.ndarray, counts: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """For each key, `count` distinct integers in 0..total-1, uniform without replacement: the first `count`
    distinct values of floor(u_j · total) over counters j = 1, 2, … (any subset of the distinct values seen is
    equally likely, by symmetry); where a key keeps at least half of the candidates, the `count` candidates of
    smallest keyed priority instead. Returns (key index, position), sorted by key index then position."""
    if len(keys) == 1 and 0 < int(counts[0]) <= 256 and int(counts[0]) < _DENSE_SHARE * total:
        # one configuration: its first `count` distinct values, in Python (a few dozen cost less that way)
        key, need, seen, j = int(keys[0]), int(counts[0]), set(), 1
        while len(seen) < need:
            seen.add(math.floor(_uniform_int(key, j) * total))
            j += 1
        return np.zeros(need, dtype=np.int64), np.array(sorted(seen), dtype=np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    counts = np.asarray(counts, dtype=np.int64)
    dense = counts >= _DENSE_SHARE * total
    owners, positions = [], []
    for k in np.flatnonzero(dense & (counts > 0)):  # rare: a high rate on few candidates
        priority = uniforms(keys[k], np.arange(1, total + 1, dtype=np.uint64))
        chosen = np.sort(np.argpartition(priority, counts[k] - 1)[:counts[k]] if counts[k] < total
                         else np.arange(total))
        owners.append(np.full(len(chosen), k, dtype=np.int64))
        positions.append(chosen.astype(np.int64))
    sparse = np.flatnonzero(~dense & (counts > 0))
    extra = _expected_repeats(int(counts[sparse].max()), total) if sparse.size else 0
    while sparse.size:  # a prefix of each key's sequence: the same values however long the batch draws it
        need = counts[sparse]
        counters = np.arange(1, int(need.max()) + extra + 1, dtype=np.uint64)
        values = np.floor(uniforms(keys[sparse, None], counters[None, :]) * total).astype(np.int64)
        done, kept = _first_distinct(values, need)
        rows, _ = np.nonzero(kept)
        owners.append(sparse[rows])
        positions.append(values[kept])
        sparse, extra = sparse[~done], 2 * extra
    if not owners:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    owner, position = np.concatenate(owners), np.concatenate(positions)
    order = np.lexsort((position, owner))
    return owner[order], position[order]


def _expected_repeats(count: int, total: int) -> int:
    """Draws beyond `count` that usually suffice for `count` distinct values among `total` (the expected
    number of draws is −total·ln(1 − count/total)), with a margin."""
    repeats = -total * math.log1p(-count / total) - count
    return int(1.2 * repeats + 3 * math.sqrt(repeats)) + 4


def _first_distinct(values: np.ndarray, need: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `values`: whether it holds `need[row]` distinct values, and a mask of its first `need[row]`
    distinct values in order of appearance (all False on a row that does not)."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, 1)
    first = np.ones_like(ordered, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    is_first = np.zeros_like(first)
    np.put_along_axis(is_first, order, first, 1)
    rank = np.cumsum(is_first, axis=1)
    done = rank[:, -1] >= need
    return done, is_first & (rank <= need[:, None]) & done[:, None]
