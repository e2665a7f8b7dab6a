"""Synthetic Criteo-like batches with Zipf-skewed embedding accesses, and access profiles.

Embedding accesses in production recommendation models are heavily skewed: a few rows
take most lookups. This generator draws, per table, a *popularity rank* ``r`` (0 =
hottest) from a bounded Zipf law ``P(r) ∝ (r + 1)^-alpha`` over the table's ``n`` rows,
then maps rank to row through a fixed pseudo-random bijection of ``[0, n)`` (so hot
rows are scattered over the table as in hashed real data). Neither step allocates
anything per row, so tables of 10^8 rows or more cost nothing:

* ranks come from rejection-inversion sampling (W. Hörmann and G. Derflinger,
  "Rejection-inversion to generate variates from monotone discrete distributions",
  ACM TOMACS 6(3), 1996): exact draws from the bounded Zipf law in O(1) per draw;
* the bijection is a 4-round Feistel network on the next even power of two with
  cycle walking back into ``[0, n)``.

:func:`measure_access` counts hits per row from batches (memory ∝ distinct rows seen,
not table size) and returns the hottest rows, for a placement pass (hot rows in SRAM,
cold rows in dense NVM); :func:`zipf_hit_fraction` is the analytic expectation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cimflow.errors import DataError
from cimflow.recsys.jagged import JaggedFeatures

__all__ = [
    "sample_zipf_ranks",
    "zipf_hit_fraction",
    "expected_distinct_rows",
    "fit_zipf_alpha",
    "generalized_harmonic",
    "RowPermutation",
    "SyntheticCriteo",
    "AccessProfile",
    "measure_access",
]

_EXACT_HARMONIC_TERMS = 1_000_000


# ------------------------------------------------------------------------- Zipf sampling
def _helper_log1p_over(x: np.ndarray) -> np.ndarray:
    """log(1+x)/x, continuous at 0."""
    out = np.ones_like(x)
    big = np.abs(x) > 1e-8
    out[big] = np.log1p(x[big]) / x[big]
    out[~big] = 1.0 - x[~big] / 2.0
    return out


def _helper_expm1_over(x: np.ndarray) -> np.ndarray:
    """(exp(x)-1)/x, continuous at 0."""
    out = np.ones_like(x)
    big = np.abs(x) > 1e-8
    out[big] = np.expm1(x[big]) / x[big]
    out[~big] = 1.0 + x[~big] / 2.0
    return out


class _ZipfRejectionInversion:
    """Exact sampler of ``P(k) ∝ k^-s`` on ``k = 1..n`` (Hörmann & Derflinger 1996)."""

    def __init__(self, n: int, s: float) -> None:
        self.n, self.s = n, s
        self.h_integral_x1 = float(self.h_integral(np.array([1.5]))[0]) - 1.0
        self.h_integral_n = float(self.h_integral(np.array([n + 0.5]))[0])
        self.squeeze = 2.0 - float(
            self.h_integral_inverse(self.h_integral(np.array([2.5])) - self.h(np.array([2.0])))[0]
        )

    def h(self, x: np.ndarray) -> np.ndarray:
        return np.exp(-self.s * np.log(x))

    def h_integral(self, x: np.ndarray) -> np.ndarray:
        """∫_1^x t^-s dt = (x^(1-s) - 1) / (1-s)  (log x at s = 1)."""
        log_x = np.log(x)
        return _helper_expm1_over((1.0 - self.s) * log_x) * log_x

    def h_integral_inverse(self, y: np.ndarray) -> np.ndarray:
        t = np.maximum(y * (1.0 - self.s), -1.0)
        return np.exp(_helper_log1p_over(t) * y)

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(size, dtype=np.int64)
        pending = np.arange(size)
        while pending.size:
            u = self.h_integral_n + rng.random(pending.size) * (self.h_integral_x1 - self.h_integral_n)
            x = self.h_integral_inverse(u)
            k = np.clip(np.floor(x + 0.5), 1, self.n)
            accept = (k - x <= self.squeeze) | (u >= self.h_integral(k + 0.5) - self.h(k))
            out[pending[accept]] = k[accept].astype(np.int64)
            pending = pending[~accept]
        return out


def sample_zipf_ranks(n_rows: int, alpha: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` ranks in ``[0, n_rows)`` with ``P(r) ∝ (r+1)^-alpha`` (0 = most popular).

    ``alpha = 0`` is uniform. Exact (not a continuous approximation); O(size) memory,
    independent of ``n_rows``.
    """
    if n_rows < 1 or alpha < 0 or size < 0:
        raise DataError(f"need n_rows >= 1, alpha >= 0, size >= 0; got {n_rows}, {alpha}, {size}")
    if n_rows == 1:
        return np.zeros(size, dtype=np.int64)
    return _ZipfRejectionInversion(int(n_rows), float(alpha)).sample(size, rng) - 1


