"""Recommendation datasets: the common :class:`RecDataset`, MovieLens-100k, and re-exports
of the Criteo reader/writer (:mod:`cimflow.recsys.criteo`) and the synthetic Zipf
generator (:mod:`cimflow.recsys.synthetic`).

MovieLens-100k is read from the installed ``recbole`` wheel (a declared dependency,
``>=1.1.1,<1.2``; the files are byte-identical to those of 1.2.1), under
``recbole/dataset_example/ml-100k/``: its terms forbid redistribution, so it is never copied into
this repository.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cimflow.errors import DataError
from cimflow.readers import ReadLimits, iter_text_lines
from cimflow.recsys.criteo import (
    CRITEO_CATEGORICAL_FEATURES,
    CRITEO_INTEGER_FEATURES,
    CriteoRecords,
    iter_criteo_tsv,
    read_criteo_tsv,
    write_criteo_tsv,
)
from cimflow.recsys.jagged import JaggedFeatures
from cimflow.recsys.synthetic import (
    AccessProfile,
    SyntheticCriteo,
    measure_access,
    sample_zipf_ranks,
    zipf_hit_fraction,
)

__all__ = [
    "RecDataset",
    "MovieLensSplits",
    "RECBOLE_INSTALL_COMMAND",
    "movielens_100k_dir",
    "read_atomic_file",
    "load_movielens_100k",
    "MOVIELENS_SPARSE_KEYS",
    "MOVIELENS_DENSE_NAMES",
    "CRITEO_CATEGORICAL_FEATURES",
    "CRITEO_INTEGER_FEATURES",
    "CriteoRecords",
    "iter_criteo_tsv",
    "read_criteo_tsv",
    "write_criteo_tsv",
    "AccessProfile",
    "SyntheticCriteo",
    "measure_access",
    "sample_zipf_ranks",
    "zipf_hit_fraction",
]


@dataclass(eq=False)
class RecDataset:
    """Samples of a click/rating prediction task, all in memory.

    Attributes:
        dense: continuous features ``[N, n_dense]`` float32.
        sparse: bags of table rows, one key per embedding table (N samples).
        labels: targets ``[N]`` float32 in {0, 1}.
        table_sizes: rows of each sparse feature's table (same order as ``sparse.keys``).
        dense_names: names of the dense columns.
        name: a label for reports.
    """

    dense: Tensor
    sparse: JaggedFeatures
    labels: Tensor
    table_sizes: list[int]
    dense_names: list[str]
    name: str = "dataset"

    def __post_init__(self) -> None:
        n = self.labels.numel()
        if self.dense.dim() != 2 or self.dense.shape[0] != n or self.sparse.batch_size != n:
            raise DataError(
                f"{self.name}: dense {tuple(self.dense.shape)}, sparse batch {self.sparse.batch_size} "
                f"and {n} labels disagree"
            )
        if len(self.dense_names) != self.dense.shape[1]:
            raise DataError(f"{self.name}: {len(self.dense_names)} dense names for {self.dense.shape[1]} columns")
        self.sparse.validate(self.table_sizes)

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def keys(self) -> list[str]:
        """Sparse feature names."""
        return self.sparse.keys

    @property
    def positive_rate(self) -> float:
        """Fraction of labels equal to 1."""
        return float(self.labels.mean()) if len(self) else float("nan")

    def take(self, index: Tensor | Sequence[int]) -> tuple[Tensor, JaggedFeatures, Tensor]:
        """``(dense, sparse, labels)`` of the given samples."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return self.dense[index], self.sparse.take(index), self.labels[index]

    def subset(self, index: Tensor | Sequence[int], name: str | None = None) -> RecDataset:
        """A new dataset of the given samples."""
        dense, sparse, labels = self.take(index)
        return RecDataset(dense, sparse, labels, list(self.table_sizes), list(self.dense_names), name or self.name)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, JaggedFeatures, Tensor]]:
        """Mini-batches ``(dense, sparse, labels)``; the last may be smaller."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.take(order[start : start + batch_size])


# ---------------------------------------------------------------------------- MovieLens
RECBOLE_INSTALL_COMMAND = "pip install 'recbole>=1.1.1,<1.2'"

#: Sparse features of the MovieLens task, in table order.
MOVIELENS_SPARSE_KEYS = ["user_id", "item_id", "genre", "occupation", "age_bucket", "gender", "zip_prefix"]
#: Dense features of the MovieLens task (each z-scored with training-split statistics).
MOVIELENS_DENSE_NAMES = ["user_age", "release_year", "log_user_count", "log_item_count"]

# MovieLens-1M style age buckets: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
_AGE_BUCKET_EDGES = np.array([18, 25, 35, 45, 50, 56])


def movielens_100k_dir() -> Path:
    """Folder of ml-100k inside the installed recbole package (located, never imported).

    Raises:
        DataError: recbole is not installed or its wheel lacks the example dataset.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"MovieLens-100k is read from the recbole wheel, which is not installed; run: {RECBOLE_INSTALL_COMMAND}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    missing = [n for n in ("ml-100k.inter", "ml-100k.user", "ml-100k.item") if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{folder} lacks {missing}; reinstall the version that ships them: {RECBOLE_INSTALL_COMMAND}"
        )
    return folder


