"""Array yield (dead lines, spare-row repair) and endurance (write-cycle budget) against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cimflow
from cimflow.chip import chip_from_dict, load_preset
from cimflow.chip.spec import ArrayYield
from cimflow.errors import SimulationError
from cimflow.physics.devices.array_yield import dead_cells, unrepaired_dead_rows, unrepaired_row_probability


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_spare_rows_repair_as_the_binomial_tail_says() -> None:
    arrays, rows = 20_000, 64
    for rate, spares in ((0.01, 0), (0.01, 1), (0.03, 2), (0.05, 4)):
        spec = ArrayYield(dead_row_rate=rate, spare_rows=spares)
        bad = unrepaired_dead_rows(arrays, rows, spec, gen(1))
        p = unrepaired_row_probability(rows, spec)
        tail = 1 - sum(math.comb(rows, k) * rate**k * (1 - rate) ** (rows - k) for k in range(spares + 1))
        assert math.isclose(p, tail, rel_tol=1e-9, abs_tol=1e-15)
        frac = float(bad.any(dim=1).float().mean())
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / arrays) + 1 / arrays, (rate, spares, frac, p)
        # the expected number of unrepaired rows per array: E[max(0, K - spares)], K ~ Binomial(rows, rate)
        expected = sum(max(0, k - spares) * math.comb(rows, k) * rate**k * (1 - rate) ** (rows - k) for k in range(rows + 1))
        mean = float(bad.sum(dim=1).float().mean())
        assert abs(mean - expected) < 6 * math.sqrt(rows * rate / arrays) + 1e-9


def test_enough_spares_repair_everything_and_no_defects_means_no_dead_cells() -> None:
    everything = unrepaired_dead_rows(100, 32, ArrayYield(dead_row_rate=0.2, spare_rows=32), gen(2))
    assert not bool(everything.any())
    none = dead_cells((2, 100, 70), 32, 16, ArrayYield(), gen(3), gen(4))
    assert not bool(none.any())


def test_dead_lines_map_onto_the_tiled_matrix() -> None:
    rows, cols = 16, 8
    spec = ArrayYield(dead_row_rate=0.1, dead_col_rate=0.1)
    dead = dead_cells((2, 40, 20), rows, cols, spec, gen(5), gen(6))
    assert dead.shape == (2, 40, 20)
    # a dead row kills its whole row within its array in every slice; rows are shared by slices
    row_dead = dead.all(dim=0)
    for i in range(40):
        for tile in range(-(-20 // cols)):
            block = dead[:, i, tile * cols:(tile + 1) * cols]
            if bool(block.all()):
                assert bool(row_dead[i, tile * cols:(tile + 1) * cols].all())
    # the fraction of dead cells: 1 - (1 - p_row)(1 - p_col) in expectation
    big = dead_cells((1, 256 * 40, 256), 256, 64, spec, gen(7), gen(8))
    expected = 1 - 0.9 * 0.9
    arrays = 40 * 4
    assert abs(float(big.float().mean()) - expected) < 6 * math.sqrt(0.1 * 0.9 / (arrays * 64))


def _layer_chip(**device_changes: object):
    data = load_preset("rram-analog-generic").model_dump(mode="json", exclude_none=True)
    for array in data["arrays"].values():
        if array["kind"] == "analog":
            array["device"].update(device_changes)
    return chip_from_dict(data)


def test_dead_columns_leave_cells_stuck_at_g_min_in_a_programmed_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 96))
    chip = _layer_chip(array_yield={"dead_col_rate": 0.25})
    cim = cimflow.program(cimflow.convert(net, chip), seed=3)
    engine = cim[0].engine
    g_min = engine.spec.device.g_min
    at_min = (engine.g_pos == g_min) & (engine.g_neg == g_min)
    # each side's columns die independently: a side's column is all g_min with probability p
    side_dead = (engine.g_pos == g_min).all(dim=1).float().mean()
    assert abs(float(side_dead) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / engine.g_pos.shape[-1]) + 0.02
    assert bool(at_min.any())
    stuck_pos, _ = engine.stuck_masks()  # what EaPU leaves alone: the dead columns are in it
    assert bool(stuck_pos[(engine.g_pos == g_min).all(dim=1, keepdim=True).expand_as(stuck_pos)].all())
    ideal = cimflow.program(cimflow.convert(net, _layer_chip()), seed=3)
    assert not bool((ideal[0].engine.g_pos == g_min).all(dim=1).any())


def test_endurance_budget_is_spent_by_reprogramming_the_same_instance() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 16))
    cim = cimflow.convert(net, _layer_chip(endurance_cycles=3))
    cimflow.program(cim, seed=1)
    engine = cim[0].engine
    assert engine.endurance_usage == (1, 3)
    cimflow.program(cim, seed=1)
    cimflow.program(cim, seed=1)
    assert engine.endurance_usage == (3, 3)
    with pytest.raises(SimulationError, match="endurance of 3 write cycles"):
        cimflow.program(cim, seed=1)
    # another chip instance is another set of cells
    cimflow.program(cim, seed=2)
    assert engine.endurance_usage == (1, 3)


def test_program_and_verify_spends_one_cycle_per_round() -> None:
    net = nn.Sequential(nn.Linear(32, 16))
    cim = cimflow.convert(net, _layer_chip(endurance_cycles=10))
    cimflow.program(cim, seed=1, verify_iterations=4)
    assert cim[0].engine.endurance_usage == (5, 10)
    cimflow.program(cim, seed=1, verify_iterations=4)  # 10 of 10: still within the budget
    with pytest.raises(SimulationError, match="endurance"):
        cimflow.program(cim, seed=1, verify_iterations=4)
