"""Keyed random draws (lesion.damage.keyed_random): a batch of keys draws what each key draws alone; counts are
Binomial (against scipy's pmf); positions are distinct and uniform without replacement (inclusion and pair
frequencies against the closed forms); a campaign's batched bit-flip realisation equals realising each seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lesion.damage import keyed_random, parse_damage, realise
from lesion.damage.kinds import realise_each
from lesion.damage.target import Target


def _keys(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2 ** 63 - 1, n, dtype=np.int64).astype(np.uint64)


@pytest.mark.parametrize(("total", "p"), [(40, 0.2), (40, 0.45), (5000, 2e-3), (3_000_000, 3e-6)])
def test_a_batch_draws_what_each_key_draws_alone(total, p):
    keys = _keys(200, seed=total)
    owner, position = keyed_random.at_rate(keys, total, p)
    for k in range(len(keys)):
        alone_owner, alone = keyed_random.at_rate(keys[k:k + 1], total, p)
        assert np.array_equal(position[owner == k], alone)
        assert np.all(alone_owner == 0)


def test_a_batch_that_needs_more_draws_for_some_keys_still_matches():
    # 19 of 40 per key: duplicates are frequent, so some keys need the retry with more counters
    keys = _keys(300, seed=1)
    counts = np.full(len(keys), 19)
    owner, position = keyed_random.distinct_positions(keys, counts, 40)
    assert np.array_equal(np.bincount(owner, minlength=len(keys)), counts)
    for k in (0, 7, 299):
        _, alone = keyed_random.distinct_positions(keys[k:k + 1], counts[k:k + 1], 40)
        assert np.array_equal(position[owner == k], alone)


@pytest.mark.parametrize(("total", "p"), [(1000, 0.004), (8_500_000, 1e-6), (60, 0.3)])
def test_counts_are_binomial(total, p):
    counts = keyed_random.binomial_counts(_keys(20000, seed=2), total, p)
    values, observed = np.unique(counts, return_counts=True)
    expected = stats.binom.pmf(values, total, p) * len(counts)
    keep = expected >= 5  # chi-square over the well-populated counts, the rest pooled
    pooled_obs = np.append(observed[keep], observed[~keep].sum() + (len(counts) - observed.sum()))
    pooled_exp = np.append(expected[keep], len(counts) - expected[keep].sum())
    chi2 = float(((pooled_obs - pooled_exp) ** 2 / pooled_exp).sum())
    assert stats.chi2.sf(chi2, len(pooled_obs) - 1) > 1e-4
    assert abs(counts.mean() - total * p) < 5 * math.sqrt(total * p * (1 - p) / len(counts))


def test_large_counts_have_binomial_mean_and_variance():
    total, p = 10_000_000, 1e-3  # mean 10,000
    counts = keyed_random.binomial_counts(_keys(5000, seed=3), total, p)
    var = total * p * (1 - p)
    assert abs(counts.mean() - total * p) < 5 * math.sqrt(var / len(counts))
    assert 0.9 < counts.var() / var < 1.1


@pytest.mark.parametrize("count", [12, 40])  # rejection (below half of the candidates) and keyed permutation
def test_positions_are_uniform_without_replacement(count):
    total, draws = 50, 6000
    owner, position = keyed_random.distinct_positions(_keys(draws, seed=count), np.full(draws, count), total)
    chosen = np.zeros((draws, total), dtype=bool)
    chosen[owner, position] = True
    assert chosen.sum(1).tolist() == [count] * draws  # distinct: every key holds `count` different positions
    inclusion = chosen.mean(0)
    q = count / total
    assert np.all(np.abs(inclusion - q) < 5 * math.sqrt(q * (1 - q) / draws))
    pair = q * (count - 1) / (total - 1)  # P(i and j chosen) without replacement
    both = (chosen[:, 0] & chosen[:, 1]).mean(), (chosen[:, 17] & chosen[:, 49]).mean()
    assert all(abs(b - pair) < 5 * math.sqrt(pair * (1 - pair) / draws) for b in both)
    for k in range(0, draws, 997):  # sorted per key
        assert np.all(np.diff(position[owner == k]) > 0)


def test_no_hits_at_rate_zero_and_all_at_rate_one():
    keys = _keys(3)
    owner, position = keyed_random.at_rate(keys, 100, 0.0)
    assert owner.size == 0 and position.size == 0
    owner, position = keyed_random.at_rate(keys, 7, 1.0)
    assert owner.tolist() == [0] * 7 + [1] * 7 + [2] * 7 and position.tolist() == list(range(7)) * 3


def test_keys_come_from_the_generator_state():
    g = torch.Generator().manual_seed(5)
    a, b = keyed_random.key_of(g), keyed_random.key_of(g)
    assert a != b and keyed_random.key_of(torch.Generator().manual_seed(5)) == a
    assert 0 <= a < 2 ** 63


def test_batched_bitflip_realisation_equals_each_seed_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
    target = Target(model)
    damages = [parse_damage("bitflip:ber=2e-5")]
    seeds = [11, 12, 13, 99, 1234567]
    batch = realise_each(target, damages, seeds)
    assert sum(r.faults[0]["flips"] for r in batch) > 10
    for seed, together in zip(seeds, batch, strict=True):
        alone = realise(target, damages, torch.Generator().manual_seed(seed))
        assert together.faults == alone.faults
        assert sorted(together.changed) == sorted(alone.changed)
        for name in together.changed:
            assert torch.equal(together.param(name, target.base), alone.param(name, target.base))


@pytest.mark.parametrize("seed", [0, 3, 2 ** 32 - 1, 2 ** 40])
def test_sample_seeds_equal_numpy_seed_sequence_one_by_one(seed):
    from lesion.damage.campaign import sample_seed, sample_seeds

    indices = [*range(300), *np.random.default_rng(seed % 97).integers(0, 2 ** 32, 200).tolist(), 2 ** 32 - 1]
    assert sample_seeds(seed, indices) == [sample_seed(seed, i) for i in indices]  # array-wide (32-bit pairs)
    wide = [7, 2 ** 33]  # a 64-bit index: one at a time
    assert sample_seeds(seed, wide) == [sample_seed(seed, i) for i in wide]
    assert sample_seeds(seed, []) == []