#: Limits of :func:`read_atomic_file` (ml-100k.inter is 2.1 MB, 100,001 lines, 4 columns;
#: ml-100k.item's longest line ~150 bytes).
ATOMIC_FILE_LIMITS = ReadLimits(max_bytes=256 << 20, max_line_bytes=64 << 10, max_lines=10_000_000)
#: Columns an atomic file's header may name.
ATOMIC_FILE_MAX_COLUMNS = 256


def read_atomic_file(path: Path, limits: ReadLimits = ATOMIC_FILE_LIMITS) -> dict[str, list[str]]:
    """Read a RecBole atomic file: tab-separated, header ``name:type`` per column.

    Returns ``{column name (without type): [raw string per row]}``.

    Raises:
        DataError: missing or empty file, a header of more than ``ATOMIC_FILE_MAX_COLUMNS``
            or repeated columns, a row whose field count differs from the header's, a file
            past ``limits`` (bytes, bytes per line, lines; gzip bombs).
    """
    lines = iter_text_lines(path, limits, what="RecBole atomic file")
    header = next(lines, (1, ""))[1]
    if not header:
        raise DataError(f"{path}: empty file, expected a header of name:type columns")
    names = [col.split(":", 1)[0] for col in header.split("\t")]
    if len(names) > ATOMIC_FILE_MAX_COLUMNS:
        raise DataError(f"{path}:1: the header has {len(names)} columns; at most {ATOMIC_FILE_MAX_COLUMNS} are allowed")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{path}:1: column {', '.join(map(repr, repeated))} appears twice in the header; each column once")
    columns: dict[str, list[str]] = {name: [] for name in names}
    for line_number, line in lines:
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise DataError(f"{path}:{line_number}: {len(fields)} fields, the header has {len(names)}")
        for name, value in zip(names, fields, strict=True):
            columns[name].append(value)
    return columns


@dataclass(eq=False)
class MovieLensSplits:
    """MovieLens-100k as train / validation / test :class:`RecDataset` s.

    All feature statistics (count features, z-score means and deviations) come from
    ``train`` only; ``validation`` and ``test`` are held out.

    Attributes:
        train, validation, test: the splits (validation may be empty).
        split: ``"random"`` or ``"time"``.
        seed: seed of the random split.
        interactions: for each split, the row numbers in ``ml-100k.inter`` (0-based).
        dense_mean, dense_std: the training-split statistics used to z-score the dense
            columns (raw = z * std + mean).
    """

    train: RecDataset
    validation: RecDataset
    test: RecDataset
    split: str
    seed: int
    interactions: dict[str, np.ndarray]
    dense_mean: np.ndarray
    dense_std: np.ndarray

    @property
    def table_sizes(self) -> list[int]:
        """Rows of each sparse table."""
        return list(self.train.table_sizes)

    @property
    def keys(self) -> list[str]:
        """Sparse feature names."""
        return self.train.keys


