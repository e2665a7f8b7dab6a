"""JaggedFeatures: layout, per-feature split, sub-batches, validation errors."""

from __future__ import annotations

import pytest
import torch

from cimflow.errors import DataError
from cimflow.recsys.jagged import JaggedFeatures

KEYS = ["user", "genre"]
BAGS = [[[3], [0], [7]], [[1, 2], [], [0, 4, 5]]]


def test_per_feature_offsets_start_at_zero_and_hold_the_bags() -> None:
    jf = JaggedFeatures.from_lists(KEYS, BAGS)
    assert jf.batch_size == 3 and jf.num_keys == 2
    pairs = jf.per_feature()
    for (values, offsets), bags in zip(pairs, BAGS, strict=True):
        assert offsets.tolist()[0] == 0 and offsets.numel() == 4
        rebuilt = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(3)]
        assert rebuilt == bags


def test_lengths_and_offsets_constructors_agree() -> None:
    a = JaggedFeatures.from_lists(KEYS, BAGS)
    b = JaggedFeatures(KEYS, a.values, offsets=a.offsets)
    assert torch.equal(a.lengths, b.lengths)
    c = JaggedFeatures.from_per_feature(KEYS, a.per_feature())
    assert torch.equal(c.values, a.values) and torch.equal(c.offsets, a.offsets)


def test_take_selects_samples_in_order() -> None:
    jf = JaggedFeatures.from_lists(KEYS, BAGS)
    sub = jf.take([2, 0])
    expected = JaggedFeatures.from_lists(KEYS, [[BAGS[k][2], BAGS[k][0]] for k in range(2)])
    assert torch.equal(sub.values, expected.values) and torch.equal(sub.lengths, expected.lengths)


def test_from_dense_indices_is_single_hot() -> None:
    jf = JaggedFeatures.from_dense_indices(KEYS, torch.tensor([[1, 2], [3, 4]]))
    assert jf.lengths.tolist() == [1, 1, 1, 1]
    assert [v.tolist() for v, _ in jf.per_feature()] == [[1, 3], [2, 4]]


def test_out_of_range_index_names_table_index_and_size() -> None:
    jf = JaggedFeatures.from_lists(KEYS, BAGS)
    with pytest.raises(DataError) as info:
        jf.validate([8, 5])
    message = str(info.value)
    assert "'genre'" in message and "index 5" in message and "5 rows" in message
    jf.validate([8, 6])  # in range: no error


def test_negative_index_is_refused() -> None:
    jf = JaggedFeatures.from_lists(KEYS, [[[0], [-1], [1]], [[0], [0], [0]]])
    with pytest.raises(DataError, match="index -1"):
        jf.validate([3, 3])


def test_negative_lengths_are_refused() -> None:
    with pytest.raises(DataError, match="lengths must be >= 0"):
        JaggedFeatures(["a"], torch.tensor([1, 2]), lengths=torch.tensor([3, -1]))


def test_decreasing_offsets_are_refused() -> None:
    with pytest.raises(DataError, match="non-decreasing"):
        JaggedFeatures(["a"], torch.tensor([1, 2, 3]), offsets=torch.tensor([0, 2, 1, 3]))


def test_offsets_must_start_at_zero_and_end_at_len_values() -> None:
    with pytest.raises(DataError, match="start at 0"):
        JaggedFeatures(["a"], torch.tensor([1, 2]), offsets=torch.tensor([1, 2]))
    with pytest.raises(DataError, match="end at"):
        JaggedFeatures(["a"], torch.tensor([1, 2]), offsets=torch.tensor([0, 1]))


def test_bag_count_must_be_a_multiple_of_keys() -> None:
    with pytest.raises(DataError, match="multiple"):
        JaggedFeatures(["a", "b"], torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 1, 1]))


def test_float_values_are_refused() -> None:
    with pytest.raises(DataError, match="integers"):
        JaggedFeatures(["a"], torch.tensor([1.0]), lengths=torch.tensor([1]))
