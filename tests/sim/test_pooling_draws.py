"""The cheap forms of the embedding pooling path (sim/pooling.py) keep the exact law: lone
reads' cell draws sampled in two stages have the joint law of independent uniforms, rows of
shared reads kept by a lazy table equal the hash's, and the hashed test of lone lookups
agrees with counting when many more (bag, array) keys than lookups exist."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with, random_lookups
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
import cimflow.sim.embedding as embedding
from cimflow.sim import pooling

EMB = "rram_emb"


def table_layer(read_noise: float, rows: int, dim: int):
    torch.manual_seed(0)
    chip = chip_with("hybrid-rram-sram-28nm", **{f"arrays.{EMB}.device.read_noise": read_noise})
    return cimflow.program(cimflow.convert(nn.Sequential(nn.EmbeddingBag(rows, dim, mode="sum")), chip), seed=0)[0]


def moving(draws: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each draw lies in its cell's moving intervals (0, up) or (1 - down, 1), and in the upper one."""
    moved_up = (draws > 0) & (draws < up)
    return moved_up | ((draws > 1 - down) & (draws < 1)), moved_up


@pytest.mark.parametrize("read_noise", [0.03, 0.15])
def test_two_stage_draws_have_the_law_of_independent_uniforms(monkeypatch, read_noise):
    """For rows with several noise-sensitive cells: one uniform per lookup against P(any cell
    moves), then the first moving cell and the rest, give every cell's move with probability
    ``moves`` (up with ``moves_up``) and two cells' moves independently (joint = product), as
    independent uniform draws per cell would; within binomial sampling error (5 sigma)."""
    monkeypatch.setattr(pooling, "SLOT_QUANTILE", 1.0)
    monkeypatch.setattr(pooling, "MAX_SLOTS", 64)
    layer = table_layer(read_noise, rows=400, dim=6)
    with torch.no_grad():
        layer(torch.arange(400), torch.arange(400))
    table = pooling.table_of(layer)
    assert table is not None and table.moves is not None and table.moves_up is not None and table.any_move is not None
    # P(any) is the closed form 1 - prod(1 - moves)
    assert torch.allclose(table.any_move.double(), 1 - torch.prod(1 - table.moves.double(), 1), atol=1e-6)
    movers = (table.moves > 0.02).sum(1)
    row = int(torch.argmax(movers * 10 + (table.moves > 0).sum(1)))  # a row with several likely moves
    assert int(movers[row]) >= 2
    n = 200_000
    gen = torch.Generator().manual_seed(3)
    idx = torch.full((n,), row)
    u0 = torch.rand(n, generator=gen)
    moved = u0 < table.any_move[idx]
    which = moved.nonzero().squeeze(1)
    draws = torch.full((n, table.draws), 2.0)
    draws[which] = pooling._moving_draws(table.slots[idx[which]], u0[which], None, gen)
    p, p_up = table.moves[row].double(), table.moves_up[row].double()
    got, got_up = moving(draws, table.moves_up[row], table.moves[row] - table.moves_up[row])
    freq, freq_up = got.double().mean(0), got_up.double().mean(0)
    tol = 5 * (p * (1 - p) / n).sqrt() + 1e-9
    assert bool(((freq - p).abs() <= tol).all()), (freq, p)
    assert bool(((freq_up - p_up).abs() <= 5 * (p_up * (1 - p_up) / n).sqrt() + 1e-9).all())
    likely = (p > 0.02).nonzero().squeeze(1).tolist()
    for a in likely:
        for b in likely:
            if a < b:
                joint, expect = float((got[:, a] & got[:, b]).double().mean()), float(p[a] * p[b])
                assert abs(joint - expect) <= 5 * math.sqrt(expect * (1 - expect) / n) + 1e-9
    # no cell moves exactly when u0 passes the row's P(any)
    assert torch.equal(got.any(1), moved)


def test_lazy_table_keeps_shared_rows_as_hashed(monkeypatch):
    """No read noise (deterministic codes): a lazy table pools the same values whether the rows
    of its shared reads come from its store, are hashed on every read (store full), or the
    table is cached; the store holds exactly the rows of the shared reads, hashed once."""
    layer = table_layer(0.0, rows=3000, dim=7)
    g = torch.Generator().manual_seed(1)
    v, o = torch.randint(0, 3000, (40 * 12,), generator=g), torch.arange(0, 40 * 12, 12)
    with torch.no_grad():
        cached = layer(v, o)
    monkeypatch.setattr(embedding, "CACHE_CELLS", 1000)
    layer.program(0)
    assert layer.pool_cache is None
    with torch.no_grad():
        stored = layer(v, o)
        table = pooling.table_of(layer)
        assert table is not None and table._stored_count > 0
        kept = (table._slot_of >= 0).nonzero().squeeze(1)
        w, var = layer._effective_rows(kept)
        assert torch.equal(table._store[table._slot_of[kept]], w if var is None else torch.cat([w, var], 1))
        again = layer(v, o)
        monkeypatch.setattr(pooling, "STORED_VALUES", 0)
        layer.program(0)
        hashed = layer(v, o)
        assert pooling.table_of(layer)._stored_count == 0
    scale = 1e-5 * float(cached.abs().max())
    for out in (stored, again, hashed):
        assert torch.allclose(out, cached, atol=scale, rtol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 8]))
