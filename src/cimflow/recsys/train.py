"""Training and evaluation of DLRMs on CPU, and a cached MovieLens-100k model.

:func:`train_movielens_dlrm` trains a small DLRM on MovieLens-100k (label: rating >= 4)
with Adam and early stopping on a validation split, evaluates the held-out test AUC,
and caches the weights (:mod:`cimflow.recsys.cache`: keyed by a digest of the split
tensors actually trained and evaluated on, the model config, every training setting, the
seed and the code version; checksummed; a bad entry is warned about, moved aside and
retrained). Checkpoints load with ``torch.load(weights_only=True)``.

:func:`roc_auc` is a rank-based (Mann–Whitney) AUC with tied scores given their
average rank — the same number as ``sklearn.metrics.roc_auc_score``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cimflow.errors import DataError
from cimflow.recsys.cache import cache_key, dataset_digest, default_cache_dir, discard_entry, entry_path, read_entry, write_entry
from cimflow.recsys.data import MovieLensSplits, RecDataset, load_movielens_100k
from cimflow.recsys.models import DLRM, DLRMConfig, table_weights

__all__ = [
    "roc_auc",
    "predict_logits",
    "evaluate_auc",
    "evaluate_logloss",
    "TrainSettings",
    "TrainMetrics",
    "train_dlrm",
    "movielens_dlrm_config",
    "train_movielens_dlrm",
    "movielens_dlrm_cache_entry",
    "default_cache_dir",
]

#: metrics a cached float DLRM must have finite (else the entry is discarded and retrained)
FINITE_METRICS = ("test_auc", "test_logloss", "train_loss")


# ------------------------------------------------------------------------- metrics
def roc_auc(labels: Tensor | np.ndarray | Sequence[float], scores: Tensor | np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve, rank-based, ties at their average rank.

    ``AUC = (sum of positive ranks - P(P+1)/2) / (P N)`` for P positives, N negatives.

    Raises:
        DataError: shapes differ, labels other than 0/1, or only one class present.
    """
    y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels, dtype=np.float64).ravel()
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise DataError(f"roc_auc: {y.size} labels but {s.size} scores")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("roc_auc: labels must be 0 or 1")
    if np.isnan(s).any():
        raise DataError("roc_auc: scores contain NaN")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise DataError(f"roc_auc needs both classes; got {positives} positives and {negatives} negatives")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # average 1-based rank of each run of equal scores
    run_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    run_ends = np.r_[run_starts[1:], s.size]  # exclusive
    run_rank = (run_starts + 1 + run_ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, run_ends - run_starts)
    positive_rank_sum = float(ranks[y == 1].sum())
    return (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: RecDataset, batch_size: int = 8192) -> Tensor:
    """Logits ``[N]`` of a model on a dataset, in dataset order (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        outputs = [model(dense, sparse) for dense, sparse, _ in dataset.batches(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0)


def evaluate_auc(model: nn.Module, dataset: RecDataset, batch_size: int = 8192) -> float:
    """Held-out ROC AUC of a model's logits on a dataset (see :func:`roc_auc`)."""
    return roc_auc(dataset.labels, predict_logits(model, dataset, batch_size))


def evaluate_logloss(model: nn.Module, dataset: RecDataset, batch_size: int = 8192) -> float:
    """Mean binary cross-entropy (nats) of a model on a dataset."""
    logits = predict_logits(model, dataset, batch_size)
    return float(nn.functional.binary_cross_entropy_with_logits(logits, dataset.labels))


# ------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainSettings:
    """Optimizer settings of :func:`train_dlrm`.

    Attributes:
        epochs: maximum passes over the training set.
        batch_size: samples per step.
        learning_rate: Adam step size.
        weight_decay: L2 penalty on MLP weights (Adam ``weight_decay``).
        embedding_weight_decay: L2 penalty on the embedding rows in each batch (applied
            to the pooled rows, so untouched rows are not decayed).
        patience: stop after this many epochs without a better validation AUC
            (only with a validation set); the best epoch's weights are kept.
    """

    epochs: int = 12
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    embedding_weight_decay: float = 1e-2
    patience: int = 2


