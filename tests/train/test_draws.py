"""Cached per-cell draws (train/draws.py): every instance has the chip's distribution
(programming sigma at each target, stuck rates, drift exponents, a PCM cell's state and its
conductance after a day), the cells of one instance and one cell on consecutive instances
are uncorrelated, the fast path computes what the engine computes (from the same
conductances and state, and the PCM law from the same draws), a changed law is caught, and
the same seeds give the same instances. Tolerances are sized to the number of cells."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.errors import CimflowError
from cimflow.mapping import encode_weights
from cimflow.physics import derive_seed, programming_sigma
from cimflow.physics.devices import PCMModel
from cimflow.train.draws import DrawPool, InstanceDraws, StuckPool, covered
from cimflow.train.noise import sample_instance, step_seed, time_at

G_MIN, G_MAX = 30e-6, 100e-6  # g_min well above 0 S: no programmed cell is clipped at 0 S
DEV = "arrays.analog.device."
COEFFS = [0.01, 0.04, -0.02]  # sigma / g_max, state dependent


def _chip(**changes):
    return chip_with("ideal", **{DEV + "g_min": G_MIN, DEV + "levels": 64, DEV + "programming_noise": {"coefficients": COEFFS},
                                 "arrays.analog.rows": 128, **changes})


def _converted(chip, in_f=300, out_f=96):
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=False)
    return lin, cimflow.convert(nn.Sequential(lin), chip)


def _engines_own(eng):
    """The engine's own effective weights, read variances (at its time) and ADC ranges (at t0)
    recomputed with its refresh from its current conductances and per-cell state."""
    t = eng.t_seconds
    eng.t_seconds = eng.spec.device.drift.t0_s
    eng._refresh(set_adc_range=True)
    adc_t0 = eng.adc_range.clone()
    eng.t_seconds = t
    eng._refresh()
    return {"w_eff": eng.w_eff, "read_var": eng.read_var, "adc_range": adc_t0}


def _close(mine, ref, key):
    assert mine.shape == ref.shape, key
    top = float(ref.abs().max())
    assert torch.allclose(mine, ref, rtol=1e-5, atol=1e-6 * top), (key, float((mine - ref).abs().max()), top)


def _normalized_errors(lin, cim):
    """(g - target) / sigma(target) of every cell of the current instance (no drift)."""
    eng = cim[0].engine
    targets = encode_weights(lin.weight.detach().t() / eng.w_scale, eng.spec)
    target = torch.cat([targets.positive[0].reshape(-1), targets.negative[0].reshape(-1)])
    g = torch.cat([eng.g_pos[0].reshape(-1), eng.g_neg[0].reshape(-1)])
    return (g - target) / programming_sigma(target, G_MAX, COEFFS)


def test_each_cached_instance_has_the_chips_programming_sigma_and_fresh_draws():
    lin, cim = _converted(_chip())
    draws, gen = InstanceDraws(0), torch.Generator().manual_seed(0)
    errors = []
    for step in range(3):
        sample_instance(cim, step_seed(0, step), None, gen, draws=draws)
        errors.append(_normalized_errors(lin, cim).clone())
    n = errors[0].numel()
    for err in errors:  # standard normal at every cell's own sigma, every step
        assert abs(float(err.mean())) < 6 / math.sqrt(n)
        assert abs(float(err.std()) - 1) < 6 / math.sqrt(2 * n)
        # the cells of one instance are uncorrelated (neighbours in the pool)
        assert abs(float(torch.corrcoef(torch.stack([err[:-1], err[1:]]))[0, 1])) < 6 / math.sqrt(n)
    for a, b in ((0, 1), (1, 2), (0, 2)):  # one cell on two instances: uncorrelated
        assert abs(float(torch.corrcoef(torch.stack([errors[a], errors[b]]))[0, 1])) < 6 / math.sqrt(n)
    assert not draws.fallbacks


def test_cached_instances_draw_stuck_cells_at_the_chips_rates():
    on, off = 0.01, 0.02
    _, cim = _converted(_chip(**{DEV + "stuck_on_rate": on, DEV + "stuck_off_rate": off}))
    draws, gen = InstanceDraws(1), torch.Generator().manual_seed(0)
    for step in range(2):
        sample_instance(cim, step_seed(3, step), None, gen, draws=draws)
        eng = cim[0].engine
        cells = torch.cat([eng.g_pos.reshape(-1), eng.g_neg.reshape(-1)])
        n = cells.numel()
        for rate, value in ((on, G_MAX), (off, G_MIN)):  # a healthy cell never lands exactly on g_max or g_min
            measured = float((cells == value).float().mean())
            assert abs(measured - rate) < 5 * math.sqrt(rate * (1 - rate) / n), (measured, rate)


def test_cached_drift_exponents_time_and_the_engines_own_arithmetic():
    nu_mean, nu_std, t0, t_max = 0.05, 0.01, 10.0, 1e6
    _, cim = _converted(_chip(**{DEV + "drift": {"nu_mean": nu_mean, "nu_std": nu_std, "t0_s": t0}, DEV + "read_noise": 0.03}))
    draws, gen = InstanceDraws(0), torch.Generator().manual_seed(0)
    eng = cim[0].engine
    for step in range(3):
        fraction = sample_instance(cim, step_seed(0, step), t_max, gen, draws=draws)
        assert math.isclose(eng.t_seconds, time_at(fraction, t0, t_max), rel_tol=1e-12)
        nu = torch.cat([eng.nu_pos.reshape(-1), eng.nu_neg.reshape(-1)])
        n = nu.numel()
        assert abs(float(nu.mean()) - nu_mean) < 6 * nu_std / math.sqrt(n)
        assert abs(float(nu.std()) - nu_std) < 6 * nu_std / math.sqrt(2 * n)
        # the fast path's effective weights, read-noise variances and ADC ranges are the
        # engine's own, recomputed from the same conductances and exponents
        mine = {k: getattr(eng, k).clone() for k in ("w_eff", "read_var", "adc_range")}
        for key, ref in _engines_own(eng).items():
            _close(mine[key], ref, key)
    assert not draws.fallbacks and covered(cim[0])
    assert draws._pools["0"].work is not None  # the in-place fast path ran (3 read groups)


def test_the_same_seeds_give_the_same_instances_and_other_seeds_other_ones():
    _, cim = _converted(_chip(**{DEV + "stuck_on_rate": 0.01}))

    def instances(pool_seed):
        draws, gen, out = InstanceDraws(pool_seed), torch.Generator().manual_seed(0), []
        for step in range(2):
            sample_instance(cim, step_seed(0, step), 1e5, gen, draws=draws)
            out.append(cim[0].engine.w_eff.clone())
        return out

    first, again, other = instances(0), instances(0), instances(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], other[0])


@pytest.mark.parametrize("scheme", ["bit_sliced", "offset"])
def test_other_encodings_program_with_the_chips_laws(scheme):
    encoding = {"scheme": scheme, "slices": 2} if scheme == "bit_sliced" else {"scheme": scheme}
    lin, cim = _converted(_chip(**{DEV + "levels": 4, "arrays.analog.weight_encoding": encoding}))
    draws, gen = InstanceDraws(0), torch.Generator().manual_seed(0)
    sample_instance(cim, step_seed(0, 0), None, gen, draws=draws)
    eng = cim[0].engine
    if scheme == "offset":  # not covered: the layer programs itself, exactly as cimflow.program does
        assert not covered(cim[0])
        cached = eng.w_eff.clone()
        cimflow.program(cim, step_seed(0, 0))
        assert torch.equal(cached, eng.w_eff)
        return
    targets = encode_weights(lin.weight.detach().t() / eng.w_scale, eng.spec)
    target = torch.cat([torch.stack(targets.positive).reshape(-1), torch.stack(targets.negative).reshape(-1)])
    g = torch.cat([eng.g_pos.reshape(-1), eng.g_neg.reshape(-1)])
    err = (g - target) / programming_sigma(target, G_MAX, COEFFS)
    n = err.numel()
    assert abs(float(err.mean())) < 6 / math.sqrt(n) and abs(float(err.std()) - 1) < 6 / math.sqrt(2 * n)


def test_a_pool_renews_every_entry_and_refuses_windows_outside_it():
    pool = DrawPool(10, lambda count, gen: torch.randn(count, generator=gen), torch.Generator().manual_seed(0), refresh_steps=4)
    before = pool.data.clone()
    for _ in range(4):
        pool.renew()
    assert bool((pool.data != before).all())
    assert pool.window(10).shape == (10,)
    with pytest.raises(CimflowError, match="offset"):
        pool.window(11)
    with pytest.raises(CimflowError, match="refresh_steps"):
        InstanceDraws(0, refresh_steps=0)


def test_hwa_with_fresh_generators_still_trains():
    data = (torch.rand(64, 300), torch.randint(0, 96, (64,)))
    lin, _ = _converted(_chip())
    result = cimflow.train.hwa_finetune(nn.Sequential(lin), _chip(), data, steps=2, batch_size=32, cached_draws=False)
    assert result.steps == 2 and math.isfinite(result.history[-1]["loss"])


def test_a_device_plug_in_draws_from_pools_with_the_exact_paths_moments():
    # pcm-hermes-like's PCM model (state-dependent drift exponents, accumulated 1/f noise):
    # one instance from pooled draws (the fast path) and one from fresh generators, aged to the
    # same time, have the same programming errors (at each cell's sigma), the same drift-state
    # moments and the same conductances a day later
    lin, cached = _converted("pcm-hermes-like", 256, 128)
    exact = cimflow.convert(nn.Sequential(lin), "pcm-hermes-like")
    draws = InstanceDraws(0)
    assert covered(cached[0]) and cached[0].engine.spec.device.model == "pcm"
    sample_instance(cached, step_seed(0, 1), 86400.0, torch.Generator().manual_seed(2), draws=draws)
    sample_instance(exact, step_seed(0, 1), 86400.0, torch.Generator().manual_seed(2))
    assert not draws.fallbacks and draws._pools["0"].work is not None  # the fast path ran
    a, b = cached[0].engine, exact[0].engine
    assert a.t_seconds == b.t_seconds > a.spec.device.drift.t0_s
    dev = a.spec.device
    targets = encode_weights(lin.weight.detach().t() / a.w_scale, a.spec)
    target = torch.cat([targets.positive[0].reshape(-1), targets.negative[0].reshape(-1)])
    sigma = programming_sigma(target, dev.g_max, dev.programming_noise.coefficients)
    n = target.numel()
    for eng in (a, b):
        g = torch.cat([eng.g_pos[0].reshape(-1), eng.g_neg[0].reshape(-1)])
        # away from 0 S (where clipping bends the law), stuck cells (exactly g_min or g_max) left out
        healthy = (target > 0.2 * dev.g_max) & (g > dev.g_min) & (g < dev.g_max)
        err = ((g - target) / sigma)[healthy]
        m = err.numel()
        assert abs(float(err.mean())) < 6 / math.sqrt(m) and abs(float(err.std()) - 1) < 6 / math.sqrt(2 * m)
    # each state component (drift exponent, 1/f normal, Q_s): two samples of n cells, same mean and spread
    sa = torch.cat([a.nu_pos.reshape(a.nu_pos.shape[0], -1), a.nu_neg.reshape(a.nu_neg.shape[0], -1)], dim=1)
    sb = torch.cat([b.nu_pos.reshape(b.nu_pos.shape[0], -1), b.nu_neg.reshape(b.nu_neg.shape[0], -1)], dim=1)
    for x, y in zip(sa, sb, strict=True):
        spread = float(y.std())
        assert abs(float(x.mean()) - float(y.mean())) < 6 * spread * math.sqrt(2 / n)
        assert abs(float(x.std()) / spread - 1) < 6 * math.sqrt(1 / n) + 0.01
    # the conductances after a day (drift and 1/f noise since programming), band of targets by
    # band: the same mean and spread (stuck-on cells, far off, left out; the same targets in both)
    x = target / dev.g_max
    g_t = [torch.cat([g.reshape(-1) for g in eng._conductances_now()]) for eng in (a, b)]
    programmed = [torch.cat([eng.g_pos.reshape(-1), eng.g_neg.reshape(-1)]) for eng in (a, b)]
    for lo, hi in ((0.0, 1e-3), (0.1, 0.3), (0.3, 0.6), (0.6, 1.01)):
        band = [(x >= lo) & (x < hi) & (g < dev.g_max) for g in programmed]
        da, db = ((gt - target)[m] / dev.g_max for gt, m in zip(g_t, band, strict=True))
        m = min(da.numel(), db.numel())
        assert m > 2000, (lo, m)
        spread = float(db.std())
        assert abs(float(da.mean()) - float(db.mean())) < 6 * spread * math.sqrt(2 / m), (lo, float(da.mean()), float(db.mean()))
        assert abs(float(da.std()) / spread - 1) < 8 * math.sqrt(1 / m) + 0.01, (lo, float(da.std()), spread)
    # within the cached instance, a cell's 1/f normal is a standard normal of its own: not its
    # programming error's, nor its drift exponent's
    healthy = (target > 0.2 * dev.g_max) & (programmed[0] > dev.g_min) & (programmed[0] < dev.g_max)
    flicker, nu = sa[1][healthy], sa[0][healthy]
    err = ((programmed[0] - target) / sigma)[healthy]
    m = flicker.numel()
    assert abs(float(flicker.mean())) < 6 / math.sqrt(m) and abs(float(flicker.std()) - 1) < 6 / math.sqrt(2 * m)
    for other in (err, nu):
        assert abs(float(torch.corrcoef(torch.stack([flicker, other]))[0, 1])) < 6 / math.sqrt(m)
    # the effective weights' spread around the ideal ones agrees too
    ideal = lin.weight.detach().t() / a.w_scale
    da, db = a.w_eff[0].reshape(-1, 128)[:256] - ideal, b.w_eff[0].reshape(-1, 128)[:256] - ideal
    assert abs(float(da.std()) / float(db.std()) - 1) < 0.03


def test_a_stuck_pools_window_indices_are_the_stuck_cells_of_the_window():
    pool = StuckPool(1000, 0.05, 0.03, torch.Generator().manual_seed(0), torch.device("cpu"), refresh_steps=7)
    for _ in range(5):  # renewed slices re-indexed
        pool.renew()
    for offset in (0, 1, 137, 500, 999, 1000):
        on, off = pool.window(offset)
        codes = pool.pool.window(offset)
        assert torch.equal(on, torch.nonzero(codes == 1).flatten()), offset
        assert torch.equal(off, torch.nonzero(codes == -1).flatten()), offset
        assert on.numel() > 0 and off.numel() > 0  # 5 % and 3 % of 1000 cells: both kinds present


class _Replay:
    """Instance ``seed`` of layer ``name`` as the cached draws gave it to the fast path (the
    pools' windows at the instance's offsets, taken again before the next instance renews
    them): a draw source (``InstanceSource``) for the engine's own programming."""

    def __init__(self, draws, name, seed):
        pools = draws._pools[name]
        n = pools.normal.n

        def window(pool, purpose):
            return pool.window(derive_seed(seed, name, "hwa-window", purpose) % (n + 1)).view(pools.shape)

        self.normals = {"program": window(pools.normal, "program"), **{p: window(pool, p) for p, pool in pools.state.items()}}
        self.codes = window(pools.stuck.pool, "stuck")

    def cells(self, shape):
        return self

    def stuck(self, shape):
        return self.codes

    def normal(self, purpose, k=0):
        assert k == 0
        return self.normals[purpose]

    def uniform(self, purpose, k=0):
        raise AssertionError(f"PCM draws no uniform {purpose!r}")