def test_hashed_alone_test_matches_counting(per_bag_list, seed, array_rows):
    """Tables with many arrays (more (bag, array) keys than 8 per lookup: the hashed test):
    a lookup is alone iff no other lookup of its bag falls in its array."""
    g = torch.Generator().manual_seed(seed)
    rows = 5000
    per_bag = torch.tensor(per_bag_list)
    bags_ = torch.repeat_interleave(torch.arange(per_bag.numel()), per_bag)
    idx = torch.randint(0, 60, (bags_.numel(),), generator=g) * (rows // 60)  # some lookups share arrays
    n_arrays = -(-rows // array_rows)
    got = pooling.alone_in_read(idx, bags_, per_bag, array_rows, n_arrays, 32)
    pairs = list(zip(bags_.tolist(), (idx // array_rows).tolist(), strict=True))
    assert got.tolist() == [pairs.count(p) == 1 for p in pairs]


@pytest.mark.parametrize("sampler", ["one_per_draw", "two_stage", "two_stage_no_sync"])
def test_lone_read_samplers_have_the_closed_form_law(monkeypatch, sampler):
    """Every way of drawing lone reads' codes (one uniform per cell draw for small batches, two
    stages with the moving lookups gathered as on a CPU, or masked without a host sync as on a
    GPU): per output, the mean and variance over forwards equal the closed form of
    round(x + sigma z) clamped, slices weighted by significance, within sampling error."""
    monkeypatch.setattr(pooling, "SLOT_QUANTILE", 1.0)
    monkeypatch.setattr(pooling, "MAX_SLOTS", 64)
    monkeypatch.setattr(pooling, "DENSE_DRAWS", 1 << 40 if sampler == "one_per_draw" else 0)
    if sampler == "two_stage_no_sync":
        monkeypatch.setattr(pooling, "COMPACT_DEVICES", ())
    layer = table_layer(0.06, rows=300, dim=4)
    v, o = torch.arange(300), torch.arange(300)
    n = 600
    with torch.no_grad():
        out = torch.stack([layer(v, o) for _ in range(n)]).double()
    steps = (1 << (layer.spec.analog_adc().bits - 1)) - 1
    k = steps / layer.adc_range
    x, sigma = layer.w_cache.double() * k, layer.var_cache.double().sqrt().clamp_min(1e-30) * k  # (rows, S, dim)
    m = torch.arange(-steps - 3, steps + 4, dtype=torch.float64).view(-1, 1, 1, 1)
    cdf = torch.special.ndtr
    p = cdf((m + 0.5 - x) / sigma) - cdf((m - 0.5 - x) / sigma)
    code = m.clamp(-steps, steps)
    mean_code = (code * p).sum(0)
    unit = layer._significance.double().view(1, -1, 1) * layer.w_scale.double() / k
    mean = (mean_code * unit).sum(1)
    var = (((code - mean_code).square() * p).sum(0) * unit.square()).sum(1)
    assert float(var.max()) > 0.01 * float(unit.max()) ** 2  # the noise is visible
    jump = unit.amax(1)
    err = (out.mean(0) - mean).abs()
    assert bool((err <= 5 * var.sqrt() / math.sqrt(n) + 3 * jump / n + 1e-6 * float(unit.max())).all())
    common = var >= 10 * jump.square() / n  # outputs with enough code changes for a normal mean
    assert int(common.sum()) >= 20
    z2 = (out.mean(0) - mean).square() / (var / n)
    assert float(z2[common].mean()) <= 1 + 6 * math.sqrt(2 / int(common.sum()))
    rel = (out.var(0)[common] / var[common]).mean()
    assert abs(float(rel) - 1) <= 6 * math.sqrt(2 / n / int(common.sum())) + 0.05


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=12), st.integers(0, 2**31 - 1), st.sampled_from([1, 4, 16]),
       st.integers(1, 5))
def test_reads_group_lookups_by_bag_and_array(per_bag_list, seed, array_rows, group_rows):
    """Every read is a run of lookups of one (bag, array), at most ``group_rows`` long; each
    (bag, array) with c lookups takes ceil(c / group_rows) reads; reads come in bag order, the
    lookups are a permutation of the input's and each read's bag is its lookups' bag."""
    assume(sum(per_bag_list) > 0)  # (an empty forward returns before grouping)
    rows = 40
    per_bag, bags_, idx = random_lookups(per_bag_list, seed, rows)
    n_arrays = -(-rows // array_rows)
    idx_s, starts, read_bags = pooling.group_reads(idx, bags_, array_rows, n_arrays, group_rows)
    assert sorted(idx_s.tolist()) == sorted(idx.tolist())
    ends = starts[1:].tolist() + [idx_s.numel()]
    pairs_in = sorted(zip(bags_.tolist(), (idx // array_rows).tolist(), idx.tolist(), strict=True))
    pairs_out = []
    reads_of: dict[tuple[int, int], int] = {}
    for a, b, bag in zip(starts.tolist(), ends, read_bags.tolist(), strict=True):
        lookups = idx_s[a:b].tolist()
        assert 1 <= len(lookups) <= group_rows
        arrays = {r // array_rows for r in lookups}
        assert len(arrays) == 1
        reads_of[(bag, arrays.pop())] = reads_of.get((bag, lookups[0] // array_rows), 0) + 1
        pairs_out += [(bag, r // array_rows, r) for r in lookups]
    assert sorted(pairs_out) == pairs_in  # each lookup read with its own bag
    assert read_bags.tolist() == sorted(read_bags.tolist())
    count: dict[tuple[int, int], int] = {}
    for bag, array, _ in pairs_in:
        count[(bag, array)] = count.get((bag, array), 0) + 1
    assert reads_of == {key: -(-c // group_rows) for key, c in count.items()}
