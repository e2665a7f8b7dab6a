"""HWA noise injection draws from the chip's own device model: programming noise, stuck
cells, drift exponents and log-uniform times, each checked against a tolerance computed
from the sample size."""

from __future__ import annotations

import math

import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.mapping import encode_weights
from cimflow.train.noise import sample_instance, step_seed, time_at

G_MIN, G_MAX = 30e-6, 100e-6  # g_min well above 0 S, so no programmed cell is clipped at 0 S
DEV = "arrays.analog.device."


def _chip(**changes):
    return chip_with("ideal", **{DEV + "g_min": G_MIN, DEV + "levels": 16, **changes})


def _converted(chip, in_f=256, out_f=128):
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=False)
    return lin, cimflow.convert(nn.Sequential(lin), chip)


def _programming_error(lin, cim):
    eng = cim[0].engine
    w_norm = lin.weight.detach().t() / eng.w_scale
    targets = encode_weights(w_norm, eng.spec)
    return torch.cat([(eng.g_pos[0] - targets.positive[0]).reshape(-1), (eng.g_neg[0] - targets.negative[0]).reshape(-1)])


def test_each_step_draws_programming_noise_with_the_chips_sigma():
    sigma = 0.02  # of g_max, constant
    lin, cim = _converted(_chip(**{DEV + "programming_noise": {"coefficients": [sigma]}}))
    gen = torch.Generator().manual_seed(0)
    errors = []
    for step in range(2):
        sample_instance(cim, step_seed(0, step), None, gen)
        errors.append(_programming_error(lin, cim) / G_MAX)
    for err in errors:
        n = err.numel()
        assert abs(float(err.std()) - sigma) < 6 * sigma / math.sqrt(2 * n)
        assert abs(float(err.mean())) < 6 * sigma / math.sqrt(n)
    # a fresh instance every step: the two steps' draws are uncorrelated
    n = errors[0].numel()
    corr = float(torch.corrcoef(torch.stack(errors))[0, 1])
    assert abs(corr) < 6 / math.sqrt(n)
    # and the same step seed gives the same instance
    sample_instance(cim, step_seed(0, 1), None, gen)
    assert torch.equal(_programming_error(lin, cim) / G_MAX, errors[1])


def test_each_step_draws_stuck_cells_at_the_chips_rates():
    on, off = 0.01, 0.02
    _, cim = _converted(_chip(**{DEV + "programming_noise": {"coefficients": [0.02]}, DEV + "stuck_on_rate": on,
                                 DEV + "stuck_off_rate": off}))
    gen = torch.Generator().manual_seed(0)
    sample_instance(cim, step_seed(3, 0), None, gen)
    eng = cim[0].engine
    cells = torch.cat([eng.g_pos.reshape(-1), eng.g_neg.reshape(-1)])
    n = cells.numel()
    # with programming noise, a healthy cell never lands exactly on g_max or g_min
    for rate, value in ((on, G_MAX), (off, G_MIN)):
        measured = float((cells == value).float().mean())
        assert abs(measured - rate) < 5 * math.sqrt(rate * (1 - rate) / n), (measured, rate)


def test_each_step_draws_drift_exponents_and_a_log_uniform_time():
    nu_mean, nu_std, t0, t_max = 0.05, 0.01, 10.0, 1e6
    _, cim = _converted(_chip(**{DEV + "drift": {"nu_mean": nu_mean, "nu_std": nu_std, "t0_s": t0}}))
    gen = torch.Generator().manual_seed(0)
    fractions = []
    for step in range(400):
        fraction = sample_instance(cim, step_seed(0, step), t_max, gen)
        eng = cim[0].engine
        assert math.isclose(eng.t_seconds, time_at(fraction, t0, t_max), rel_tol=1e-12)
        assert t0 <= eng.t_seconds <= t_max
        fractions.append(fraction)
    nu = torch.cat([eng.nu_pos.reshape(-1), eng.nu_neg.reshape(-1)])  # the last step's exponents
    n = nu.numel()
    assert abs(float(nu.mean()) - nu_mean) < 6 * nu_std / math.sqrt(n)
    assert abs(float(nu.std()) - nu_std) < 6 * nu_std / math.sqrt(2 * n)
    # log-uniform time: the position on the log axis is uniform on [0, 1) (mean 1/2, variance 1/12)
    f = torch.tensor(fractions)
    assert abs(float(f.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / len(f))
    assert abs(float(f.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / len(f))  # Var of U^2 terms: 1/180


def test_time_at_is_log_uniform_between_t0_and_t_max():
    assert time_at(0.0, 2.0, 2e6) == 2.0
    assert math.isclose(time_at(0.5, 2.0, 2e6), 2e3)
    assert math.isclose(time_at(1.0, 2.0, 2e6), 2e6)
    assert time_at(0.7, 5.0, 1.0) == 5.0  # t_max before t0: no drift