def test_the_pcm_fast_path_is_the_engines_own_programming_from_the_same_draws():
    # pcm-hermes-like (stuck cells, expected ADC range, 1/f noise, state-dependent drift), two
    # read groups: every instance's conductances, state (nu, 1/f normal, Q_s), effective weights,
    # read variances and ADC ranges are those the engine programs from the very same draws, and
    # those its refresh computes from the fast path's conductances and state
    lin, cim = _converted("pcm-hermes-like", 300, 96)
    other = cimflow.convert(nn.Sequential(lin), "pcm-hermes-like")
    draws = InstanceDraws(0)
    for step, t in enumerate((86400.0, None, 2e7)):  # the first instance checked by the layer, the others not
        seed = step_seed(0, step)
        draws.program_layer("0", cim[0], seed, t)
        a, b = cim[0].engine, other[0].engine
        assert a.nu_pos.shape == (3, 1, 300, 96)
        mine = {k: getattr(a, k).clone() for k in ("g_pos", "g_neg", "nu_pos", "nu_neg", "w_scale", "w_eff", "read_var", "adc_range")}
        other[0].program(seed, draws=_Replay(draws, "0", seed), t_seconds=t)
        assert a.t_seconds == b.t_seconds
        for key, value in mine.items():
            _close(value, getattr(b, key), key)
        assert int((torch.cat([a.g_pos, a.g_neg]) == a.spec.device.g_max).sum()) > 0  # stuck cells in the instance
        for key, ref in _engines_own(a).items():
            _close(mine[key], ref, key)
    assert not draws.fallbacks and draws._pools["0"].work is not None and draws._pools["0"].cells is None  # the fast path ran