def generalized_harmonic(n: int, alpha: float) -> float:
    """``H(n, alpha) = sum_{k=1..n} k^-alpha``: exact up to 10^6 terms, then the
    Euler–Maclaurin tail (integral + end corrections; relative error < 1e-12)."""
    if n <= 0:
        return 0.0
    m = min(n, _EXACT_HARMONIC_TERMS)
    head = float(np.sum(np.arange(m, 0, -1, dtype=np.float64) ** -alpha))
    if n == m:
        return head
    a, b = float(m + 1), float(n)

    def f(x: float) -> float:
        return x**-alpha

    def df(x: float) -> float:
        return -alpha * x ** (-alpha - 1)

    integral = math.log(b / a) if alpha == 1 else (b ** (1 - alpha) - a ** (1 - alpha)) / (1 - alpha)
    return head + integral + (f(a) + f(b)) / 2 + (df(b) - df(a)) / 12


def zipf_hit_fraction(n_rows: int, alpha: float, top_rows: int) -> float:
    """Expected fraction of lookups that hit the ``top_rows`` hottest of ``n_rows`` rows."""
    top_rows = max(0, min(int(top_rows), int(n_rows)))
    return generalized_harmonic(top_rows, alpha) / generalized_harmonic(int(n_rows), alpha)


def expected_distinct_rows(n_rows: int, alpha: float, lookups: int) -> float:
    """Expected number of distinct rows ``lookups`` Zipf(``alpha``) draws over ``n_rows`` rows
    touch: ``sum_r 1 - exp(-lookups p_r)`` (Poisson), exact over the first 10^5 ranks and a
    log-spaced trapezoid over the rest."""
    h = generalized_harmonic(int(n_rows), alpha)
    head = min(int(n_rows), 100_000)
    r = np.arange(1, head + 1, dtype=np.float64)
    total = float(np.sum(-np.expm1(-lookups * r**-alpha / h)))
    if n_rows > head:
        x = np.geomspace(head + 1, n_rows, 4000)
        y = -np.expm1(-lookups * x**-alpha / h)
        total += float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x))) + float(y[0] + y[-1]) / 2
    return total


