"""AUC against scikit-learn; the cached MovieLens training (one epoch here, full run slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cimflow.errors import DataError
from cimflow.recsys.train import evaluate_auc, predict_logits, roc_auc, train_movielens_dlrm

needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None,
    reason="MovieLens-100k is read from the recbole wheel: pip install --no-deps recbole==1.2.1",
)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(labels * 0.5, 1.0), 1)  # rounding creates many ties
    assert len(np.unique(scores)) < n / 3
    assert abs(roc_auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-12
    assert abs(roc_auc(torch.tensor(labels), torch.tensor(scores)) - roc_auc_score(labels, scores)) < 1e-12


def test_auc_closed_forms_and_errors() -> None:
    labels = [0, 0, 1, 1]
    assert roc_auc(labels, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(labels, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5
    with pytest.raises(DataError, match="both classes"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="labels"):
        roc_auc([0, 1], [0.1])


@needs_recbole
def test_cached_training_round_trip(tmp_path: Path) -> None:
    model, metrics = train_movielens_dlrm(seed=0, epochs=1, cache=True, cache_dir=tmp_path)
    assert not metrics.cached and metrics.epochs_run == 1
    assert metrics.cache_path is not None and Path(metrics.cache_path).is_file()
    assert 0.6 < metrics.test_auc <= 1.0
    again, cached = train_movielens_dlrm(seed=0, epochs=1, cache=True, cache_dir=tmp_path)
    assert cached.cached and cached.test_auc == metrics.test_auc
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    path = Path(metrics.cache_path)
    # one checkpoint and its checksum, no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".sha256"]


@needs_recbole
def test_evaluate_auc_is_roc_auc_of_the_logits() -> None:
    from cimflow.recsys.data import load_movielens_100k
    from cimflow.recsys.models import DLRM
    from cimflow.recsys.train import movielens_dlrm_config

    data = load_movielens_100k(seed=1)
    torch.manual_seed(0)
    model = DLRM(movielens_dlrm_config(data.table_sizes, 4, data.keys))
    test = data.test.subset(torch.arange(3000))
    assert evaluate_auc(model, test, batch_size=700) == roc_auc(test.labels, predict_logits(model, test))


@needs_recbole
@pytest.mark.slow
def test_full_training_reaches_the_target_auc(tmp_path: Path) -> None:
    _, metrics = train_movielens_dlrm(seed=0, cache=False)
    assert metrics.test_auc >= 0.78, metrics