@pytest.mark.parametrize("law", ["conductance", "state"])
def test_a_changed_pcm_law_is_caught_and_the_layer_programmed_the_engines_way(law, monkeypatch):
    """The fast path's one check per layer recomputes the PCM state with the model's own
    sample_state and the weights with the engine's refresh: a law the fast path does not
    follow (here the 1/f noise doubled, or Q_s taken at the target rather than the programmed
    conductance) leaves the engine's own values and the general programming from then on."""
    if law == "conductance":
        real = PCMModel.conductance
        doubled = torch.tensor([1.0, 2.0, 1.0]).view(3, 1, 1, 1)  # the 1/f normals
        monkeypatch.setattr(PCMModel, "conductance", lambda self, g, state, t: real(self, g, state * doubled, t))
    else:
        real = PCMModel.sample_state
        monkeypatch.setattr(PCMModel, "sample_state", lambda self, target, g, d: real(self, target, target, d))
    lin, cim = _converted("pcm-hermes-like", 300, 96)
    draws = InstanceDraws(0)
    draws.program_layer("0", cim[0], step_seed(0, 0), 86400.0)
    assert draws.fallbacks == {"0"}
    eng = cim[0].engine
    kept = {k: getattr(eng, k).clone() for k in ("w_eff", "read_var", "adc_range")}
    for key, ref in _engines_own(eng).items():
        _close(kept[key], ref, key)
    draws.program_layer("0", cim[0], step_seed(0, 1), 86400.0)
    assert draws._pools["0"].cells is not None  # programmed by the layer, from the pooled draws
