"""The fused CPU read of embedding tables (cimflow.sim.fused_table, sim/table_kernels.py)
against the torch path it replaces: without read noise the same pooled values up to one code
where float rounding meets an ADC decision boundary; with read noise the same per-output
mean and variance within the standard errors of the sample (lone and shared reads, reads
split at group_rows, drift compensation, cached and lazily hashed tables); the shared reads'
noise is the counter-based stream's; reproducible per seed; the read plan groups lookups by
bag and array as the torch path's sort does (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cimtest import chip_with
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
import cimflow.sim.embedding as embedding
from cimflow.sim import fused_read, pooling

pytestmark = pytest.mark.skipif(not fused_read.available(), reason="numba is not importable")

EMB = "rram_emb"


def table_layer(read_noise: float, rows: int, dim: int, seed: int = 0):
    torch.manual_seed(0)
    chip = chip_with("hybrid-rram-sram-28nm", **{f"arrays.{EMB}.device.read_noise": read_noise})
    return cimflow.program(cimflow.convert(nn.Sequential(nn.EmbeddingBag(rows, dim, mode="sum")), chip), seed=seed)[0]


def lookups(rows: int, n_bags: int, pooling_factor: int, seed: int = 1, long: int = 0, long_rows: torch.Tensor | None = None,
            beside: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags of uniform lookups, then ``long`` bags of 80 lookups in the first array (reads
    split at group_rows), drawn from ``long_rows`` when given (each bag then 65 = 2 x 32 + 1
    of them: a one-lookup read at the end of the array's) and followed by the rows ``beside``."""
    g = torch.Generator().manual_seed(seed)
    size = 80 if long_rows is None else 65
    pick = torch.randint(0, min(rows, 1024), (long, size), generator=g) if long_rows is None else \
        long_rows[torch.randint(0, long_rows.numel(), (long, size), generator=g)]
    tail = torch.tensor(beside, dtype=torch.int64).expand(long, len(beside))
    values = [torch.randint(0, rows, (n_bags * pooling_factor,), generator=g), torch.cat([pick, tail], dim=1).reshape(-1)]
    sizes = [pooling_factor] * n_bags + [size + len(beside)] * long
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)
    return torch.cat(values), offsets


def forward(layer, v, o, fused: bool, monkeypatch) -> torch.Tensor:
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1" if fused else "0")
    with torch.no_grad():
        return layer(v, o)


def code_value(layer) -> torch.Tensor:
    """The largest change one ADC code of one slice makes to a pooled output, per column."""
    steps = (1 << (layer.spec.analog_adc().bits - 1)) - 1
    return layer._significance.max() * layer.w_scale * layer.adc_range / steps


@pytest.mark.parametrize("lazy", [False, True])
def test_noise_free_read_equals_the_torch_path(monkeypatch, lazy):
    """No read noise: every output equal up to float rounding, except where the rows' sum in
    another order lands across an ADC decision boundary: there by at most one code, rarely."""
    if lazy:
        monkeypatch.setattr(embedding, "CACHE_CELLS", 0)
    layer = table_layer(0.0, 3000, 16)
    assert (layer.pool_cache is None) == lazy
    v, o = lookups(3000, 64, 12, long=3)
    if lazy:
        v = v.to(torch.int32)  # (int32 indices as nn.EmbeddingBag takes them)
    layer.collect_stats = True
    fused = forward(layer, v, o, True, monkeypatch)
    reads_fused = layer.stats["reads"]
    torch_path = forward(layer, v, o, False, monkeypatch)
    assert layer.stats["reads"] == 2 * reads_fused  # the same reads counted
    assert float(torch_path.abs().max()) > 0
    diff = (fused - torch_path).abs()
    short = diff[:64]  # bags of 12 uniform lookups: no read is split
    assert float((short <= 1e-5 * torch_path.abs().max()).float().mean()) >= 0.99
    assert bool((short <= 1.001 * code_value(layer) + 1e-6).all())
    # bags of 80 lookups in one array: three reads, whose lookups the two paths may split
    # differently; each read's codes are within half a code of its exact sum either way
    one_code = layer._significance.sum() * layer.w_scale * layer.adc_range / ((1 << (layer.spec.analog_adc().bits - 1)) - 1)
    assert bool((diff[64:] <= 3.001 * one_code + 1e-6).all())


