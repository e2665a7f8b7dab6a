"""DLRM: shapes, dot interaction and sum pooling against hand computations, meta
construction of huge tables, fx tracing, config and input errors, a few training steps."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cimflow.errors import CimflowError, DataError
from cimflow.recsys.data import RecDataset
from cimflow.recsys.jagged import JaggedFeatures
from cimflow.recsys.models import (
    DLRM,
    DLRMConfig,
    DotInteraction,
    criteo_kaggle,
    fx_trace,
    mlperf_dlrm_v2,
)
from cimflow.recsys.train import TrainSettings, evaluate_logloss, train_dlrm

TINY = DLRMConfig(dense_features=3, table_sizes=[10, 20, 5], embedding_dim=4, bottom_mlp=[8, 4], top_mlp=[8, 1])
BAGS = [[[1, 2], [3], [], [9]], [[0], [19], [5, 6, 7], [4]], [[4], [0], [1], [2, 2]]]


def _inputs(config: DLRMConfig = TINY) -> tuple[torch.Tensor, JaggedFeatures]:
    torch.manual_seed(1)
    return torch.randn(4, config.dense_features), JaggedFeatures.from_lists(config.keys, BAGS)


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_forward_returns_one_logit_per_sample(interaction: str) -> None:
    config = TINY.replace(interaction=interaction, cross_layers=2, cross_rank=3 if interaction == "dcn" else None)
    torch.manual_seed(0)
    model = DLRM(config)
    dense, sparse = _inputs(config)
    logits = model(dense, sparse)
    assert logits.shape == (4,)
    assert torch.allclose(model.predict_proba(dense, sparse), torch.sigmoid(logits))
    assert model.top_mlp[0].in_features == config.top_input_dim


def test_dot_interaction_matches_hand_computation() -> None:
    torch.manual_seed(0)
    bottom = torch.randn(2, 3)
    embedded = [torch.randn(2, 3) for _ in range(3)]
    out = DotInteraction(4)(bottom, embedded)
    vectors = [bottom, *embedded]
    for b in range(2):
        expected = list(bottom[b])
        for i, j in itertools.combinations(range(4), 2):  # i < j, row-major
            expected.append(torch.dot(vectors[i][b], vectors[j][b]))
        assert torch.allclose(out[b], torch.stack(expected), atol=1e-6)


def test_embedding_bags_sum_rows_and_empty_bags_are_zero() -> None:
    torch.manual_seed(0)
    model = DLRM(TINY)
    _, sparse = _inputs()
    pooled = model.pooled_embeddings(sparse)
    for table, (bag, per_sample) in enumerate(zip(model.embeddings, BAGS, strict=True)):
        for sample, rows in enumerate(per_sample):
            manual = bag.weight[rows].sum(0) if rows else torch.zeros(TINY.embedding_dim)
            assert torch.allclose(pooled[table][sample], manual, atol=1e-6)


def test_model_composes_bottom_pooling_interaction_top() -> None:
    torch.manual_seed(0)
    model = DLRM(TINY)
    dense, sparse = _inputs()
    bottom = model.bottom_mlp(dense)
    manual_pooled = [
        torch.stack([bag.weight[r].sum(0) if r else torch.zeros(4) for r in rows])
        for bag, rows in zip(model.embeddings, BAGS, strict=True)
    ]
    expected = model.top_mlp(DotInteraction(4)(bottom, manual_pooled)).squeeze(1)
    assert torch.allclose(model(dense, sparse), expected, atol=1e-6)


def test_published_shapes() -> None:
    kaggle = criteo_kaggle()
    assert kaggle.top_input_dim == 367 and kaggle.total_rows == 33_762_577
    v2 = mlperf_dlrm_v2()
    assert v2.total_rows == 204_184_588 and v2.lookups_per_sample == 214 and v2.top_input_dim == 27 * 128
    assert abs(v2.embedding_bytes() / 2**30 - 97.36) < 0.01


def test_huge_tables_build_on_meta_and_propagate_shapes() -> None:
    config = mlperf_dlrm_v2().replace(table_sizes=(10**8,) + mlperf_dlrm_v2().table_sizes[1:])
    model = DLRM(config, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.embeddings[0].weight.shape == (10**8, 128)
    batch = 3
    dense = torch.empty(batch, 13, device="meta")
    pairs = [
        (torch.empty(batch * p, dtype=torch.int64, device="meta"), torch.empty(batch + 1, dtype=torch.int64, device="meta"))
        for p in config.pooling_factors
    ]
    assert model(dense, pairs).shape == (batch,)


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_fx_trace_matches_eager(interaction: str) -> None:
    torch.manual_seed(0)
    model = DLRM(TINY.replace(interaction=interaction))
    dense, sparse = _inputs()
    traced = fx_trace(model)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"embeddings.0", "embeddings.1", "embeddings.2"} <= targets
    assert torch.allclose(traced(dense, sparse.per_feature()), model(dense, sparse))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(CimflowError, match="bottom_mlp"):
        DLRMConfig(3, [10], 4, [8, 5], [1])
    with pytest.raises(CimflowError, match="top_mlp"):
        DLRMConfig(3, [10], 4, [4], [8, 2])
    with pytest.raises(CimflowError, match="interaction"):
        DLRMConfig(3, [10], 4, [4], [1], interaction="cat")  # type: ignore[arg-type]


def test_bad_inputs_raise_data_errors() -> None:
    model = DLRM(TINY)
    dense, sparse = _inputs()
    with pytest.raises(DataError, match="dense input"):
        model(dense[:, :2], sparse)
    with pytest.raises(DataError, match="batch"):
        model(dense[:3], sparse)
    bad = JaggedFeatures.from_lists(TINY.keys, [BAGS[0], BAGS[1], [[4], [0], [1], [5]]])
    with pytest.raises(DataError, match="cat_2"):
        model(dense, bad)


def test_a_few_training_steps_reduce_the_loss() -> None:
    # label = 1 exactly for even rows of table 0: learnable from the embeddings alone
    generator = torch.Generator().manual_seed(0)
    n = 1024
    indices = torch.stack([torch.randint(0, s, (n,), generator=generator) for s in TINY.table_sizes], 1)
    labels = (indices[:, 0] % 2 == 0).float()
    data = RecDataset(
        torch.randn(n, 3, generator=generator),
        JaggedFeatures.from_dense_indices(TINY.keys, indices),
        labels,
        list(TINY.table_sizes),
        ["d0", "d1", "d2"],
    )
    torch.manual_seed(0)
    model = DLRM(TINY)
    before = evaluate_logloss(model, data)
    train_dlrm(model, data, TrainSettings(epochs=5, batch_size=64, learning_rate=1e-2), max_steps=60)
    after = evaluate_logloss(model, data)
    assert after < 0.5 * before, (before, after)


def test_reset_parameters_after_to_empty() -> None:
    model = DLRM(TINY, device="meta").to_empty(device="cpu")
    model.reset_parameters()
    bound = (1 / 20) ** 0.5
    assert float(model.embeddings[1].weight.detach().abs().max()) <= bound
    assert torch.isfinite(model(*_inputs())).all()
    assert isinstance(model.bottom_mlp[0], nn.Linear)
