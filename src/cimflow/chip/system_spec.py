"""The chip's surroundings in a spec: buffer and DRAM tiers, the PIM DRAM tier, host and
chip-to-chip links, the board, the on-chip interconnect and the host.

Re-exported by :mod:`cimflow.chip.spec` (import them from there); limits: :mod:`cimflow.chip.spec_base`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cimflow.chip.spec_base import MAX_BANDWIDTH_B_PER_S, MAX_BYTES, MAX_ENERGY_PJ, MIN_BANDWIDTH_B_PER_S, StrictModel


class Memory(StrictModel):
    """A buffer or memory level: per-bit energy, capacity, bandwidth."""

    energy_per_bit_pj: float = Field(ge=0, le=MAX_ENERGY_PJ, description="pJ per bit moved (DRAM ~20-40), at most 1e6")
    capacity_bytes: int | None = Field(default=None, ge=0, le=MAX_BYTES, description="bytes, at most 1e15 (1 PB)")
    bandwidth_bytes_per_s: float | None = Field(
        default=None, ge=MIN_BANDWIDTH_B_PER_S, le=MAX_BANDWIDTH_B_PER_S,
        description="bytes/s: 1e3 to 1e15")
    row_activation_pj: float = Field(
        default=0.0, ge=0, le=MAX_ENERGY_PJ,
        description="DRAM: energy per random row activation (~1000 pJ), at most 1e6")
    area_um2_per_kib: float | None = Field(default=None, ge=0, le=1e8, description="um^2 per KiB (SRAM ~1e3-1e4), at most 1e8")
    leakage_uw_per_kib: float | None = Field(
        default=None, ge=0, le=1e4,
        description="static power per KiB held on chip, microwatts (buffers), at most 1e4")
    stored_bits: int | None = Field(
        default=None, ge=1, le=64,
        description="DRAM: bits per embedding value as stored (8 = int8 rows); None = 32 (fp32). Sets bytes per row fetched",
    )
    access_bytes: int = Field(
        default=64, ge=1, le=1 << 20,
        description="DRAM: smallest transfer (one burst), bytes; a row read moves whole bursts")
    source: str | None = None


class Pim(StrictModel):
    """Near-memory compute in DRAM (HBM-PIM / AiM class): a DRAM tier whose banks pool rows.

    ``units`` compute units (one per bank or bank pair), each reading ``access_bytes`` from its
    bank per ``clock_hz`` cycle and adding ``lanes`` values per cycle. Embedding rows placed in this
    tier are pooled inside the DRAM; only pooled vectors (``result_bits`` per value) cross the
    external interface (``bandwidth_bytes_per_s``, whole ``burst_bytes``). Internal bank
    bandwidth = units x access_bytes x clock_hz. Rows are stored at ``stored_bits`` per value and
    striped across units, so one bag's slice of a row is summed by the unit that holds it.
    The cost law is :mod:`cimflow.cost.system` (``pim_*`` resources) and the energy is the DRAM
    tier's in :func:`cimflow.cost.estimate.estimate`.
    """

    name: str | None = None
    capacity_bytes: int = Field(ge=1, le=MAX_BYTES, description="bytes in the PIM tier, at most 1e15")
    bandwidth_bytes_per_s: float = Field(
        ge=MIN_BANDWIDTH_B_PER_S, le=MAX_BANDWIDTH_B_PER_S,
        description="external interface, bytes/s (HBM2 stack ~3.07e11): 1e3 to 1e15")
    units: int = Field(ge=1, le=10**7, description="compute units working in parallel (one per bank or bank pair)")
    lanes: int = Field(default=16, ge=1, le=4096, description="values one unit adds per cycle (SIMD width)")
    clock_hz: float = Field(ge=1e6, le=1e10, description="compute-unit clock, Hz: 1 MHz to 10 GHz")
    access_bytes: int = Field(default=32, ge=1, le=4096, description="bytes one unit reads from its bank per cycle")
    burst_bytes: int = Field(default=32, ge=1, le=4096, description="smallest external transfer, bytes")
    stored_bits: int = Field(default=16, ge=1, le=64, description="bits per embedding value as stored in the banks")
    result_bits: int = Field(default=16, ge=1, le=64, description="bits per pooled value sent out")
    energy_per_op_pj: float = Field(default=0.0, ge=0, le=MAX_ENERGY_PJ, description="one lane add/MAC, pJ")
    internal_energy_per_bit_pj: float = Field(
        default=0.0, ge=0, le=MAX_ENERGY_PJ, description="bank read to the unit (no I/O), pJ per bit")
    external_energy_per_bit_pj: float = Field(
        default=0.0, ge=0, le=MAX_ENERGY_PJ, description="one bit over the external interface, pJ")
    row_activation_pj: float = Field(default=0.0, ge=0, le=MAX_ENERGY_PJ, description="one random row activation, pJ")
    source: str | None = None

    @property
    def internal_bandwidth_bytes_per_s(self) -> float:
        """Aggregate bank bandwidth the units see: units x access_bytes x clock."""
        return self.units * self.access_bytes * self.clock_hz

    @property
    def ops_per_s(self) -> float:
        """Lane operations (adds or MACs) per second over all units."""
        return self.units * self.lanes * self.clock_hz


class Link(StrictModel):
    """A link between the chip and its host (PCIe, CXL) or between two chips.

    ``bandwidth_bytes_per_s`` is per direction (links are full duplex); ``energy_per_bit_pj``
    is for one bit moved end to end (both PHYs).
    """

    name: str | None = None
    bandwidth_bytes_per_s: float = Field(
        ge=MIN_BANDWIDTH_B_PER_S, le=1e13,
        description="per direction, bytes/s (PCIe Gen4 x16 ~ 32e9): 1e3 to 1e13")
    energy_per_bit_pj: float = Field(default=0.0, ge=0, le=1e4, description="energy per bit moved, pJ")
    latency_ns: float = Field(default=0.0, ge=0, le=1e9, description="one-way latency, ns")
    source: str | None = None


class Board(StrictModel):
    """What the chip's card spends beyond the chip's own dynamic energy.

    ``static_power_w``: fixed power of the card whatever the load (DRAM refresh and
    background, regulators, controller), watts. ``leakage_w_per_mm2``: the chip's static
    power density, used when the arrays, converters and buffers state no leakage of their own.
    """

    static_power_w: float = Field(default=0.0, ge=0, le=1e4, description="watts, at most 1e4 (a rack's worth)")
    leakage_w_per_mm2: float | None = Field(default=None, ge=0, le=10, description="W per mm^2 of chip area")
    source: str | None = None


class Interconnect(StrictModel):
    energy_per_bit_hop_pj: float = Field(default=0.0, ge=0, le=MAX_ENERGY_PJ, description="pJ per bit per hop, at most 1e6")
    bandwidth_bytes_per_s: float | None = Field(
        default=None, ge=MIN_BANDWIDTH_B_PER_S, le=MAX_BANDWIDTH_B_PER_S,
        description="bytes/s: 1e3 to 1e15")
    source: str | None = None


class Host(StrictModel):
    """The host the chip is attached to: it runs the operators a plan leaves on the host.

    ``preset`` names one of cimflow's host presets (``cimflow.cost.host.host_presets()``); the
    other fields override it, or, without a preset, describe the host in full (``name``,
    ``peak_gflops``, ``memory_bandwidth_gb_per_s`` and ``power_w`` are then required).
    """

    preset: str | None = None
    name: str | None = None
    kind: Literal["cpu", "gpu"] | None = None
    peak_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, description="FP32 peak, GFLOP/s: 1 MFLOP/s to 1 EFLOP/s")
    memory_bandwidth_gb_per_s: float | None = Field(default=None, ge=1e-6, le=1e6, description="GB/s: 1 kB/s to 1 PB/s")
    power_w: float | None = Field(default=None, ge=1e-3, le=1e6, description="active power, watts: 1 mW to 1 MW")
    cores: int | None = Field(default=None, ge=1, le=10**7)
    memory_energy_per_bit_pj: float | None = Field(default=None, ge=0, le=MAX_ENERGY_PJ)
    row_activation_pj: float | None = Field(default=None, ge=0, le=MAX_ENERGY_PJ)
    op_overhead_us: float | None = Field(default=None, ge=0, le=1e6, description="fixed dispatch time per operator, us (at most 1 s)")
    source: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Host:
        if self.preset is None:
            missing = [f for f in ("name", "peak_gflops", "memory_bandwidth_gb_per_s", "power_w") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a host without 'preset' must give {', '.join(missing)}")
        return self