@pytest.mark.parametrize("case", ["cached", "lazy", "compensated"])
def test_noisy_read_has_the_torch_paths_moments(monkeypatch, case):
    """Over repeated forwards the pooled outputs' per-output mean and variance agree with the
    torch path's within the sample's standard errors (the variance's from the fourth moment:
    quantized outputs are far from Gaussian). (Bags whose reads split at group_rows are left
    out: the two paths may split them differently, both valid orders of one bag's reads.)"""
    if case == "lazy":
        monkeypatch.setattr(embedding, "CACHE_CELLS", 0)
    layer = table_layer(0.08, 2000, 6)
    if case == "compensated":
        layer.set_compensation("per_column")
        layer.set_time(86400.0)
        assert layer.output_gain is not None
    v, o = lookups(2000, 24, 10)
    n = 400
    fused = torch.stack([forward(layer, v, o, True, monkeypatch) for _ in range(n)]).double()
    plain = torch.stack([forward(layer, v, o, False, monkeypatch) for _ in range(n)]).double()
    var_f, var_p = fused.var(0), plain.var(0)
    step = float(code_value(layer).max())
    assert float(var_p.sqrt().max()) > 0.1 * step  # the read noise is visible

    def var_se2(y: torch.Tensor) -> torch.Tensor:
        d = y - y.mean(0)
        return ((d**4).mean(0) - d.square().mean(0) ** 2) / n

    assert bool(((var_f - var_p).abs() <= 5 * (var_se2(fused) + var_se2(plain)).sqrt() + 1e-12).all())
    se_mean = ((var_f + var_p) / n).sqrt()
    assert bool(((fused.mean(0) - plain.mean(0)).abs() <= 5 * se_mean + 1e-6 * step).all())


def test_shared_reads_add_the_streams_normals():
    """Zero partial sums with unit variances read through one shared read: the codes are the
    counter-based stream's normals (draw 2 x draw, element r S dim + c), scaled and rounded."""
    from cimflow.sim import table_kernels

    s_count, dim, rows = 2, 5, 8
    values = np.zeros((rows, 2 * s_count * dim), np.float32)
    values[:, s_count * dim:] = 0.5  # two lookups per read: variance 1
    idx = np.array([0, 1, 2, 3, 4, 5], np.int64)  # three bags of two lookups, one array
    bags = np.array([0, 0, 1, 1, 2, 2], np.int64)
    perm, starts, first, read_bag, lone = table_kernels.plan(idx, bags, 1024, 1, 32, np.empty(0, np.float32))
    assert lone.shape[0] == 3 and bool((lone < 0).all())
    scale = 2.0**10
    out = np.zeros((3, dim), np.float32)
    weights = np.zeros((s_count, dim), np.float32)
    weights[0] = 1.0  # slice 0 only
    table_kernels.pool_bags(idx, perm, starts, first, read_bag, lone, idx, values, np.empty((0, 1), np.float32),
                            np.empty((0, 0, 6), np.float32), np.empty((0, 0), np.int64), np.full(s_count * dim, scale, np.float32),
                            scale, np.ones(s_count * dim, np.float32), 2.0**20, 100.0, weights, 1.0 / scale, np.uint64(77), np.uint64(4),
                            out, 1)
    z = fused_read.normals(77, 8, (3, s_count * dim))[:, :dim]
    # (numba's disk cache tracks only the defining file: after a change of the stream in
    # sim/read_kernels.py, a stale compiled table kernel fails here; touch sim/table_kernels.py)
    assert float((torch.from_numpy(out) - z).abs().max()) <= 0.5 / scale + 1e-6, "table kernel's stream differs (stale numba cache?)"


def test_fused_read_is_reproducible_per_seed(monkeypatch):
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    v, o = lookups(2000, 32, 10)
    with torch.no_grad():
        a = table_layer(0.08, 2000, 8, seed=3)
        first, second = a(v, o), a(v, o)
        again = table_layer(0.08, 2000, 8, seed=3)
        other = table_layer(0.08, 2000, 8, seed=4)
        assert torch.equal(again(v, o), first) and torch.equal(again(v, o), second)
        assert not torch.equal(first, second)  # each forward draws afresh
        a.program(3)  # programming again restarts the draws
        assert torch.equal(a(v, o), first)
        assert not torch.equal(other(v, o), first)



