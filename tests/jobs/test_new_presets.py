"""Small real workloads on the presets of issue 13: each compiles, simulates and estimates, with
sanity bounds that could fail (DLRM pooling on the PIM tier, ...)."""

from __future__ import annotations

import math

import pytest

from cimflow.chip import load_preset
from cimflow.chip.spec import Chip, Memory


# ---------------------------------------------------------------- DLRM embedding pooling on the PIM tier
def _one_stack_card() -> Chip:
    """hbm-pim-recsys with one HBM2-PIM stack (128 PCUs, 307.2 GB/s) and a digital unit wide enough
    that the card's own pooling never binds: the memory side decides."""
    chip = load_preset("hbm-pim-recsys")
    pim = chip.pim.model_copy(update={"units": 128, "bandwidth_bytes_per_s": 3.072e11, "capacity_bytes": 6 * 2**30})
    unit = chip.digital_unit.model_copy(update={"ops_per_cycle": 65536})
    return chip.model_copy(update={"pim": pim, "digital_unit": unit})


def _plain_dram_twin(chip: Chip) -> Chip:
    """The same card with the PIM stack replaced by plain DRAM of the same interface and capacity."""
    p = chip.pim
    dram = Memory(energy_per_bit_pj=p.internal_energy_per_bit_pj + p.external_energy_per_bit_pj, capacity_bytes=p.capacity_bytes,
                  bandwidth_bytes_per_s=p.bandwidth_bytes_per_s, row_activation_pj=p.row_activation_pj, stored_bits=p.stored_bits,
                  access_bytes=p.burst_bytes, source="test twin: the PIM stack without its compute units")
    return chip.model_copy(update={"pim": None, "dram": dram})


def _recsys(chip: Chip, skew: float) -> dict:
    from cimflow.jobs.recsys_config import RecsysConfig, run_recsys_config

    cfg = RecsysConfig(tables=(2_000_000,) * 8, dim=64, pooling=20, skew=skew, chip=chip, sample_queries=1024, quiet=True)
    return run_recsys_config(cfg)


@pytest.fixture(scope="module")
def pim_runs() -> dict[tuple[str, float], dict]:
    pim = _one_stack_card()
    plain = _plain_dram_twin(pim)
    return {(name, skew): _recsys(chip, skew) for name, chip in (("pim", pim), ("dram", plain)) for skew in (0.0, 1.2)}


def test_uniform_dram_bound_pooling_gets_faster_with_pim(pim_runs):
    plain, pim = pim_runs[("dram", 0.0)], pim_runs[("pim", 0.0)]
    assert plain["bound_by"] == "DRAM"
    # plain DRAM: 160 lookups x 128 B (64 FP16 values in 32 B bursts) per query at 307.2 GB/s
    lookups = sum(t["lookups_per_query"] * t["hit_fraction"]["dram"] for t in plain["tiers"])
    assert plain["qps"] == pytest.approx(3.072e11 / (lookups * 128), rel=1e-6)
    # with PIM only 8 pooled vectors leave the stack; the banks read 4x the interface's bandwidth
    assert pim["qps"] > 2.5 * plain["qps"]
    assert all(t["hit_fraction"]["pim"] > 0.99 for t in pim["tiers"])
    assert pim["utilization"]["PIM interface"] < 0.2
    assert pim["qps_per_w"] > plain["qps_per_w"]
    assert all(u <= 1 + 1e-9 for r in (plain, pim) for u in r["utilization"].values())


def test_hot_skewed_pooling_barely_changes_with_pim(pim_runs):
    plain, pim = pim_runs[("dram", 1.2)], pim_runs[("pim", 1.2)]
    sram_hits = [t["hit_fraction"]["sram"] for t in pim["tiers"]]
    assert min(sram_hits) > 0.6  # most lookups are hot rows served on the card
    assert plain["bound_by"] != "DRAM"
    assert 0.9 < pim["qps"] / plain["qps"] < 1.5
    # the speed-up on skewed access is far below the uniform one
    uni = pim_runs[("pim", 0.0)]["qps"] / pim_runs[("dram", 0.0)]["qps"]
    assert pim["qps"] / plain["qps"] < 0.6 * uni


