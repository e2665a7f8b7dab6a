"""What every chip spec model shares: the strict pydantic base, the per-event cost block and
the common physical limits (the bounds rationale: :mod:`cimflow.chip.spec`'s docstring).

Imported by :mod:`cimflow.chip.spec` (the array side) and :mod:`cimflow.chip.system_spec`
(memories, links, host); both re-export through ``cimflow.chip.spec``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Shared physical limits (see the module docstring). Energies per event: 1 uJ is beyond any
# single circuit event (a DRAM row activation is ~1 nJ). Areas: 1e11 um^2 = 0.1 m^2, more than a
# 300 mm wafer. Static power: 10 W per instance or per unit. Capacities: 1 PB. Bandwidths:
# 1 kB/s to 1 PB/s (HBM3 is ~1e12 B/s per stack).
MAX_ENERGY_PJ = 1e6
MAX_AREA_UM2 = 1e11
MAX_LEAKAGE_UW = 1e7
MAX_BYTES = 10**15
MIN_BANDWIDTH_B_PER_S = 1e3
MAX_BANDWIDTH_B_PER_S = 1e15
# Cores: wafer-scale engines have ~1e6 tiny cores; 1e5 cores x 1e5 arrays covers any CIM chip.
MAX_CORES = 100_000
MAX_ARRAYS_PER_CORE = 100_000


class StrictModel(BaseModel):
    """Base of every spec model: unknown keys refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Cost(StrictModel):
    """Per-event energy, area and latency of one component, in engineers' units.

    ``energy_pj`` is per event (one conversion, one access, one bit ...) as the owning
    field documents; ``leakage_uw`` is static power per instance.
    """

    energy_pj: float | None = Field(default=None, ge=0, le=MAX_ENERGY_PJ, description="pJ per event, at most 1e6 (1 uJ)")
    area_um2: float | None = Field(default=None, ge=0, le=MAX_AREA_UM2, description="um^2 per instance, at most 1e11 (0.1 m^2)")
    latency_ns: float | None = Field(default=None, ge=0, le=1e9, description="ns per event, at most 1e9 (1 s)")
    leakage_uw: float | None = Field(default=None, ge=0, le=MAX_LEAKAGE_UW, description="uW per instance, at most 1e7 (10 W)")
    source: str | None = None

    @property
    def energy_j(self) -> float:
        return (self.energy_pj or 0.0) * 1e-12

    @property
    def area_m2(self) -> float:
        return (self.area_um2 or 0.0) * 1e-12

    @property
    def latency_s(self) -> float:
        return (self.latency_ns or 0.0) * 1e-9