@pytest.mark.parametrize("include_last", [False, True])
@pytest.mark.parametrize("pooling_factor", [1, 2, 6])
def test_one_call_read_equals_flatten_then_pool(monkeypatch, include_last, pooling_factor):
    """A cached table's 1-D input in one kernel call (fused_table.pool_flat: parse, plan and
    read) gives the bits, the draws and the statistics of parsing then pooling (the path every
    other input takes), for one lookup per bag (DLRM's common case) and for shared reads."""
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    one, two = table_layer(0.08, 3000, 8, seed=5), table_layer(0.08, 3000, 8, seed=5)
    # long bags of rows read alone from the outcome table (gate <= 1): one array's 65 of them
    # (its last a one-lookup read of the plan's) and one in each other array (lone reads
    # before any plan): three sums of one bag whose order every read must agree on
    gate = one._single_reads().gate
    alone = torch.nonzero(gate <= 1.0).squeeze(1)
    v, o = lookups(3000, 64, pooling_factor, long=2, long_rows=alone[alone < 1024],
                   beside=(int(alone[(alone >= 1024) & (alone < 2048)][0]), int(alone[alone >= 2048][0])))
    if include_last:
        o = torch.cat([o, torch.tensor([v.numel()])])
    for layer in (one, two):
        layer.include_last_offset = include_last
        layer.collect_stats = True
    with torch.no_grad():
        for _ in range(2):  # the second forward: the next draw on both
            fast = one(v, o)
            idx, bags, n_bags = two._flatten(v, o)
            slow = two._pool(idx, bags, n_bags)
            assert torch.equal(fast, slow)
    assert one._read_draw == two._read_draw == 2
    assert one.stats == two.stats and one.stats["reads"] > 0
    # not valid: no draw taken, and the general path names what is wrong
    with pytest.raises(cimflow.errors.DataError, match="out of range"):
        one(torch.cat([v[:-1], torch.tensor([3000])]), o)
    assert one._read_draw == 2


def test_prepared_read_is_the_general_reads_while_the_state_holds(monkeypatch):
    """After one read, a cached table's later reads (no gradient) take fused_table.read_prepared
    (pool_flat's last arguments, kept with the table's state): the same values and draws as
    flattening then pooling. Any change of that state makes the next read the general one
    again: another time, another programming, a state tensor written in place, statistics on,
    the fused read turned off."""
    from cimflow.sim import fused_table

    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    one, two = table_layer(0.08, 3000, 8, seed=5), table_layer(0.08, 3000, 8, seed=5)
    v, o = lookups(3000, 64, 2)
    taken: list[bool] = []
    real = fused_table.read_prepared
    monkeypatch.setattr(fused_table, "read_prepared", lambda *a: (lambda r: taken.append(r is not None) or r)(real(*a)))

    def read_both() -> None:
        with torch.no_grad():
            fast = one(v, o)
            idx, bags, n_bags = two._flatten(v, o)
            assert torch.equal(fast, two._pool(idx, bags, n_bags))

    read_both()
    read_both()
    assert taken == [False, True]
    for change in (lambda t: t.set_time(86400.0), lambda t: t.program(7), lambda t: t.w_scale.mul_(1.0)):
        change(one)
        change(two)
        read_both()
        read_both()
        assert taken[-2:] == [False, True]
    assert one._read_draw == two._read_draw == 4  # (programming restarted the draws: 2 reads then, 2 since)
    one.collect_stats = True
    with torch.no_grad():
        one(v, o)
    assert taken[-1] is False and one.stats["lookups"] == v.numel()
    one.collect_stats = False
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "0")
    with torch.no_grad():
        one(v, o)
    assert taken[-1] is False


