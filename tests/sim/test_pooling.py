"""Single-row reads from the outcome table (sim/pooling.py) keep the statistics of the exact
read path: the closed-form code distribution of a lone row, the exact path's values without
read noise, its moments with read noise (compensated and drifted too), slot overflow."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with, random_lookups
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
import cimflow.sim.embedding as embedding
from cimflow.sim import pooling

EMB = "rram_emb"


def noisy_chip(read_noise: float):
    return chip_with("hybrid-rram-sram-28nm", **{f"arrays.{EMB}.device.read_noise": read_noise})


def table_layer(chip, rows: int, dim: int, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.EmbeddingBag(rows, dim, mode="sum"))
    return cimflow.program(cimflow.convert(model, chip), seed=0)[0]


def bags(rows: int, n_bags: int, pooling_factor: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, rows, (n_bags * pooling_factor,), generator=g), torch.arange(0, n_bags * pooling_factor, pooling_factor)


def draws(layer, v, o, n: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([layer(v, o) for _ in range(n)])


@pytest.mark.parametrize("read_noise", [0.02, 0.15])
def test_lone_rows_have_the_closed_form_code_distribution(monkeypatch, read_noise):
    """Bags of one row each: every read is single, served from the outcome table (the exact
    converter is never called). Per output, mean and spread over forwards equal the closed
    form: each cell's code is round(x + sigma z) clamped to the ADC's codes, P(code = m) =
    Phi((m + 1/2 - x) / sigma) - Phi((m - 1/2 - x) / sigma), slices weighted by significance.
    At 15 % read noise the noise reaches past one code step (several steps per cell)."""
    monkeypatch.setattr(pooling, "SLOT_QUANTILE", 1.0)  # every row's steps in the slots
    monkeypatch.setattr(pooling, "MAX_SLOTS", 64)
    layer = table_layer(noisy_chip(read_noise), rows=300, dim=4)
    monkeypatch.setattr(layer, "_convert", lambda *a: pytest.fail("the exact converter ran for single reads"))
    v, o = torch.arange(300), torch.arange(300)
    n = 400
    out = draws(layer, v, o, n)
    steps = (1 << (layer.spec.analog_adc().bits - 1)) - 1
    k = steps / layer.adc_range
    x = layer.w_cache.double() * k  # (rows, S, dim) in ADC steps
    sigma = layer.var_cache.double().sqrt() * k
    m = torch.arange(-steps - 3, steps + 4, dtype=torch.float64).view(-1, 1, 1, 1)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    s = sigma.clamp_min(1e-30)
    p = normal.cdf((m + 0.5 - x) / s) - normal.cdf((m - 0.5 - x) / s)
    code = m.clamp(-steps, steps)
    mean_code = (code * p).sum(0)
    var_code = ((code - mean_code).square() * p).sum(0)
    mu4_code = ((code - mean_code).pow(4) * p).sum(0)
    unit = layer._significance.double().view(1, -1, 1) * layer.w_scale.double() / k  # value of one code
    mean = (mean_code * unit).sum(1)
    var_s = var_code * unit.square()  # (rows, S, dim): slices are independent
    var = var_s.sum(1)
    mu4 = (mu4_code * unit.pow(4)).sum(1) + 3 * (var.square() - var_s.square().sum(1))  # 4th central moment of the sum
    assert float(var.max()) > 0.01 * float(unit.max()) ** 2  # the noise is visible
    floor = 1e-6 * float(unit.max())
    err = (out.double().mean(0) - mean).abs()
    # 5 standard errors, plus three one-step jumps (a rare code change, p << 1/n, seen a few
    # times moves the sample mean by its size / n where the normal approximation fails)
    jump = unit.amax(1)
    assert bool((err <= 5 * var.sqrt() / math.sqrt(n) + 3 * jump / n + floor).all())
    # all outputs together (those expecting >= 10 code changes, where the mean is near
    # normal): the mean squared z-score is 1 within its spread sqrt(2 / outputs); a bias of
    # the step probabilities by a tenth shows here long before it shows in one output
    common = var >= 10 * jump.square() / n
    z2 = (out.double().mean(0) - mean).square() / (var / n)
    assert int(common.sum()) >= (50 if read_noise > 0.1 else 0)
    if bool(common.any()):
        assert float(z2[common].mean()) <= 1 + 6 * math.sqrt(2 / int(common.sum()))
    # sample variance: its standard error is sqrt((mu4 - var^2) / n)
    sample_var = out.double().var(0)
    tol = 5 * ((mu4 - var.square()).clamp_min(0) / n).sqrt() + 3 * jump.square() / n + 2 * var / n
    assert bool(((sample_var - var).abs() <= tol).all())
    if read_noise > 0.1:
        assert pooling.table_of(layer).cell_of is not None  # cells with several reachable steps


@pytest.mark.parametrize("cached", [True, False])
def test_fast_and_exact_paths_pool_the_same_values_without_read_noise(monkeypatch, cached):
    """No read noise: every code is deterministic, so pooling with the outcome table (lone rows)
    and the exact path (every read) give the same values, for cached tables and for tables
    read lazily through the hash (the outcome table is then built from the hash)."""
    if not cached:
        monkeypatch.setattr(embedding, "CACHE_CELLS", 1000)
    layer = table_layer(noisy_chip(0.0), rows=3000, dim=7)
    layer.collect_stats = True
    v, o = bags(3000, n_bags=40, pooling_factor=12)
    fast = draws(layer, v, o, 1)[0]
    alone_reads = layer.stats["reads"]
    monkeypatch.setattr(pooling, "SINGLE_READ_ENTRIES", 0)
    exact = draws(layer, v, o, 1)[0]
    assert pooling.table_of(layer).slots is None
    assert torch.allclose(fast, exact, atol=1e-5 * float(exact.abs().max()), rtol=0)
    assert 0 < alone_reads < layer.stats["reads"]  # some lookups were read alone, some shared a read


@pytest.mark.parametrize("case", ["plain", "drifted_compensated", "overflow", "lazy"])
def test_fast_and_exact_paths_have_the_same_moments(monkeypatch, case):
    """With read noise, the pooled outputs over repeated forwards: mean and spread per output
    with lone rows from the outcome table equal those of the exact path; also after a day of
    drift with per-column compensation (the gain enters the codes), when rows have more
    noise-sensitive steps than the slots hold (those rows then take the exact path), and for
    an uncached table whose outcomes are hashed row by row as rows are first read."""
    if case == "overflow":
        monkeypatch.setattr(pooling, "MAX_SLOTS", 1)
    if case == "lazy":
        monkeypatch.setattr(embedding, "CACHE_CELLS", 1000)
        monkeypatch.setattr(pooling, "BUILD_ROWS", 64)
    layer = table_layer(noisy_chip(0.08), rows=2500, dim=5)
    if case == "drifted_compensated":
        layer.set_compensation("per_column")
        layer.set_time(86400.0)
    v, o = bags(2500, n_bags=32, pooling_factor=6)
    n = 300
    fast = draws(layer, v, o, n)
    table = pooling.table_of(layer)
    if case == "overflow":
        assert table.fits is not None and not bool(table.fits.all())
    if case == "lazy":  # the first 64 rows (the slot-width sample) and rows read, nothing else (the
        # fused CPU read builds only the rows read alone, the torch path every row read)
        assert table.known is not None
        known = table.known.nonzero().squeeze(1)
        assert bool(torch.isin(known, torch.cat([v, torch.arange(64)])).all()) and bool(table.known[:64].all())
        assert known.numel() > 64
    with monkeypatch.context() as patch:
        patch.setattr(pooling, "SINGLE_READ_ENTRIES", 0)
        exact = draws(layer, v, o, n)
    sd = torch.maximum(fast.std(0), exact.std(0))
    assert float(sd.max()) > 0
    assert bool(((fast.mean(0) - exact.mean(0)).abs() <= 5 * sd * math.sqrt(2 / n) + 1e-6).all())
    assert torch.allclose(fast.std(0), exact.std(0), atol=0.25 * float(sd.max()))


def test_outcome_table_follows_the_instance_state(monkeypatch):
    """The outcome table is rebuilt when the time, the seed or the device state changes (and
    only then): after set_time and after re-programming, lone rows pool the exact path's
    values of the new state."""
    layer = table_layer(noisy_chip(0.0), rows=500, dim=3)
    v, o = torch.arange(500), torch.arange(500)
    first = draws(layer, v, o, 1)[0]
    table = pooling.table_of(layer)
    draws(layer, v, o, 1)
    assert pooling.table_of(layer) is table  # same state: kept
    for change in (lambda: layer.set_time(3.0e7), lambda: layer.program(5)):
        change()
        fast = draws(layer, v, o, 1)[0]
        assert pooling.table_of(layer) is not table
        table = pooling.table_of(layer)
        with monkeypatch.context() as patch:
            patch.setattr(pooling, "SINGLE_READ_ENTRIES", 0)
            exact = draws(layer, v, o, 1)[0]
        assert torch.allclose(fast, exact, atol=1e-5 * float(exact.abs().max()), rtol=0)
        assert not torch.allclose(fast, first, atol=1e-3 * float(first.abs().max()))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=12), st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 3, 4, 16]),
       st.integers(1, 3))
def test_alone_in_read_matches_counting(per_bag_list, seed, array_rows, group_rows):
    """A lookup is alone iff no other lookup of its bag falls in its array (any row count per
    array, power of two or not; one row per read makes every lookup alone)."""
    rows = 37
    per_bag, bags_, idx = random_lookups(per_bag_list, seed, rows)
    n_arrays = -(-rows // array_rows)
    got = pooling.alone_in_read(idx, bags_, per_bag, array_rows, n_arrays, group_rows)
    pairs = list(zip(bags_.tolist(), (idx // array_rows).tolist(), strict=True))
    expected = [group_rows == 1 or pairs.count(p) == 1 for p in pairs]
    assert got.tolist() == expected


_IDEAL: dict[bool, tuple[nn.EmbeddingBag, torch.nn.Module]] = {}


def ideal_bags(last: bool):
    """A 50 x 3 bag and its conversion on the ideal chip (built once per offsets convention)."""
    if last not in _IDEAL:
        torch.manual_seed(4)
        plain = nn.EmbeddingBag(50, 3, mode="sum", include_last_offset=last)
        _IDEAL[last] = (plain, cimflow.program(cimflow.convert(nn.Sequential(plain), "ideal"), seed=0)[0])
    return _IDEAL[last]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=10), st.booleans(), st.integers(0, 2**31 - 1))
def test_offsets_parse_as_embedding_bag(sizes, last, seed):
    """Bags of any sizes (empty ones too), with or without the closing offset: the same pooled
    values as nn.EmbeddingBag on the ideal chip, and lookups known to have their bags to
    themselves exactly when no bag holds two."""
    plain, cim = ideal_bags(last)
    sizes_t = torch.tensor(sizes)
    values = torch.randint(0, 50, (int(sizes_t.sum()),), generator=torch.Generator().manual_seed(seed))
    ends = torch.cat([torch.zeros(1, dtype=torch.int64), sizes_t.cumsum(0)])
    offsets = ends if last else ends[:-1]
    with torch.no_grad():
        ref, out = plain(values, offsets), cim(values, offsets)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4 * float(ref.abs().max().clamp_min(1.0)))
    assert pooling.flatten_bags(values, offsets, True, last, 50, "t").one_per_bag == (max(sizes) <= 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 6), min_size=1, max_size=6), st.booleans(), st.integers(1, 8))
def test_bad_offsets_are_refused(offsets_list, last, n_values):
    """Offsets that do not start at 0, decrease or pass the end of the indices: a DataError
    naming the rule, never a wrong number; valid ones pool."""
    _, cim = ideal_bags(last)
    offsets = torch.tensor(offsets_list)
    values = torch.zeros(n_values, dtype=torch.int64)
    diffs = offsets.diff()
    valid = offsets_list[0] == 0 and bool((diffs >= 0).all()) and offsets_list[-1] <= n_values
    if valid:
        with torch.no_grad():
            assert cim(values, offsets).shape[0] == (len(offsets_list) - 1 if last else len(offsets_list))
    else:
        with pytest.raises(cimflow.errors.CimflowError, match="offsets must start at 0, never decrease"):
            cim(values, offsets)


def test_outcome_table_stays_outside_the_module(tmp_path):
    """The table is kept beside the module: after a forward the converted model still pickles
    (torch.save of the whole model) and deep-copies, and a copy builds its own table."""
    import copy

    layer = table_layer(noisy_chip(0.02), rows=400, dim=3)
    v, o = torch.arange(400), torch.arange(400)
    first = draws(layer, v, o, 1)[0]
    assert pooling.table_of(layer) is not None
    path = tmp_path / "model.pt"
    torch.save(layer, path)
    loaded = torch.load(path, weights_only=False)
    twin = copy.deepcopy(layer)
    for other in (loaded, twin):
        assert pooling.table_of(other) is None
        again = draws(other, v, o, 1)[0]
        assert pooling.table_of(other) is not pooling.table_of(layer)
        # same programmed state: equal but for read noise (a few code steps)
        assert float((again - first).abs().max()) < 0.5 * float(first.abs().max())


def test_sign_only_adc_reads_through_the_exact_path():
    """A 1-bit ADC keeps only the sign of the noisy sum, so a lone read's code is random near
    zero: such tables take the exact path (no outcome table) and their outputs vary."""
    chip = chip_with("hybrid-rram-sram-28nm", **{f"arrays.{EMB}.device.read_noise": 0.3, f"arrays.{EMB}.adc.bits": 1})
    layer = table_layer(chip, rows=200, dim=3)
    v, o = torch.arange(200), torch.arange(200)
    out = draws(layer, v, o, 20)
    assert pooling.table_of(layer) is None
    assert float(out.std(0).max()) > 0
