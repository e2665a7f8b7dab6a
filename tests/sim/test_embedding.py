"""Embedding tables in arrays: exact pooling on the ideal chip, active-row reads, hashed
per-row noise, huge tables described by shape."""

from __future__ import annotations

import math
import resource

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.errors import DataError
from cimflow.physics.hashing import hash_normal, hash_uniform
from cimflow.sim import CIMEmbeddingBag, HashedTable


class Bags(nn.Module):
    def __init__(self, rows=3000, dim=12, mode="sum", last=True):
        super().__init__()
        self.e = nn.EmbeddingBag(rows, dim, mode=mode, include_last_offset=last)

    def forward(self, v, o):
        return self.e(v, o)


@pytest.mark.parametrize("mode,last", [("sum", True), ("sum", False), ("mean", True)])
def test_in_array_pooling_equals_embedding_bag_on_ideal(mode, last):
    torch.manual_seed(0)
    model = Bags(mode=mode, last=last)
    v = torch.randint(0, 3000, (500,))
    o = torch.tensor([0, 1, 7, 7, 100, 420] + ([500] if last else []))
    cim = cimflow.program(cimflow.convert(model, "ideal"), 0)
    assert isinstance(cim.e, CIMEmbeddingBag)
    ref = model(v, o)
    assert torch.allclose(cim(v, o), ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-5)


def test_embedding_and_2d_bags():
    torch.manual_seed(1)
    emb = nn.Sequential(nn.Embedding(100, 8))
    x = torch.randint(0, 100, (4, 5))
    cim = cimflow.program(cimflow.convert(emb, "ideal"), 0)
    assert torch.allclose(cim(x), emb(x), atol=1e-5)
    bag = nn.Sequential(nn.EmbeddingBag(100, 8, mode="sum"))
    cimb = cimflow.program(cimflow.convert(bag, "ideal"), 0)
    assert torch.allclose(cimb(x), bag(x), atol=2e-4)  # 24-bit ADC over a 256-row range


def test_active_row_limit_splits_reads_per_array():
    chip = chip_with("ideal", **{"arrays.analog.rows": 64, "arrays.analog.max_active_rows": 8})
    model = Bags(rows=256, dim=4)
    cim = cimflow.program(cimflow.convert(model, chip), 0)
    cim.e.collect_stats = True
    # one bag: 20 rows in array 0 (rows 0..63), 3 rows in array 2 (rows 128..191)
    v = torch.tensor(list(range(20)) + [130, 140, 150])
    o = torch.tensor([0, 23])
    out = cim(v, o)
    assert cim.e.stats["reads"] == math.ceil(20 / 8) + 1
    assert torch.allclose(out, model(v, o), atol=1e-4)


def test_adc_range_tracks_the_active_row_limit():
    """A read of k rows is digitized over a range that grows with k (per_array_max: k cells)."""
    chip = chip_with("ideal", **{"arrays.analog.rows": 64, "arrays.analog.max_active_rows": 8, "arrays.analog.adc.bits": 4})
    cim = cimflow.program(cimflow.convert(Bags(rows=64, dim=4), chip), 0)
    assert cim.e.adc_range == 8.0
    chip16 = chip_with("ideal", **{"arrays.analog.rows": 64, "arrays.analog.max_active_rows": 16, "arrays.analog.adc.bits": 4})
    assert cimflow.program(cimflow.convert(Bags(rows=64, dim=4), chip16), 0).e.adc_range == 16.0


def test_hashed_noise_same_for_same_seed_and_row_independent_across_rows():
    rows = torch.arange(20000)
    a = hash_normal(rows, 7, "t", "program")
    b = hash_normal(rows, 7, "t", "program")
    c = hash_normal(rows, 8, "t", "program")
    assert torch.equal(a, b) and not torch.equal(a, c)
    n = rows.numel()
    assert abs(float(a.mean())) < 6 / math.sqrt(n)
    assert abs(float(a.std()) - 1) < 6 / math.sqrt(2 * n)
    lag1 = float((a[1:] * a[:-1]).mean())  # neighbouring rows uncorrelated
    assert abs(lag1) < 6 / math.sqrt(n)
    u = hash_uniform(rows, 7, "t", "u")
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / n)


def test_lazy_rows_equal_cached_rows():
    """The hash path a huge table uses gives the very values the cached path programs."""
    chip = chip_with("ideal", **{"arrays.analog.device.programming_noise": {"coefficients": [0.05]},
                                 "arrays.analog.device.drift": {"nu_mean": 0.05, "nu_std": 0.02}})
    torch.manual_seed(2)
    cim = cimflow.program(cimflow.convert(Bags(rows=500, dim=6), chip), 3)
    layer = cim.e
    idx = torch.tensor([0, 17, 499, 17])
    cached, _ = layer._rows_effective(idx)
    layer.w_cache = None  # force the lazy path
    lazy, _ = layer._rows_effective(idx)
    assert torch.allclose(cached, lazy)
    assert torch.equal(lazy[1], lazy[3])  # same row, same noise
    assert not torch.allclose(lazy[0], lazy[1])


def test_huge_table_described_by_shape_stays_small():
    table = HashedTable(100_000_000, 64, seed=0, scale=0.05, name="huge")
    chip = cimflow.load_chip("hybrid-rram-sram-28nm")
    layer = CIMEmbeddingBag(table, chip.array(chip.embedding_kind), chip.embedding_kind, name="huge")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    layer.program(0)
    assert layer.w_cache is None  # nothing programmed up front
    v = torch.randint(0, 100_000_000, (4096,), generator=torch.Generator().manual_seed(0))
    o = torch.arange(0, 4097, 32)
    out = layer(v, o)
    assert out.shape == (128, 64) and torch.isfinite(out).all()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1024, f"process grew by {grown_mb:.0f} MB"
    # the same rows read twice give the same pooled values but for read noise
    again = layer(v, o)
    assert float((again - out).abs().max()) < 0.1 * float(out.abs().max()) + 1e-6


def test_bad_indices_and_offsets():
    cim = cimflow.program(cimflow.convert(Bags(rows=10, dim=4), "ideal"), 0)
    with pytest.raises(DataError, match="index 10 is out of range; the table has 10 rows"):
        cim(torch.tensor([1, 10]), torch.tensor([0, 2]))
    with pytest.raises(DataError, match="offsets must start at 0"):
        cim(torch.tensor([1, 2]), torch.tensor([0, 2, 1]))
    with pytest.raises(DataError, match="index -1"):
        cim(torch.tensor([-1, 2]), torch.tensor([0, 2]))


def test_dlrm_shaped_model_compiles_and_tables_land_on_embedding_arrays():
    from cimflow.recsys.models import DLRM, DLRMConfig

    cfg = DLRMConfig(dense_features=4, table_sizes=(100, 50), embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1))
    model = DLRM(cfg)
    dense = torch.randn(3, 4)
    sparse = [(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2, 3])), (torch.tensor([4, 5, 6, 7]), torch.tensor([0, 2, 3, 4]))]
    chip = cimflow.load_chip("hybrid-rram-sram-28nm")
    plan = cimflow.compile(model, chip, (dense, sparse))
    embs = [o for o in plan.ops if o.op_type == "EmbeddingBag"]
    assert len(embs) == 2 and all(o.array_kind == chip.embedding_kind for o in embs)
    assert any(o.kind == "dynamic_matmul" and o.substrate == "digital_unit" for o in plan.ops)  # the dot interaction
    cim = cimflow.simulate(plan, model, seed=0)
    assert cim(dense, sparse).shape == (3,)
