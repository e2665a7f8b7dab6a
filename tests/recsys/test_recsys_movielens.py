"""MovieLens-100k loader (from the recbole wheel): shapes, labels, splits without leakage."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from cimflow.errors import DataError
from cimflow.recsys import data as data_module
from cimflow.recsys.data import MOVIELENS_SPARSE_KEYS, load_movielens_100k, movielens_100k_dir, read_atomic_file

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None,
    reason="MovieLens-100k is read from the recbole wheel: pip install --no-deps recbole==1.2.1",
)

POSITIVES, RATINGS = 55_375, 100_000  # ratings >= 4 in ml-100k


@pytest.fixture(scope="module")
def splits():  # type: ignore[no-untyped-def]
    return load_movielens_100k(seed=0)


def test_sizes_and_tables(splits) -> None:  # type: ignore[no-untyped-def]
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (70_000, 10_000, 20_000)
    assert splits.keys == MOVIELENS_SPARSE_KEYS
    assert splits.table_sizes == [943, 1682, 19, 21, 7, 2, 11]
    for part in (splits.train, splits.validation, splits.test):
        assert part.dense.shape == (len(part), 4)
        lengths = part.sparse.lengths_by_key()
        single = [k for k, key in enumerate(part.keys) if key != "genre"]
        assert (lengths[single] == 1).all()
        assert (lengths[part.keys.index("genre")] >= 1).all()  # every movie has a genre
        assert int(lengths[part.keys.index("genre")].max()) > 1  # multi-hot


def test_label_rate_matches_the_rating_counts(splits) -> None:  # type: ignore[no-untyped-def]
    p = POSITIVES / RATINGS
    total = sum(float(part.labels.sum()) for part in (splits.train, splits.validation, splits.test))
    assert total == POSITIVES
    for part in (splits.train, splits.test):
        assert abs(part.positive_rate - p) < 5 * math.sqrt(p * (1 - p) / len(part))


def test_splits_partition_the_ratings(splits) -> None:  # type: ignore[no-untyped-def]
    rows = splits.interactions
    union = np.concatenate([rows["train"], rows["validation"], rows["test"]])
    assert np.array_equal(np.sort(union), np.arange(RATINGS))


def test_count_features_use_training_ratings_only(splits) -> None:  # type: ignore[no-untyped-def]
    train_users = splits.train.sparse.per_feature()[0][0].numpy()
    train_items = splits.train.sparse.per_feature()[1][0].numpy()
    user_counts = np.bincount(train_users, minlength=943)
    item_counts = np.bincount(train_items, minlength=1682)
    for part in (splits.validation, splits.test):
        raw = part.dense.numpy() * splits.dense_std + splits.dense_mean
        users = part.sparse.per_feature()[0][0].numpy()
        items = part.sparse.per_feature()[1][0].numpy()
        assert np.allclose(raw[:, 2], np.log1p(user_counts[users]), atol=1e-4)
        assert np.allclose(raw[:, 3], np.log1p(item_counts[items]), atol=1e-4)
    # z-scores use training statistics: exactly standard on train
    assert np.allclose(splits.train.dense.numpy().mean(0), 0, atol=1e-5)
    assert np.allclose(splits.train.dense.numpy().std(0), 1, atol=1e-4)


def test_time_split_holds_out_the_newest_ratings() -> None:
    splits = load_movielens_100k(split="time")
    stamps = np.array(read_atomic_file(movielens_100k_dir() / "ml-100k.inter")["timestamp"], dtype=float)
    rows = splits.interactions
    assert stamps[rows["train"]].max() <= stamps[rows["validation"]].min()
    assert stamps[rows["validation"]].max() <= stamps[rows["test"]].min()


def test_seeds_change_the_random_split() -> None:
    a = load_movielens_100k(seed=0).interactions["test"]
    b = load_movielens_100k(seed=1).interactions["test"]
    assert not np.array_equal(a, b)


def test_missing_recbole_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'recbole>=1\.1\.1,<1\.2'"):
        movielens_100k_dir()
