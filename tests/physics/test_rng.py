"""Tests of cimflow.physics.rng: seed derivation and seeded generators."""

from __future__ import annotations

import itertools

import pytest
import torch

from cimflow.physics import derive_seed, generator_for

_MAX_SEED = 1 << 63


def test_derive_seed_is_deterministic() -> None:
    keys = (7, "fc1", 3, "programming")
    assert derive_seed(*keys) == derive_seed(*keys)


def test_derive_seed_is_a_63_bit_non_negative_int() -> None:
    for seed, name in itertools.product(range(20), ("a", "layer.0.weight", "")):
        s = derive_seed(seed, name)
        assert isinstance(s, int)
        assert 0 <= s < _MAX_SEED


def test_derive_seed_pinned_values() -> None:
    """Pinned outputs: a change in the derivation would silently change every seeded
    result users saved, so it must show up here (values recorded from the implementation)."""
    assert derive_seed(0, "layer", "prog") == 3894553564416409587
    assert derive_seed(12345, "fc1", 0, "read") == 5062019542809668993


def test_derive_seed_distinct_for_distinct_keys() -> None:
    layers = [f"block{i}.conv{j}" for i in range(20) for j in range(5)]
    purposes = ["programming", "drift", "read", "stuck"]
    seeds = {derive_seed(0, layer, instance, purpose)
             for layer in layers for instance in range(5) for purpose in purposes}
    assert len(seeds) == len(layers) * 5 * len(purposes)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((0, "fc1"), (1, "fc1")),            # seed matters
        ((0, "a", "b"), (0, "b", "a")),      # key order matters
        ((0, "1"), (0, 1)),                  # type of key matters
        ((0, "fc1"), (0, "fc1", 0)),         # number of keys matters
        ((0, "ab"), (0, "a", "b")),          # no concatenation collisions
        ((0,), (0, "")),
    ],
)
def test_derive_seed_differs(a: tuple, b: tuple) -> None:
    assert derive_seed(*a) != derive_seed(*b)


def test_generator_for_seeds_with_derive_seed() -> None:
    gen = generator_for(3, "fc2", "read")
    assert gen.initial_seed() == derive_seed(3, "fc2", "read")
    assert gen.device.type == "cpu"


def test_generator_for_same_keys_bit_identical_streams() -> None:
    g1 = generator_for(11, "emb", 2, "programming")
    g2 = generator_for(11, "emb", 2, "programming")
    assert torch.equal(torch.rand(4096, generator=g1), torch.rand(4096, generator=g2))
    assert torch.equal(torch.randn(64, 64, generator=g1, dtype=torch.float64),
                       torch.randn(64, 64, generator=g2, dtype=torch.float64))
    assert torch.equal(torch.randint(0, 1000, (512,), generator=g1),
                       torch.randint(0, 1000, (512,), generator=g2))


@pytest.mark.parametrize(
    "other",
    [(12, "emb", 2, "programming"), (11, "emb", 3, "programming"), (11, "emb", 2, "read")],
)
def test_generator_for_different_keys_different_streams(other: tuple) -> None:
    a = torch.rand(4096, generator=generator_for(11, "emb", 2, "programming"))
    b = torch.rand(4096, generator=generator_for(*other))
    # Two independent U(0,1) streams agree in a given element with probability 0 (float32
    # grid: ~2**-24); demand that (almost) all elements differ.
    assert int((a == b).sum()) <= 2
