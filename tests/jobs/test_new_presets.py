"""Small real workloads on the presets of issue 13: each compiles, simulates and estimates, with
sanity bounds that could fail (DLRM pooling on the PIM tier, ...)."""

from __future__ import annotations

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