def fit_zipf_alpha(counts: np.ndarray | Tensor, n_rows: int, max_alpha: float = 4.0) -> float:
    """Zipf exponent of a table from an access sample: the ``alpha`` whose expected number of
    distinct rows (:func:`expected_distinct_rows`) equals the sample's, for the same number of
    lookups (``counts`` = hit counts of the rows the sample saw). Unlike a fit to the sample's
    rank-frequency curve, this has no bias from ranking rows seen once. 0 = uniform."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    c = c[c > 0]
    if c.size == 0 or n_rows < 2:
        return 0.0
    if c.size > n_rows:
        raise DataError(f"{c.size} distinct rows seen in a table of {n_rows} rows")
    lookups, distinct = int(c.sum()), float(c.size)
    if distinct >= expected_distinct_rows(n_rows, 0.0, lookups):
        return 0.0
    lo, hi = 0.0, float(max_alpha)
    for _ in range(22):  # the expected count falls as alpha grows (4 / 2^22 ~ 1e-6)
        mid = (lo + hi) / 2
        if expected_distinct_rows(n_rows, mid, lookups) > distinct:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# ------------------------------------------------------------------------- permutation
def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer (a bijective 64-bit mix) on uint64 arrays."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class RowPermutation:
    """A keyed pseudo-random bijection of ``[0, n)`` computed on the fly (no tables).

    A 4-round balanced Feistel network on ``2b`` bits (``4^b >= n``) with cycle walking:
    values that land at or above ``n`` are encrypted again until they fall inside.
    """

    ROUNDS = 4

    def __init__(self, n: int, seed: int, table: int = 0) -> None:
        if n < 1:
            raise DataError(f"RowPermutation needs n >= 1, got {n}")
        self.n = int(n)
        half_bits = max(1, math.ceil(math.log2(self.n) / 2)) if self.n > 1 else 1
        self.half_bits = np.uint64(half_bits)
        self.half_mask = np.uint64((1 << half_bits) - 1)
        self.keys = np.random.SeedSequence([int(seed), int(table), 0x5EED]).generate_state(
            self.ROUNDS, dtype=np.uint64
        )

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left = x >> self.half_bits
        right = x & self.half_mask
        for key in self.keys:
            left, right = right, left ^ (_mix64(right ^ key) & self.half_mask)
        return (left << self.half_bits) | right

    def __call__(self, ranks: np.ndarray) -> np.ndarray:
        """Rows ``[...]`` int64 of the given ranks in ``[0, n)``."""
        x = np.asarray(ranks, dtype=np.int64)
        if x.size and (int(x.min()) < 0 or int(x.max()) >= self.n):
            raise DataError(f"ranks must lie in [0, {self.n})")
        y = self._encrypt(x.astype(np.uint64))
        outside = y >= np.uint64(self.n)
        while outside.any():
            y[outside] = self._encrypt(y[outside])
            outside = y >= np.uint64(self.n)
        return y.astype(np.int64)


# ------------------------------------------------------------------------- generator
@dataclass
class SyntheticCriteo:
    """Criteo-like synthetic batches for scale runs (not for accuracy: labels are
    independent Bernoulli(``click_rate``) draws).

    Attributes:
        table_sizes: rows per table (10^8 and more is fine).
        pooling_factors: lookups per sample and table (1 = single-hot); None → all 1.
        alpha: Zipf exponent (one for all tables, or one per table); 0 = uniform.
        dense_features: number of dense columns (``log1p`` of exponential counts).
        seed: base seed; batch ``i`` uses ``(seed, i)``, so batches are reproducible
            in any order.
        random_pooling: bag sizes uniform on ``1..2p-1`` (mean ``p``) instead of fixed ``p``.
        permute_rows: scatter hot rows over the table (True) or keep row = rank (False).
        click_rate: probability of label 1.
        keys: feature names (default ``C1..CK``).
    """

    table_sizes: Sequence[int]
    pooling_factors: Sequence[int] | None = None
    alpha: float | Sequence[float] = 1.05
    dense_features: int = 13
    seed: int = 0
    random_pooling: bool = False
    permute_rows: bool = True
    click_rate: float = 0.25
    keys: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.table_sizes = [int(n) for n in self.table_sizes]
        k = len(self.table_sizes)
        if k == 0 or min(self.table_sizes) < 1:
            raise DataError(f"table_sizes must be >= 1 each and non-empty, got {self.table_sizes}")
        self.pooling_factors = [1] * k if self.pooling_factors is None else [int(p) for p in self.pooling_factors]
        alphas = [float(self.alpha)] * k if isinstance(self.alpha, (int, float)) else [float(a) for a in self.alpha]
        if len(self.pooling_factors) != k or min(self.pooling_factors) < 1:
            raise DataError(f"pooling_factors needs {k} entries >= 1, got {self.pooling_factors}")
        if len(alphas) != k or min(alphas) < 0:
            raise DataError(f"alpha needs one value >= 0 or {k} of them, got {self.alpha}")
        self._alphas = alphas
        self.keys = [f"C{i + 1}" for i in range(k)] if self.keys is None else [str(s) for s in self.keys]
        if len(self.keys) != k:
            raise DataError(f"{len(self.keys)} keys for {k} tables")
        self._samplers = [
            _ZipfRejectionInversion(n, a) if n > 1 else None for n, a in zip(self.table_sizes, alphas, strict=True)
        ]
        self._permutations = [RowPermutation(n, self.seed, t) for t, n in enumerate(self.table_sizes)]

    @classmethod
    def from_config(cls, config: object, **kwargs: object) -> SyntheticCriteo:
        """From a :class:`~cimflow.recsys.models.DLRMConfig` (tables, pooling, keys, dense)."""
        return cls(
            table_sizes=config.table_sizes,  # type: ignore[attr-defined]
            pooling_factors=config.pooling_factors,  # type: ignore[attr-defined]
            dense_features=config.dense_features,  # type: ignore[attr-defined]
            keys=config.keys,  # type: ignore[attr-defined]
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def num_tables(self) -> int:
        """Number of tables."""
        return len(self.table_sizes)

    def alpha_of(self, table: int) -> float:
        """Zipf exponent of a table."""
        return self._alphas[table]

    def rows_of_ranks(self, table: int, ranks: np.ndarray) -> np.ndarray:
        """Row ids of popularity ranks (0 = hottest) in a table."""
        ranks = np.asarray(ranks, dtype=np.int64)
        return self._permutations[table](ranks) if self.permute_rows else ranks

    def hot_rows(self, table: int, k: int) -> Tensor:
        """The ``k`` most probable rows of a table, hottest first (ground truth)."""
        k = min(int(k), self.table_sizes[table])
        return torch.from_numpy(self.rows_of_ranks(table, np.arange(k, dtype=np.int64)))

    def expected_hit_fraction(self, table: int, top_rows: int) -> float:
        """Expected fraction of a table's lookups that hit its ``top_rows`` hottest rows."""
        return zipf_hit_fraction(self.table_sizes[table], self._alphas[table], top_rows)

    def sample_rows(self, table: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` row ids of a table drawn from its access distribution."""
        sampler = self._samplers[table]
        if sampler is None:
            return np.zeros(size, dtype=np.int64)
        return self.rows_of_ranks(table, sampler.sample(size, rng) - 1)

    def batch(self, batch_size: int, index: int = 0) -> tuple[Tensor, JaggedFeatures, Tensor]:
        """Batch number ``index``: ``(dense [B, n_dense], sparse, labels [B])``."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), int(index)]))
        scales = np.logspace(0, 3, self.dense_features)
        dense = np.log1p(rng.exponential(scales, size=(batch_size, self.dense_features)))
        lengths_all, values_all = [], []
        for t, p in enumerate(self.pooling_factors):  # type: ignore[arg-type]
            if self.random_pooling and p > 1:
                lengths = rng.integers(1, 2 * p, size=batch_size)
            else:
                lengths = np.full(batch_size, p, dtype=np.int64)
            lengths_all.append(lengths)
            values_all.append(self.sample_rows(t, int(lengths.sum()), rng))
        labels = (rng.random(batch_size) < self.click_rate).astype(np.float32)
        sparse = JaggedFeatures(
            list(self.keys),  # type: ignore[arg-type]
            torch.from_numpy(np.concatenate(values_all)),
            lengths=torch.from_numpy(np.concatenate(lengths_all).astype(np.int64)),
        )
        return torch.from_numpy(dense.astype(np.float32)), sparse, torch.from_numpy(labels)


# ------------------------------------------------------------------------- access profiles
@dataclass(frozen=True)
class AccessProfile:
    """Measured lookups of one table.

    Attributes:
        key: feature name.
        table_size: rows of the table.
        total_lookups: lookups counted.
        distinct_rows: rows hit at least once.
        rows: the most-hit rows, most hits first (ties: lower row id first).
        counts: their hit counts.
    """

    key: str
    table_size: int
    total_lookups: int
    distinct_rows: int
    rows: Tensor
    counts: Tensor

    def coverage(self, k: int) -> float:
        """Fraction of lookups that hit the ``k`` most-hit rows (k <= len(rows))."""
        if k > self.rows.numel() and self.rows.numel() < self.distinct_rows:
            raise DataError(f"coverage({k}) needs the top {k} rows but only {self.rows.numel()} were kept")
        if self.total_lookups == 0:
            return 0.0
        return float(self.counts[:k].sum()) / self.total_lookups


def _merge_counts(rows: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(unique.numel(), dtype=torch.int64).index_add_(0, inverse, counts)
    return unique, summed


def measure_access(
    batches: Iterable[JaggedFeatures], table_sizes: Sequence[int], top_k: int = 1000
) -> list[AccessProfile]:
    """Count hits per row over ``batches`` and keep each table's ``top_k`` rows.

    Memory is proportional to the distinct rows seen, never to the table size.
    """
    sizes = [int(n) for n in table_sizes]
    seen_rows: list[Tensor] = [torch.zeros(0, dtype=torch.int64) for _ in sizes]
    seen_counts: list[Tensor] = [torch.zeros(0, dtype=torch.int64) for _ in sizes]
    keys: list[str] | None = None
    for sparse in batches:
        sparse.validate(sizes)
        keys = keys or list(sparse.keys)
        for t, (values, _) in enumerate(sparse.per_feature()):
            rows, counts = torch.unique(values.cpu(), return_counts=True)
            seen_rows[t], seen_counts[t] = _merge_counts(
                torch.cat([seen_rows[t], rows]), torch.cat([seen_counts[t], counts])
            )
    keys = keys or [f"C{i + 1}" for i in range(len(sizes))]
    profiles = []
    for t, size in enumerate(sizes):
        rows, counts = seen_rows[t], seen_counts[t]
        # sort by count descending, row ascending (rows are already ascending; stable sort)
        order = torch.sort(counts, descending=True, stable=True).indices[:top_k]
        profiles.append(
            AccessProfile(
                key=keys[t],
                table_size=size,
                total_lookups=int(counts.sum()),
                distinct_rows=rows.numel(),
                rows=rows[order],
                counts=counts[order],
            )
        )
    return profiles
