"""Program-and-verify: each iteration re-programs the cells beyond the tolerance, so the
share of bad cells falls as q**(N+1) with q = P(|Z| > 1); every programming operation is a
write pulse, counted per layer (matrix layers and embedding tables)."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.errors import CimflowError
from cimflow.mapping import encode_weights
from cimflow.sim import write_pulses

G_MIN, G_MAX = 30e-6, 100e-6
DEV = "arrays.analog.device."
SIGMA = 0.05
Q = math.erfc(1 / math.sqrt(2))  # P(|Z| > 1) = 0.3173: a fresh draw misses a 1-sigma tolerance


def _chip(**changes):
    return chip_with("ideal", **{DEV + "g_min": G_MIN, DEV + "levels": 16, DEV + "programming_noise": {"coefficients": [SIGMA]}, **changes})


def _errors(lin, cim):
    eng = cim[0].engine
    targets = encode_weights(lin.weight.detach().t() / eng.w_scale, eng.spec)
    return torch.cat([(eng.g_pos[0] - targets.positive[0]).reshape(-1), (eng.g_neg[0] - targets.negative[0]).reshape(-1)]) / G_MAX


def test_verify_tightens_the_error_and_counts_its_pulses():
    torch.manual_seed(0)
    lin = nn.Linear(256, 128, bias=False)
    cim = cimflow.convert(nn.Sequential(lin), _chip())
    cimflow.program(cim, 0)
    err0 = _errors(lin, cim)
    cells = err0.numel()
    assert write_pulses(cim) == {"0": cells}  # one pulse per cell
    for iterations in (1, 3):
        cimflow.program(cim, 0, verify_iterations=iterations)
        err = _errors(lin, cim)
        bad = float((err.abs() > SIGMA).float().mean())
        expected = Q ** (iterations + 1)
        assert abs(bad - expected) < 6 * math.sqrt(expected * (1 - expected) / cells), (iterations, bad, expected)
        assert float(err.std()) < float(err0.std())
        expected_pulses = cells * (1 + sum(Q**k for k in range(1, iterations + 1)))
        assert abs(cim[0].engine.write_pulses - expected_pulses) < 6 * math.sqrt(cells * iterations)
    # verify is kept for later programmings until turned off; off again reproduces the first instance
    cimflow.program(cim, 0)
    assert cim[0].engine.verify_iterations == 3
    cimflow.program(cim, 0, verify_iterations=0)
    assert torch.equal(_errors(lin, cim), err0) and cim[0].engine.write_pulses == cells


def test_stuck_cells_fail_every_verify_and_cost_a_pulse_each_time():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=False)
    iterations = 4
    healthy = cimflow.convert(nn.Sequential(lin), _chip())
    stuck = cimflow.convert(nn.Sequential(lin), _chip(**{DEV + "stuck_on_rate": 0.05}))
    cimflow.program(healthy, 0, verify_iterations=iterations)
    cimflow.program(stuck, 0, verify_iterations=iterations)
    eng = stuck[0].engine
    mask_pos, mask_neg = eng.stuck_masks()
    targets = encode_weights(lin.weight.detach().t() / eng.w_scale, eng.spec)

    def off_target(mask: torch.Tensor, target: torch.Tensor) -> int:
        return int((mask[0] & ((G_MAX - target).abs() > SIGMA * G_MAX)).sum())

    stuck_bad = off_target(mask_pos, targets.positive[0]) + off_target(mask_neg, targets.negative[0])
    assert stuck_bad > 100
    # the healthy cells' pulses follow the same law in both instances; the stuck ones add one per iteration
    extra = eng.write_pulses - healthy[0].engine.write_pulses
    cells = 2 * 128 * 64
    assert abs(extra - iterations * stuck_bad) < 6 * math.sqrt(cells * iterations)
    assert int((eng.g_pos == G_MAX).sum()) >= int(mask_pos.sum())  # stuck cells never moved


def test_verify_of_embedding_tables_uses_hashed_draws_and_counts_pulses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(500, 16, mode="sum"))
    cim = cimflow.convert(model, _chip())
    bag = cim[0]

    def bad_fraction():
        idx = torch.arange(500)
        g_pos, g_neg, _, _ = bag._programmed(idx)
        targets = encode_weights((model[0].weight.detach() / bag.w_scale).clamp(-1, 1), bag.spec, 1)
        err = torch.cat([(g_pos - targets.positive[0]).reshape(-1), (g_neg - targets.negative[0]).reshape(-1)]) / G_MAX
        return float((err.abs() > SIGMA).float().mean()), err.numel()

    cimflow.program(cim, 1)
    bad0, cells = bad_fraction()
    assert bag.write_pulses == cells
    cimflow.program(cim, 1, verify_iterations=2)
    bad2, _ = bad_fraction()
    for bad, expected in ((bad0, Q), (bad2, Q**3)):
        assert abs(bad - expected) < 6 * math.sqrt(expected * (1 - expected) / cells)
    assert abs(bag.write_pulses - cells * (1 + Q + Q**2)) < 6 * math.sqrt(2 * cells)
    with torch.no_grad():  # the verified table is what the forward pass reads
        assert bag(torch.arange(500).view(-1, 1)).shape == (500, 16)


def test_bad_verify_settings_are_refused():
    cim = cimflow.convert(nn.Sequential(nn.Linear(4, 4)), _chip())
    with pytest.raises(CimflowError, match="verify_iterations"):
        cimflow.program(cim, 0, verify_iterations=-1)
    with pytest.raises(CimflowError, match="verify_tolerance"):
        cimflow.program(cim, 0, verify_iterations=2, verify_tolerance=0.0)
