"""Zipf sampler, row permutation, synthetic batches and access profiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cimflow.recsys.jagged import JaggedFeatures
from cimflow.recsys.synthetic import (
    RowPermutation,
    SyntheticCriteo,
    generalized_harmonic,
    measure_access,
    sample_zipf_ranks,
    zipf_hit_fraction,
)


@pytest.mark.parametrize(("n_rows", "alpha"), [(30, 1.2), (30, 0.0), (12, 0.6), (6, 2.5)])
def test_zipf_ranks_follow_the_exact_law(n_rows: int, alpha: float) -> None:
    draws = 200_000
    ranks = sample_zipf_ranks(n_rows, alpha, draws, np.random.default_rng(7))
    expected = np.arange(1, n_rows + 1, dtype=float) ** -alpha
    expected *= draws / expected.sum()
    observed = np.bincount(ranks, minlength=n_rows)
    assert observed.size == n_rows
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-4, n_rows - 1)


def _binomial_tolerance(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)


def test_top_one_percent_of_rows_take_the_zipf_share_of_hits() -> None:
    table, alpha, draws = 1_000_000, 1.05, 100_000
    generator = SyntheticCriteo([table], alpha=alpha, seed=4)
    values = torch.from_numpy(generator.sample_rows(0, draws, np.random.default_rng(1)))
    hot = generator.hot_rows(0, table // 100)
    measured = float(torch.isin(values, hot).double().mean())
    expected = zipf_hit_fraction(table, alpha, table // 100)
    assert abs(measured - expected) < _binomial_tolerance(expected, draws)


def test_hundred_million_row_table_samples_without_per_row_arrays() -> None:
    table, alpha, draws = 10**8, 1.0, 50_000
    generator = SyntheticCriteo([table, 7], pooling_factors=[2, 1], alpha=alpha, seed=9)
    dense, sparse, labels = generator.batch(draws // 2, index=0)
    values = sparse.per_feature()[0][0]
    assert values.numel() == draws and int(values.min()) >= 0 and int(values.max()) < table
    hot = generator.hot_rows(0, 10**6)
    measured = float(torch.isin(values, hot).double().mean())
    expected = zipf_hit_fraction(table, alpha, 10**6)
    assert abs(measured - expected) < _binomial_tolerance(expected, draws)
    assert dense.shape == (draws // 2, 13) and labels.shape == (draws // 2,)


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 1000, 4097])
def test_row_permutation_is_a_bijection(n: int) -> None:
    rows = RowPermutation(n, seed=5, table=2)(np.arange(n))
    assert sorted(rows.tolist()) == list(range(n))


def test_generalized_harmonic_tail_matches_direct_sum() -> None:
    n = 2_500_000
    for alpha in (0.7, 1.0, 1.3):
        direct = float(np.sum(np.arange(n, 0, -1, dtype=np.float64) ** -alpha))
        assert abs(generalized_harmonic(n, alpha) / direct - 1) < 1e-10


def test_batches_are_reproducible_per_index() -> None:
    generator = SyntheticCriteo([100, 1000], pooling_factors=[3, 1], random_pooling=True, seed=1)
    a, b = generator.batch(16, 3), generator.batch(16, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].values, b[1].values)
    assert not torch.equal(a[1].values, generator.batch(16, 4)[1].values)


def test_random_pooling_has_the_requested_mean() -> None:
    p, batch = 6, 20_000
    generator = SyntheticCriteo([50], pooling_factors=[p], random_pooling=True)
    lengths = generator.batch(batch)[1].lengths.double()
    # uniform on 1..2p-1: mean p, variance ((2p-1)^2 - 1) / 12
    sigma = math.sqrt(((2 * p - 1) ** 2 - 1) / 12 / batch)
    assert abs(float(lengths.mean()) - p) < 5 * sigma
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 2 * p - 1


def test_access_profile_counts_are_exact_and_find_the_hot_rows() -> None:
    generator = SyntheticCriteo([5000, 40], alpha=1.05, seed=2)
    batches = [generator.batch(10_000, i)[1] for i in range(4)]
    profiles = measure_access(batches, generator.table_sizes, top_k=50)
    for t, profile in enumerate(profiles):
        values = torch.cat([b.per_feature()[t][0] for b in batches])
        exact = torch.bincount(values, minlength=generator.table_sizes[t])
        assert profile.total_lookups == values.numel()
        assert profile.distinct_rows == int((exact > 0).sum())
        assert torch.equal(profile.counts, exact[profile.rows])
        assert torch.all(profile.counts[:-1] >= profile.counts[1:])
    # the 5 measured hottest rows are the generator's 5 most probable rows
    assert set(profiles[0].rows[:5].tolist()) == set(generator.hot_rows(0, 5).tolist())
    coverage = profiles[0].coverage(50)
    expected = zipf_hit_fraction(5000, 1.05, 50)
    assert abs(coverage - expected) < _binomial_tolerance(expected, 40_000) + 0.01


def test_measure_access_accepts_jagged_features_from_any_source() -> None:
    sparse = JaggedFeatures.from_lists(["a"], [[[3, 3], [1], [3]]])
    (profile,) = measure_access([sparse], [10 ** 9], top_k=5)
    assert profile.rows.tolist() == [3, 1] and profile.counts.tolist() == [3, 1]
