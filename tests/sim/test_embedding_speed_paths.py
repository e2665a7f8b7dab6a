"""The fast embedding-pooling paths keep the statistics of the exact ones: ADC codes against
the closed form, reads converted in blocks, cached and lazily hashed rows (lone reads from
the outcome table: tests/sim/test_pooling.py)."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
import cimflow.sim.embedding as embedding

EMB = "rram_emb"


def noisy_chip(read_noise: float = 0.05):
    return chip_with("hybrid-rram-sram-28nm", **{f"arrays.{EMB}.device.read_noise": read_noise})


def table_layer(chip, rows: int = 3000, dim: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.EmbeddingBag(rows, dim, mode="sum"))
    return cimflow.program(cimflow.convert(model, chip), seed=0)[0]


def bags(rows: int, n_bags: int = 64, pooling: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, rows, (n_bags * pooling,), generator=g), torch.arange(0, n_bags * pooling, pooling)


@pytest.mark.parametrize("near_only", [False, True])
def test_codes_drawn_near_boundaries_have_the_exact_code_distribution(near_only):
    """Against the closed form: a sum x (in ADC steps) with noise s converts to code m with
    probability Phi((m + 1/2 - x)/s) - Phi((m - 1/2 - x)/s); the mean code over many
    conversions matches it within sampling error, for sums near and far from boundaries,
    drawing noise for every sum or only for the sums within its reach of a boundary."""
    layer = table_layer(noisy_chip())
    steps = (1 << (layer.spec.adc.bits - 1)) - 1
    k = steps / layer.adc_range  # steps per cell
    x_steps = torch.linspace(-3.2, 3.2, 97)
    s_steps = torch.full_like(x_steps, 0.2)
    s_steps[::3] = 0.01  # some sums far from every boundary at this noise
    psum, var = (x_steps / k).unsqueeze(0), (s_steps / k).square().unsqueeze(0)
    draws = 4000
    codes = torch.stack([layer._convert(psum, var, None, near_only=near_only)[0][0] for _ in range(draws)])
    normal = torch.distributions.Normal(0.0, 1.0)
    m = torch.arange(-6, 7, dtype=torch.float32).view(-1, 1)
    p = normal.cdf((m + 0.5 - x_steps) / s_steps) - normal.cdf((m - 0.5 - x_steps) / s_steps)
    mean = (m * p).sum(0)
    sd = ((m - mean).square() * p).sum(0).sqrt()
    err = (codes.mean(0) - mean).abs()
    assert bool((err <= 5 * sd / math.sqrt(draws) + 1e-6).all()), float((err / (sd / math.sqrt(draws) + 1e-9)).max())
    assert torch.allclose(codes.std(0), sd, atol=0.03)
    far = s_steps == 0.01
    far &= (x_steps - x_steps.round()).abs() < 0.5 - 6 * 0.01
    assert bool(far.any()) and torch.equal(codes[:, far], x_steps[far].round().expand(draws, -1))


def test_pooled_moments_match_drawing_noise_everywhere():
    """The layer's pooled outputs over repeated forwards: mean and spread per output with the
    fast paths (lone reads from the outcome table, the others in blocks) equal those of the
    calibration path (every read converted with its own draw)."""
    layer = table_layer(noisy_chip(0.08), rows=2000, dim=6)
    v, o = bags(2000, n_bags=32)
    with torch.no_grad():
        fast = torch.stack([layer(v, o) for _ in range(300)])
        layer._calibrating = True
        full = torch.stack([layer(v, o) for _ in range(300)])
        layer._calibrating, layer._calib_psums = False, []
    step = float(layer.w_scale.max()) * layer.adc_range / ((1 << (layer.spec.adc.bits - 1)) - 1)
    sd = torch.maximum(fast.std(0), full.std(0))
    assert float(sd.max()) > 0.1 * step  # the read noise is visible
    tol = 5 * sd * math.sqrt(2 / 300) + 1e-6
    assert bool(((fast.mean(0) - full.mean(0)).abs() <= tol).all())
    assert torch.allclose(fast.std(0), full.std(0), atol=0.25 * float(sd.max()))


def test_read_blocks_do_not_change_the_result(monkeypatch):
    """Converting reads in blocks of 3 or all at once: identical outputs without read noise,
    the same mean and spread with it (a block draws its own normals, so not the same bits)."""
    v, o = bags(2500)
    for read_noise in (0.0, 0.08):
        layer = table_layer(noisy_chip(read_noise), rows=2500, dim=5)
        outs = []
        for block in (3, 1 << 20):
            monkeypatch.setattr(embedding, "READ_BLOCK", block)
            layer.program(0)
            with torch.no_grad():
                outs.append(torch.stack([layer(v, o) for _ in range(1 if read_noise == 0 else 200)]))
        if read_noise == 0:
            assert torch.equal(outs[0], outs[1])
        else:
            sd = torch.maximum(outs[0].std(0), outs[1].std(0))
            assert float(sd.max()) > 0
            assert bool(((outs[0].mean(0) - outs[1].mean(0)).abs() <= 5 * sd * math.sqrt(2 / 200) + 1e-6).all())


def test_lazy_and_cached_tables_pool_the_same_values():
    """Without read noise the pooled values are deterministic: a cached table and the same
    table read lazily through the hash agree."""
    layer = table_layer(noisy_chip(0.0), rows=2500, dim=7)
    v, o = bags(2500)
    with torch.no_grad():
        cached = layer(v, o)
        layer.w_cache = None
        lazy = layer(v, o)
    assert torch.allclose(cached, lazy, atol=1e-5 * float(cached.abs().max()))
    assert not torch.allclose(cached, layer.weight.detach()[v].view(-1, 12, 7).sum(1), atol=1e-4)  # noise present


def test_compensated_and_hot_rows_paths_still_pool_exactly_on_ideal():
    chip = chip_with("ideal", **{"arrays.analog.rows": 64, "arrays.analog.max_active_rows": 4})
    torch.manual_seed(3)
    model = nn.Sequential(nn.EmbeddingBag(300, 4, mode="sum"))
    cim = cimflow.program(cimflow.convert(model, chip), 0)
    v, o = bags(300, n_bags=10, pooling=9)
    layer = cim[0]
    layer.hot_rows = torch.arange(0, 300, 7)
    layer.set_compensation("per_column")
    with torch.no_grad():
        assert torch.allclose(layer(v, o), model[0](v, o), atol=1e-4)


@pytest.mark.parametrize("bad", [torch.ones(2, 2)])
def test_w_cache_can_only_be_cleared(bad):
    layer = table_layer(noisy_chip(), rows=50, dim=2)
    with pytest.raises(cimflow.errors.CimflowError, match="can only be cleared"):
        layer.w_cache = bad