@pytest.mark.parametrize("case", ["kept", "store_full", "hashed"])
@pytest.mark.parametrize("pooling_factor", [1, 2, 6])
def test_one_call_read_of_a_lazy_table_equals_flatten_then_pool(monkeypatch, case, pooling_factor):
    """A lazy table's 1-D input through fused_table.pool_flat gives the bits, the draws and the
    read counts of parsing then pooling (fused_table.pool) batch after batch: rows first read
    alone built on the way (a small first block built at once: most rows are not), shared
    reads' rows kept once hashed, or hashed on every read (the store full; no outcome table).
    Once every row read is built and kept, the read is one kernel call: no Python between."""
    from cimflow.sim import fused_table

    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    monkeypatch.setattr(embedding, "CACHE_CELLS", 0)
    monkeypatch.setattr(pooling, "BUILD_ROWS", 256)
    if case == "store_full":
        monkeypatch.setattr(pooling, "STORED_VALUES", 2000)  # ~60 rows
    if case == "hashed":
        monkeypatch.setattr(pooling, "SINGLE_READ_ENTRIES", 0)
    made = []
    missing_rows = fused_table._missing_rows
    monkeypatch.setattr(fused_table, "_missing_rows", lambda table, *a: made.append(table) or missing_rows(table, *a))
    one, two = table_layer(0.08, 3000, 8, seed=5), table_layer(0.08, 3000, 8, seed=5)
    assert one.pool_cache is None
    two.collect_stats = True
    with torch.no_grad():
        for batch, seed in enumerate((1, 2, 1)):  # rows not seen, more, then rows seen
            v, o = lookups(3000, 64, pooling_factor, seed=seed, long=2 if pooling_factor > 1 else 0)
            reads = two.stats["reads"]
            made.clear()
            fast = fused_table.pool_flat(one, v, o, one._single_reads(), embedding.NOISE_TAIL)
            assert fast is not None
            idx, bags, n_bags = two._flatten(v, o)
            slow = two._pool(idx, bags, n_bags)
            assert torch.equal(fast[0], slow)
            assert fast[1] == two.stats["reads"] - reads
            if batch < 2:
                assert one in made
            elif case != "store_full" or pooling_factor > 1:  # (one lookup per bag: shared reads only where rows overflow)
                assert (one in made) == (case != "kept")
    assert one._read_draw == two._read_draw == 3
    singles = pooling.table_of(one)
    assert (singles is None) == (case == "hashed")
    if singles is not None:
        assert singles.known is not None and not bool(singles.known.all())  # (rows built as read)
        if pooling_factor > 1:  # shared reads' rows kept, or none (the store too small for the first batch's)
            assert (singles.kept() is not None) == (case == "kept")


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.lists(st.integers(0, 40), min_size=1, max_size=30), st.lists(st.integers(0, 1), min_size=1, max_size=30)),
       st.integers(0, 10_000), st.sampled_from([1, 2, 3, 8]), st.sampled_from([4, 7, 16]))