@dataclass
class TrainMetrics:
    """What a training run measured.

    Attributes:
        test_auc: ROC AUC on the held-out test split (NaN if none was given).
        test_logloss: mean BCE on the test split (nats).
        validation_auc: best validation AUC (NaN without validation).
        best_epoch: epoch whose weights were kept (1-based).
        epochs_run: epochs actually trained.
        train_loss: mean training BCE of the last epoch.
        seconds: wall-clock training time (0 when loaded from the cache).
        threads: torch intra-op threads used.
        history: per epoch ``{"epoch", "train_loss", "validation_auc"}``.
        cached: True when the model came from the cache.
        cache_path: the checkpoint file, if caching was on.
    """

    test_auc: float = float("nan")
    test_logloss: float = float("nan")
    validation_auc: float = float("nan")
    best_epoch: int = 0
    epochs_run: int = 0
    train_loss: float = float("nan")
    seconds: float = 0.0
    threads: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    cached: bool = False
    cache_path: str | None = None


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _embedding_penalty(model: DLRM, sparse_pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    total = torch.zeros(())
    for weight, (values, _) in zip(table_weights(model), sparse_pairs, strict=True):
        total = total + weight[values].pow(2).sum()
    return total


def train_dlrm(
    model: DLRM,
    train: RecDataset,
    settings: TrainSettings = TrainSettings(),
    validation: RecDataset | None = None,
    seed: int = 0,
    max_steps: int | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train ``model`` in place with Adam on BCE-with-logits.

    With ``validation``, keeps the weights of the epoch with the best validation AUC
    and stops after ``settings.patience`` epochs without improvement.

    Returns:
        ``(history, best_epoch)``: per-epoch ``{"epoch", "train_loss",
        "validation_auc"}`` and the 1-based epoch whose weights the model holds.
    """
    if len(train) == 0:
        raise DataError("train_dlrm: the training set is empty")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    history: list[dict[str, float]] = []
    best_auc, best_epoch, best_state, stale = -1.0, 0, None, 0
    steps = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        loss_sum, seen = 0.0, 0
        for dense, sparse, labels in train.batches(settings.batch_size, shuffle=True, generator=generator):
            pairs = sparse.per_feature()
            loss = loss_fn(model(dense, pairs), labels)
            objective = loss
            if settings.embedding_weight_decay > 0:
                objective = loss + settings.embedding_weight_decay * _embedding_penalty(model, pairs) / labels.numel()
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * labels.numel()
            seen += labels.numel()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        record = {"epoch": float(epoch), "train_loss": loss_sum / seen, "validation_auc": float("nan")}
        if validation is not None and len(validation):
            auc = evaluate_auc(model, validation)
            record["validation_auc"] = auc
            if auc > best_auc:
                best_auc, best_epoch, stale = auc, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        else:
            best_epoch = epoch
        history.append(record)
        if (max_steps is not None and steps >= max_steps) or (validation is not None and stale >= settings.patience):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history, best_epoch


# ------------------------------------------------------------------------- MovieLens
def movielens_dlrm_config(table_sizes: Sequence[int], dense_features: int, keys: Sequence[str]) -> DLRMConfig:
    """The small DLRM used for MovieLens-100k: dim 16, bottom n-64-16, top 44-64-32-1."""
    return DLRMConfig(
        dense_features=dense_features,
        table_sizes=tuple(table_sizes),
        embedding_dim=16,
        bottom_mlp=(64, 16),
        top_mlp=(64, 32, 1),
        interaction="dot",
        feature_names=tuple(keys),
    )


def movielens_dlrm_cache_entry(
    seed: int = 0,
    epochs: int = 12,
    cache_dir: str | Path | None = None,
    split: str = "random",
    settings: TrainSettings | None = None,
    data: MovieLensSplits | None = None,
) -> tuple[Path, str, DLRMConfig, TrainSettings, MovieLensSplits]:
    """Where :func:`train_movielens_dlrm` with these arguments caches its model, without
    training: ``(path, key, config, settings, data)``.

    The key (:func:`cimflow.recsys.cache.cache_key`) holds a digest of the train,
    validation and test tensors, the model config, every training setting, the split,
    the seed and the code version: other data never shares an entry.
    """
    if data is None:
        data = load_movielens_100k(split=split, seed=seed)  # type: ignore[arg-type]
    config = movielens_dlrm_config(data.table_sizes, len(data.train.dense_names), data.keys)
    settings = TrainSettings(**{**asdict(settings or TrainSettings()), "epochs": epochs})
    key = cache_key(
        "movielens_dlrm",
        data=dataset_digest(data.train, data.validation, data.test),
        split=split,
        seed=seed,
        config=config.to_dict(),
        settings=asdict(settings),
    )
    return entry_path(cache_dir, "movielens_dlrm", key), key, config, settings, data


def _load_cached(path: Path, key: str, model: DLRM) -> TrainMetrics | None:
    checkpoint = read_entry(path, key, model, FINITE_METRICS)
    if checkpoint is None:
        return None
    try:
        metrics = TrainMetrics(**checkpoint["record"])
    except TypeError as error:
        discard_entry(path, f"its metrics do not match this version: {error}")
        return None
    model.load_state_dict(checkpoint["state_dict"])
    metrics.cached = True
    metrics.cache_path = str(path)
    return metrics


def train_movielens_dlrm(
    seed: int = 0,
    epochs: int = 12,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    split: str = "random",
    settings: TrainSettings | None = None,
    threads: int | None = 1,
    data: MovieLensSplits | None = None,
) -> tuple[DLRM, TrainMetrics]:
    """Train (or load from the cache) a DLRM on MovieLens-100k; return it and its metrics.

    Data: :func:`~cimflow.recsys.data.load_movielens_100k` with ``split`` and ``seed``
    (70% train, 10% validation for early stopping, 20% test). The model keeps the best
    validation epoch; ``metrics.test_auc`` is measured on the untouched test split.

    Args:
        seed: seeds the split, the initialization and the batch order.
        epochs: maximum epochs (early stopping may end sooner).
        cache: load/store the checkpoint in ``cache_dir``.
        cache_dir: default :func:`default_cache_dir`.
        split: ``"random"`` or ``"time"``.
        settings: optimizer settings (``epochs`` overrides ``settings.epochs``).
        threads: torch intra-op threads during training (restored afterwards);
            None keeps the current setting.
        data: the splits to train on instead of MovieLens-100k (same features); their
            content is part of the cache key.
    """
    path, key, config, settings, data = movielens_dlrm_cache_entry(seed, epochs, cache_dir, split, settings, data)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DLRM(config)
    if cache:
        cached = _load_cached(path, key, model)
        if cached is not None:
            model.eval()
            return model, cached

    with _torch_threads(threads) as used_threads:
        start = time.perf_counter()
        history, best_epoch = train_dlrm(model, data.train, settings, validation=data.validation, seed=seed)
        seconds = time.perf_counter() - start
        metrics = TrainMetrics(
            test_auc=evaluate_auc(model, data.test),
            test_logloss=evaluate_logloss(model, data.test),
            validation_auc=max((h["validation_auc"] for h in history), default=float("nan")),
            best_epoch=best_epoch,
            epochs_run=len(history),
            train_loss=history[-1]["train_loss"],
            seconds=seconds,
            threads=used_threads,
            history=history,
        )
    model.eval()
    if cache:
        stored = asdict(metrics)
        stored.pop("cached"), stored.pop("cache_path")
        if write_entry(path, key, model.state_dict(), stored, FINITE_METRICS):
            metrics.cache_path = str(path)
    return model, metrics