def _index_of(tokens: Sequence[str]) -> dict[str, int]:
    return {token: i for i, token in enumerate(tokens)}


def _age_bucket(ages: np.ndarray) -> np.ndarray:
    return np.searchsorted(_AGE_BUCKET_EDGES, ages, side="right")


def _zip_prefix(zip_code: str) -> int:
    """First digit of a US zip code (0-9), 10 for anything else (Canadian codes...)."""
    return int(zip_code[0]) if zip_code[:1].isdigit() else 10


def _split_rows(
    timestamps: np.ndarray, split: str, test_fraction: float, validation_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    n = timestamps.size
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * validation_fraction))
    if split == "random":
        order = np.random.default_rng(seed).permutation(n)
    elif split == "time":
        order = np.argsort(timestamps, kind="stable")  # oldest first; the newest are held out
    else:
        raise DataError(f"split must be 'random' or 'time', got {split!r}")
    n_train = n - n_test - n_val
    return {
        "train": np.sort(order[:n_train]),
        "validation": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def load_movielens_100k(
    split: Literal["random", "time"] = "random",
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 0,
    positive_rating: float = 4.0,
) -> MovieLensSplits:
    """MovieLens-100k as a click-style task: label = ``rating >= positive_rating``.

    Split (of the 100,000 ratings): ``"random"`` — a seeded permutation; ``"time"`` —
    by timestamp, the newest ``test_fraction`` is the test set and the
    ``validation_fraction`` before it the validation set. Fractions are of all ratings.

    Sparse features (one table each): ``user_id`` (943), ``item_id`` (1682), ``genre``
    (19, multi-hot: a movie's genres), ``occupation`` (21), ``age_bucket`` (7:
    <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), ``gender`` (2), ``zip_prefix`` (11:
    first zip digit, or "other"). Vocabularies come from the user and item files.

    Dense features, z-scored with the training split's mean and deviation: user age,
    movie release year (missing → the mean), ``log(1 + count)`` of the user's and the
    movie's ratings *in the training split* (no leakage from held-out ratings).

    Raises:
        DataError: recbole missing (message gives the install command), bad fractions.
    """
    if not (0 < test_fraction < 1 and 0 <= validation_fraction < 1 and test_fraction + validation_fraction < 1):
        raise DataError(
            f"need 0 < test_fraction < 1, 0 <= validation_fraction and a sum < 1; got "
            f"{test_fraction}, {validation_fraction}"
        )
    folder = movielens_100k_dir()
    inter = _columns(folder / "ml-100k.inter", ("user_id", "item_id", "rating", "timestamp"))
    users = _columns(folder / "ml-100k.user", ("user_id", "age", "gender", "occupation", "zip_code"))
    items = _columns(folder / "ml-100k.item", ("item_id", "release_year", "class"))
    try:
        return _movielens_splits(inter, users, items, split, test_fraction, validation_fraction, seed, positive_rating)
    except ValueError as error:  # a non-numeric rating, timestamp or age
        raise DataError(f"{folder}: MovieLens-100k holds a value that is not a number ({error}); "
                        f"reinstall it: {RECBOLE_INSTALL_COMMAND}") from None


def _columns(path: Path, required: Sequence[str]) -> dict[str, list[str]]:
    columns = read_atomic_file(path)
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(f"{path}: the header lacks the column(s) {', '.join(missing)}; it has {', '.join(columns)}")
    return columns


def _movielens_splits(
    inter: dict[str, list[str]],
    users: dict[str, list[str]],
    items: dict[str, list[str]],
    split: str,
    test_fraction: float,
    validation_fraction: float,
    seed: int,
    positive_rating: float,
) -> MovieLensSplits:

    user_index = _index_of(users["user_id"])
    item_index = _index_of(items["item_id"])
    try:
        user_rows = np.array([user_index[u] for u in inter["user_id"]], dtype=np.int64)
        item_rows = np.array([item_index[i] for i in inter["item_id"]], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"ml-100k.inter refers to an unknown user or item {exc}") from exc
    ratings = np.array(inter["rating"], dtype=np.float64)
    timestamps = np.array(inter["timestamp"], dtype=np.float64)
    labels = (ratings >= positive_rating).astype(np.float32)

    # per-user attributes
    ages = np.array(users["age"], dtype=np.float64)
    occupations = sorted(set(users["occupation"]))
    occupation = np.array([occupations.index(o) for o in users["occupation"]], dtype=np.int64)
    genders = sorted(set(users["gender"]))
    gender = np.array([genders.index(g) for g in users["gender"]], dtype=np.int64)
    zip_prefix = np.array([_zip_prefix(z) for z in users["zip_code"]], dtype=np.int64)
    age_bucket = _age_bucket(ages)

    # per-item attributes
    years = np.array([float(y) if y.strip().isdigit() else math.nan for y in items["release_year"]])
    genre_lists = [g.split() for g in items["class"]]
    genres = sorted({g for gl in genre_lists for g in gl})
    genre_index = _index_of(genres)
    item_genres = [[genre_index[g] for g in gl] for gl in genre_lists]

    rows = _split_rows(timestamps, split, test_fraction, validation_fraction, seed)
    train_rows = rows["train"]
    user_counts = np.bincount(user_rows[train_rows], minlength=len(user_index))
    item_counts = np.bincount(item_rows[train_rows], minlength=len(item_index))

    raw_dense = np.stack(
        [
            ages[user_rows],
            years[item_rows],
            np.log1p(user_counts[user_rows]),
            np.log1p(item_counts[item_rows]),
        ],
        axis=1,
    )
    train_dense = raw_dense[train_rows]
    mean = np.nanmean(train_dense, axis=0)
    std = np.nanstd(train_dense, axis=0)
    std[std == 0] = 1.0
    dense_all = np.nan_to_num((raw_dense - mean) / std, nan=0.0).astype(np.float32)

    table_sizes = [len(user_index), len(item_index), len(genres), len(occupations), len(_AGE_BUCKET_EDGES) + 1,
                   len(genders), 11]  # fmt: skip
    single_hot = {
        "user_id": user_rows,
        "item_id": item_rows,
        "occupation": occupation[user_rows],
        "age_bucket": age_bucket[user_rows],
        "gender": gender[user_rows],
        "zip_prefix": zip_prefix[user_rows],
    }

    def build(name: str, idx: np.ndarray) -> RecDataset:
        values: list[Tensor] = []
        lengths: list[Tensor] = []
        for key in MOVIELENS_SPARSE_KEYS:
            if key == "genre":
                bags = [item_genres[i] for i in item_rows[idx]]
                values.append(torch.tensor([g for bag in bags for g in bag], dtype=torch.int64))
                lengths.append(torch.tensor([len(bag) for bag in bags], dtype=torch.int64))
            else:
                values.append(torch.from_numpy(single_hot[key][idx].astype(np.int64)))
                lengths.append(torch.ones(idx.size, dtype=torch.int64))
        sparse = JaggedFeatures(list(MOVIELENS_SPARSE_KEYS), torch.cat(values), lengths=torch.cat(lengths))
        return RecDataset(
            dense=torch.from_numpy(dense_all[idx]),
            sparse=sparse,
            labels=torch.from_numpy(labels[idx]),
            table_sizes=list(table_sizes),
            dense_names=list(MOVIELENS_DENSE_NAMES),
            name=f"movielens-100k/{name}",
        )

    return MovieLensSplits(
        train=build("train", rows["train"]),
        validation=build("validation", rows["validation"]),
        test=build("test", rows["test"]),
        split=split,
        seed=seed,
        interactions=rows,
        dense_mean=mean,
        dense_std=std,
    )