def test_plan_groups_lookups_into_the_torch_paths_reads(bag_sizes, seed, group_rows, array_rows):
    """Every lookup in exactly one read; a read's lookups share one bag and one array, at most
    group_rows of them; as many reads as the torch path's sort makes; lone reads are the
    one-lookup reads of rows whose gate is at most 1, with that gate (bags of at most one
    lookup each take a plan of their own: drawn half the time); lone_bags then the plan of the
    lookups it leaves make the same reads, lone_bags's the lone reads of lookups alone in
    their array within their bag (their rows' values summed into their bags)."""
    from cimflow.sim import table_kernels

    rows = 50
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, rows, (sum(bag_sizes),), generator=g)
    bags = torch.repeat_interleave(torch.arange(len(bag_sizes)), torch.tensor(bag_sizes))
    gate = torch.rand(rows, generator=g) * 2.2
    n_arrays = rows // array_rows + 1
    perm, starts, first, read_bag, lone = table_kernels.plan(idx.numpy(), bags.numpy(), array_rows, n_arrays, group_rows,
                                                             gate.numpy())
    assert sorted(perm.tolist()) == list(range(idx.numel()))
    assert starts[0] == 0 and starts[-1] == idx.numel() and bool((np.diff(starts) > 0).all())
    assert np.array_equal(first, perm[starts[:-1]])
    for r in range(lone.shape[0]):
        members = perm[starts[r]:starts[r + 1]]
        assert len(members) <= group_rows
        assert set(bags[members].tolist()) == {read_bag[r]}
        assert len(set((idx[members] // array_rows).tolist())) == 1
        is_lone = len(members) == 1 and float(gate[idx[members[0]]]) <= 1.0
        assert lone[r] == (float(gate[idx[members[0]]]) if is_lone else -2.0)
    _, read_starts, _ = pooling.group_reads(idx, bags, array_rows, n_arrays, group_rows)
    assert lone.shape[0] == read_starts.numel()
    # lone_bags then the plan of the lookups it leaves: the same reads, each lone read of a
    # lookup alone in its array within its bag taken before the plan
    out = np.zeros((len(bag_sizes), 2), np.float32)
    base = np.ones((rows, 2), np.float32)
    no_slots, no_cells = np.empty((0, 0, 6), np.float32), np.empty((0, 0), np.int64)
    lone_reads, missing, p2, s2, f2, b2, l2, _ = table_kernels.lone_then_plan(
        idx.numpy(), bags.numpy(), array_rows, n_arrays, group_rows, gate.numpy(), np.empty(0, np.int64), np.empty((0, 1), np.float32),
        base, no_slots, no_cells, np.uint64(1), np.uint64(0), out)
    reads = sorted((int(read_bag[r]), sorted(perm[starts[r]:starts[r + 1]].tolist()), float(lone[r])) for r in range(lone.shape[0]))
    left = [(int(b2[r]), sorted(p2[s2[r]:s2[r + 1]].tolist()), float(l2[r])) for r in range(l2.shape[0])]
    read_first = [read for read in reads if read not in left]
    assert len(read_first) == lone_reads and sorted(left + read_first) == reads
    assert all(len(m) == 1 and 0.0 <= g <= 1.0 for _, m, g in read_first)
    assert np.array_equal(out.sum(1), 2.0 * np.bincount([b for b, _, _ in read_first], minlength=len(bag_sizes)))


@settings(max_examples=120, deadline=None)
@given(st.lists(st.integers(-2, 6), min_size=1, max_size=12), st.booleans(), st.integers(0, 8), st.booleans(),
       st.integers(0, 10_000), st.sampled_from([torch.int64, torch.int32]))
def test_bag_extents_parse_as_the_torch_ops(sizes, as_sizes, extra, include_last, seed, dtype):
    """A 1-D input cut by offsets (valid or not, indices in range or not): the compiled pass
    gives the same lookups, bags, sizes and flags as the torch operations, or the same error."""
    from cimflow.errors import DataError
    from cimflow.sim import read_groups

    if as_sizes:  # offsets from bag sizes (valid unless a size is negative), a few spare indices after
        offs = torch.tensor([0] + sizes).cumsum(0)[: len(sizes) + int(include_last)]
        n_values = max(0, int(offs[-1])) + extra
    else:  # anything
        offs, n_values = torch.tensor(sizes), extra * 3
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 40, (n_values,), generator=g)
    if n_values and seed % 3 == 0:  # an index out of range, maybe in the unused tail
        values[seed % n_values] = 40 if seed % 2 else -1
    values = values.to(dtype)
    outcomes = []
    for fused in ("1", "0"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CIMFLOW_FUSED_READ", fused)
            outcomes.append(_parse(read_groups, values, offs, include_last, DataError))
    assert outcomes[0] == outcomes[1]


def _parse(read_groups, values, offs, include_last, error):
    try:
        flat = read_groups.flatten_bags(values, offs, True, include_last, 40, "t")
        return flat.idx.tolist(), flat.bags.tolist(), flat.n_bags, flat.one_per_bag, flat.per_bag.tolist()
    except error as err:
        return str(err)



@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("pooling_factor", [1, 3, 20])
def test_a_read_at_two_threads_is_the_read_at_one(monkeypatch, lazy, pooling_factor):
    """At several torch threads the lone and the shared reads run in runs of whole bags on
    numba's threads (table_kernels.lone_bags_threads, pool_bags_threads): the bits of one
    thread, cached or lazy table, one-hot bags or bags sharing arrays."""
    from cimflow.sim import table_kernels

    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    if lazy:
        monkeypatch.setattr(embedding, "CACHE_CELLS", 0)
    runs = []
    threads = torch.get_num_threads()
    outs = []
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            layer = table_layer(0.01, 20_000, 16, seed=3)
            with torch.no_grad():
                # (uneven bags: the middle of the lookups falls inside one; a lazy table builds, then reads)
                got = [layer(*lookups(20_000, 301, pooling_factor, seed=s, long=3)) for s in (1, 2, 1)]
            outs.append(got)
            runs.append(table_kernels.threads_for(n_threads))
    finally:
        torch.set_num_threads(threads)
    import numba

    assert runs[0] == 1
    if numba.threading_layer() in ("omp", "tbb") and numba.config.NUMBA_NUM_THREADS > 1:
        assert runs[1] == 2  # (the threaded runs took part)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("parts", [1, 2])
def test_a_lone_read_moves_exactly_when_its_first_uniform_falls_below_its_gate(monkeypatch, parts):
    """One-lookup bags (every read alone in its array): a read's value leaves its row's
    noise-free value exactly where the stream's first uniform of the lookup (element i (M +
    1) of draw 2 draw + 1) falls below the row's gate, P(some draw moves a code), whatever the
    gate (rows of small and of zero gate among them); at 1 and 2 threads."""
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(parts)
    try:
        layer = table_layer(0.02, 2000, 6, seed=3)
        rows = torch.arange(2000).repeat(20)[torch.randperm(40_000, generator=torch.Generator().manual_seed(4))]
        offsets = torch.arange(rows.numel())
        with torch.no_grad():
            layer(rows[:10], offsets[:10])  # (the outcome table made)
            singles = layer._single_reads()
            assert singles is not None and singles.slots is not None
            gate, base = singles.gate[rows], singles.base[rows]
            draw = layer._read_draw
            out = layer(rows, offsets)
    finally:
        torch.set_num_threads(threads)
    m = singles.slots.shape[1]
    first = fused_read.uniforms(layer._read_key, 2 * draw + 1, (rows.numel() * (m + 1),))[:: m + 1]
    moved = first < gate
    assert bool((gate <= 1).all()) and bool((gate == 0).any())  # all alone; rows whose noise never moves a code
    assert int((moved & (gate < 0.05)).sum()) >= 20 and int(moved.sum()) < rows.numel() // 2
    assert torch.equal((out != base).any(1), moved)


@pytest.mark.parametrize("noisy", [True, False])
def test_shared_reads_in_runs_of_bags_are_the_reads_in_one(noisy):
    """pool_bags's shared reads in 2, 3 or 7 runs of whole bags, each numbering its shared
    reads from those of the runs before it (the same draw per read): the bits of one run,
    serial kernel and threaded twin; bags of uneven sizes, lone reads among the shared ones,
    several passes of partial sums per run."""
    from cimflow.sim import table_kernels

    rng = np.random.default_rng(5)
    s_count, dim, rows, array_rows = 2, 8, 4096, 256
    sizes = rng.integers(1, 40, 400)  # (one-lookup bags: lone reads between the shared ones)
    bags = np.repeat(np.arange(sizes.shape[0]), sizes).astype(np.int64)
    idx = rng.integers(0, rows, bags.shape[0]).astype(np.int64)
    gate = rng.uniform(0.0, 0.5, rows).astype(np.float32)
    perm, starts, first, read_bag, lone = table_kernels.plan(idx, bags, array_rows, rows // array_rows, 32, gate)
    shared = int((lone < 0).sum())
    assert shared > 2 * table_kernels._PASS_VALUES // (s_count * dim) and int((lone >= 0).sum()) > 0
    sd = s_count * dim
    values = rng.normal(0.0, 3.0, (rows, 2 * sd if noisy else sd)).astype(np.float32)
    if noisy:
        values[:, sd:] = np.abs(values[:, sd:])
    base = rng.normal(0.0, 1.0, (rows, dim)).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, (s_count, dim)).astype(np.float32)
    readout = (np.full(sd, 0.7, np.float32), 1.3, np.ones(sd, np.float32), 127.0, 4.0, weights, 0.01, np.uint64(9), np.uint64(3))

    def read(kernel, parts):
        out = np.zeros((sizes.shape[0], dim), np.float32)
        kernel(idx, perm, starts, first, read_bag, lone, idx, values, base, np.empty((0, 0, 6), np.float32),
               np.empty((0, 0), np.int64), *readout, out, parts)
        return out

    one = read(table_kernels.pool_bags, 1)
    assert np.abs(one).sum() > 0
    for parts in (2, 3, 7):
        assert np.array_equal(read(table_kernels.pool_bags, parts), one), parts
    assert np.array_equal(read(table_kernels.pool_bags_threads, 2), one)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=60), st.integers(1, 9))
def test_runs_of_bags_cover_the_lookups_at_bag_starts(sizes, parts):
    from cimflow.sim import table_kernels

    bags = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    bounds = table_kernels._part_bounds(bags, parts)
    n = bags.shape[0]
    assert bounds[0] == 0 and bounds[-1] == n and 2 <= bounds.shape[0] <= parts + 1
    assert bool((np.diff(bounds) > 0).all())
    starts = set(np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist())
    assert all(int(b) in starts for b in bounds[:-1])  # every run begins a bag
    if parts <= len(sizes) and max(sizes) == min(sizes):  # equal bags: as many runs as asked
        assert bounds.shape[0] == parts + 1