# ---------------------------------------------------------------- keyword spotting on the NOR-flash preset
def _kws_model():
    """A keyword-spotting-sized 1-D CNN on MFCC-shaped input (10 coefficients x 49 frames, 12 classes)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(10, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool1d(4), nn.Flatten(), nn.Linear(32 * 12, 64), nn.ReLU(), nn.Linear(64, 12)).eval()


def test_keyword_spotting_on_nor_flash_compiles_simulates_and_runs_in_the_uw_to_mw_class():
    import torch

    import cimflow
    from cimflow.cost import estimate
    from cimflow.cost.estimate import leakage_power_w

    chip = load_preset("witmem-wtm2101")
    model = _kws_model()
    mfcc = torch.randn(64, 10, 49, generator=torch.Generator().manual_seed(1))  # synthetic MFCC-shaped frames
    plan = cimflow.compile(model, chip, mfcc[:1])
    assert {o.op_type for o in plan.ops if o.substrate == "array"} == {"Conv1d", "Linear"}
    assert not [o for o in plan.ops if o.substrate == "host" and o.op_type not in ("input", "output")]
    cost = estimate(plan, batch_size=1)
    assert math.isfinite(cost.energy_j) and cost.energy_j > 0
    # always-on keyword spotting: one inference per 20 ms hop, plus the chip's static power
    power = cost.energy_j * 50 + leakage_power_w(chip)
    assert 1e-6 < power < 1e-3 * chip.technology.supply_v  # uW class, below 1 mA at the supply (the SoC is sub-mA)
    assert cost.latency_s < 0.02  # keeps up with the hop
    sim = cimflow.simulate(plan, model, seed=0)
    with torch.no_grad():
        ref, out = model(mfcc), sim(mfcc)
    assert torch.isfinite(out).all()
    corr = torch.corrcoef(torch.stack([ref.flatten(), out.flatten()]))[0, 1]
    assert corr > 0.95  # 7-bit flash cells, 8-bit converters: the chip follows the float model closely
    assert (ref.argmax(1) == out.argmax(1)).float().mean() > 0.8


# ---------------------------------------------------------------- the digits CNN on the Nature 2020 memristor CNN
@pytest.fixture(scope="module")
def digits_cnn():
    import torch

    from cimflow.vision import load_digits_data, small_cnn, train_classifier

    torch.manual_seed(0)
    data = load_digits_data(seed=0)
    # a CNN small enough for eight 2,048-cell arrays, as [yao2020]'s five-layer mCNN was
    model = train_classifier(small_cnn(channels=4, hidden=16), data, epochs=30, seed=0).eval()
    return model, data


def test_digits_cnn_runs_entirely_on_eight_memristor_arrays(digits_cnn):
    import cimflow
    from cimflow.cost import estimate
    from cimflow.vision import accuracy

    model, data = digits_cnn
    chip = load_preset("tsinghua-mcnn-2020")
    plan = cimflow.compile(model, chip, data.x_test[:8])
    array_ops = [o for o in plan.ops if o.substrate == "array"]
    assert len(array_ops) == 4  # both convolutions and both linear layers in memristor arrays
    assert sum(o.arrays * o.replication for o in array_ops) <= chip.arrays_on_chip("rram") == 8
    cost = estimate(plan, batch_size=8)
    assert math.isfinite(cost.energy_j) and cost.energy_j > 0 and cost.tops_per_w > 0
    fp32 = accuracy(model, data.x_test, data.y_test)
    accs = sorted(accuracy(cimflow.simulate(plan, model, seed=seed, t="1d"), data.x_test, data.y_test) for seed in range(3))
    assert fp32 > 0.85
    # 3 % programming noise and 4-bit weights cost the typical instance a few points after a day;
    # a tiny 4-channel CNN is fragile to a stuck cell in the wrong place, so one instance may lose more
    assert accs[1] > fp32 - 0.1
    assert accs[0] > 0.5


def test_layer_granular_partition_on_the_mixed_rram_sram_chip(digits_cnn):
    import cimflow

    model, data = digits_cnn
    plan = cimflow.compile(model, "tsmc-mixed-rram-sram-2025", data.x_test[:8], rules={"0": "digital"})
    kinds = {o.name: o.array_kind for o in plan.ops if o.substrate == "array"}
    assert kinds["0"] == "sram_dcim"  # the sensitive first layer on exact SRAM CIM
    assert {kinds[n] for n in kinds if n != "0"} == {"rram_mlc"}  # the rest on MLC memristor arrays


def test_a_small_dlrm_with_its_tables_in_pim_compiles_simulates_and_estimates():
    import torch

    import cimflow
    from cimflow.cost import estimate
    from cimflow.recsys.models import DLRM, DLRMConfig

    torch.manual_seed(0)
    cfg = DLRMConfig(dense_features=13, table_sizes=(1000,) * 4, embedding_dim=16, bottom_mlp=(64, 16), top_mlp=(64, 1),
                     pooling_factors=(5,) * 4)
    model, b = DLRM(cfg).eval(), 32
    dense = torch.randn(b, 13)
    g = torch.Generator().manual_seed(0)
    sparse = [(torch.randint(0, 1000, (b * 5,), generator=g), torch.arange(0, b * 5 + 1, 5)) for _ in range(4)]
    # as cimflow recsys places them: the tables pool on the digital unit from the card's tiers (here all PIM)
    rules = {f"embeddings.{t}": "digital_unit" for t in range(4)}
    plan = cimflow.compile(model, "hbm-pim-recsys", (dense, sparse), rules=rules)
    assert {o.substrate for o in plan.ops if o.op_type == "EmbeddingBag"} == {"digital_unit"}
    with torch.no_grad():
        ref, out = model(dense, sparse), cimflow.simulate(plan, model, seed=0)(dense, sparse)
    assert (out - ref).abs().max() < 0.02  # exact pooling; int8 MLPs on SRAM CIM
    stats = {o.name: {"bags": b, "lookups": 5 * b, "hot_lookups": 0.0, "dram_lookups": 0.0, "pim_lookups": 5.0 * b}
             for o in plan.ops if o.op_type == "EmbeddingBag"}
    cost = estimate(plan, stats=stats, batch_size=b)
    assert cost.by_component["dram"] > 0 and math.isfinite(cost.energy_j)
    pim_events = sum(c.events.get("pim_vectors", 0.0) for c in cost.per_op)
    assert pim_events == pytest.approx(4 * b)  # one pooled vector per bag and table leaves the DRAM
