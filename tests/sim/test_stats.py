"""gather_stats lives in the sim layer and hands plain numbers to the cost model."""

import json

import pytest
import torch
from torch import nn

import cimflow
import cimflow.cost
from cimflow.errors import CimflowError
from cimflow.sim import gather_stats
from cimflow.sim.stats import gather_stats as stats_gather_stats


def _simulated(seed: int = 0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16, bias=False), nn.ReLU(), nn.Linear(16, 4))
    plan = cimflow.compile(model, "rram-analog-generic", torch.randn(4, 32))
    return cimflow.simulate(plan, model, seed=seed)


def test_one_function_exported_from_sim_api_and_package_not_from_cost():
    assert cimflow.gather_stats is gather_stats is stats_gather_stats is cimflow.api.gather_stats
    assert not hasattr(cimflow.cost, "gather_stats")  # cost never imports sim


def test_statistics_are_plain_json_numbers_per_cim_layer_and_collection_switches_off():
    sim = _simulated()
    x = torch.randn(8, 32)
    stats = gather_stats(sim, [x, (x,)])
    assert set(stats) == {"0", "2"}
    json.dumps(stats, allow_nan=False)  # plain data: nothing of sim crosses into cost
    assert all(isinstance(v, (int, float)) for layer in stats.values() for v in layer.values())
    assert stats["0"]["input_elements"] == 2 * x.numel()
    # collection is off again: a further forward leaves the counts where they were
    sim(x)
    assert gather_stats(sim, [], reset=False)["0"]["input_elements"] == 2 * x.numel()
    # reset clears the earlier counts
    assert gather_stats(sim, [x])["0"]["input_elements"] == x.numel()


def test_a_model_without_cim_layers_is_refused_with_a_message():
    with pytest.raises(CimflowError, match="no CIM layers"):
        gather_stats(nn.Linear(4, 2), [torch.zeros(1, 4)])
