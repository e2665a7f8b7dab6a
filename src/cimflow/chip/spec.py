"""The hardware description: device -> array -> converters -> core -> chip, plus the host.

Pydantic v2 models; unknown keys are errors. Units are SI (siemens, seconds, volts,
hertz, joules, square metres) unless the field name says otherwise: the cost blocks
take the units engineers quote (``energy_pj``, ``area_um2``, ``latency_ns``) and
expose SI properties. This module knows nothing of PyTorch.

Every numeric field has a physically meaningful range (``ge``/``le`` below, the reason in
its description or comment): far enough out that every real or planned chip fits, close
enough that anything that validates compiles, simulates and estimates with finite numbers.
The common limits and the shared base model are in :mod:`cimflow.chip.spec_base`, the memory
tiers, links, board and host in :mod:`cimflow.chip.system_spec` (both re-exported here);
docs/guide.md lists them all ("Spec bounds").
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from cimflow.chip.spec_base import (
    MAX_AREA_UM2,
    MAX_ARRAYS_PER_CORE,
    MAX_BANDWIDTH_B_PER_S,
    MAX_BYTES,
    MAX_CORES,
    MAX_ENERGY_PJ,
    MAX_LEAKAGE_UW,
    MIN_BANDWIDTH_B_PER_S,
    Cost,
    StrictModel,
)
from cimflow.chip.system_spec import Board, Host, Interconnect, Link, Memory, Pim
from cimflow.errors import ChipSpecError

SCHEMA_VERSION: Literal[1] = 1

Technology = Literal["rram", "pcm", "sram", "nor_flash", "mram", "fefet"]


class ProgrammingNoise(StrictModel):
    """State-dependent programming noise, sampled once per chip instance.

    sigma(G) / g_max = sum_k coefficients[k] * (G / g_max)**k, in siemens after the
    multiplication by g_max. ``[0.02]`` is a constant 2 % of g_max; ``[0, 0.05]`` is 5 %
    of the target conductance.
    """

    coefficients: list[float] = Field(default_factory=lambda: [0.0])
    source: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ProgrammingNoise:
        if not self.coefficients:
            raise ValueError("coefficients must hold at least one number (use [0.0] for no noise)")
        if any(not math.isfinite(c) for c in self.coefficients):
            raise ValueError("coefficients must be finite numbers")
        # sigma is a fraction of g_max: a polynomial of degree <= 7 with |c_k| <= 10 keeps it
        # within 80 g_max (real cells: a few %), finite in float32 simulation.
        if len(self.coefficients) > 8:
            raise ValueError(f"coefficients: at most 8 (a polynomial of degree 7), got {len(self.coefficients)}")
        if any(abs(c) > 10 for c in self.coefficients):
            raise ValueError("coefficients must be within [-10, 10] (sigma is a fraction of g_max; real cells are a few %)")
        return self

    @property
    def is_zero(self) -> bool:
        return all(c == 0 for c in self.coefficients)


class Drift(StrictModel):
    """Power-law conductance drift G(t) = G(t0) * (t / t0) ** -nu, nu ~ N(nu_mean, nu_std).

    nu is drawn once per cell at programming time (clipped at 0). t is seconds after
    programming; t0 is the reference time at which programmed conductances are defined.
    """

    nu_mean: float = Field(default=0.0, ge=0, le=1)
    nu_std: float = Field(default=0.0, ge=0, le=1)
    t0_s: float = Field(default=1.0, ge=1e-12, le=1e9, description="reference time, s: 1 ps to 1e9 s (~30 years)")
    activation_energy_ev: float = Field(
        default=0.0, ge=0, le=5,
        description="Arrhenius activation energy of drift/retention, eV (0: no temperature dependence); see docs/devices.md")
    source: str | None = None

    @property
    def is_zero(self) -> bool:
        return self.nu_mean == 0 and self.nu_std == 0


class ArrayYield(StrictModel):
    """Array yield: each physical row (column) of an array is dead with the given probability;
    up to ``spare_rows`` dead rows per array are repaired by spare rows, the rest (and every
    dead column) leave their cells stuck at g_min."""

    dead_row_rate: float = Field(default=0.0, ge=0, le=1, description="probability that a row is dead")
    dead_col_rate: float = Field(default=0.0, ge=0, le=1, description="probability that a column is dead")
    spare_rows: int = Field(default=0, ge=0, le=65536, description="spare rows per array that repair dead rows")
    source: str | None = None

    @property
    def is_zero(self) -> bool:
        return self.dead_row_rate == 0 and self.dead_col_rate == 0


class Device(StrictModel):
    """A memory cell: its conductance window, levels and non-idealities.

    This is the ``generic`` device model; ``model: pcm`` etc. select a technology's own model
    (:mod:`cimflow.chip.devices`), a subclass with its own fields."""

    model: Literal["generic"] = "generic"
    technology: Technology
    g_min: float = Field(ge=0, le=1, description="lowest programmable conductance, siemens: 0 to 1 S")
    g_max: float = Field(ge=1e-12, le=1, description="highest programmable conductance, siemens: 1 pS (1 TOhm) to 1 S (1 Ohm)")
    levels: int | None = Field(default=None, ge=2, le=1 << 24, description="programmable levels per cell")
    bits_per_cell: int | None = Field(default=None, ge=1, le=24)
    programming_noise: ProgrammingNoise = Field(default_factory=ProgrammingNoise)
    read_noise: float = Field(default=0.0, ge=0, le=1, description="sigma of one read, as a fraction of the cell's conductance")
    drift: Drift = Field(default_factory=Drift)
    stuck_on_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of cells stuck at g_max")
    stuck_off_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of cells stuck at g_min")
    write: Cost = Field(default_factory=Cost, description="one programming pulse")
    temperature_k: float = Field(default=300.0, ge=1, le=1000, description="operating temperature, kelvin: 1 to 1000 K")
    endurance_cycles: float | None = Field(
        default=None, ge=1, le=1e16, description="write cycles a cell survives (None: unlimited), at least 1")
    array_yield: ArrayYield = Field(default_factory=ArrayYield)
    source: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Device:
        if self.g_max <= self.g_min:
            raise ValueError(f"g_max ({self.g_max:g} S) must be greater than g_min ({self.g_min:g} S)")
        if self.levels is not None and self.bits_per_cell is not None and self.levels != 2**self.bits_per_cell:
            raise ValueError(f"give levels or bits_per_cell, not both (levels={self.levels}, bits_per_cell={self.bits_per_cell})")
        if self.stuck_on_rate + self.stuck_off_rate > 1:
            raise ValueError("stuck_on_rate + stuck_off_rate must be at most 1")
        return self

    @property
    def n_levels(self) -> int:
        """Number of programmable conductance levels (2 when neither field is given)."""
        if self.levels is not None:
            return self.levels
        if self.bits_per_cell is not None:
            return 2**self.bits_per_cell
        return 2

    @property
    def is_ideal(self) -> bool:
        return (
            self.programming_noise.is_zero
            and self.read_noise == 0
            and self.drift.is_zero
            and self.stuck_on_rate == 0
            and self.stuck_off_rate == 0
            and self.array_yield.is_zero
        )


class WeightEncoding(StrictModel):
    """How a signed weight becomes conductances.

    - ``differential``: a pair of cells (G+, G-) on two columns, currents subtracted in
      analog before the ADC; |w| on one cell, g_min on the other.
    - ``offset``: one cell per weight, w mapped around the window's midpoint; a shared
      reference column at the midpoint is subtracted in analog.
    - ``bit_sliced``: the weight magnitude split over ``slices`` cells of increasing
      significance (each ``log2(levels)`` bits), each slice digitized separately and
      shift-added; sign by a differential pair per slice.
    """

    scheme: Literal["differential", "offset", "bit_sliced"] = "differential"
    slices: int = Field(default=1, ge=1, le=16)

    @model_validator(mode="after")
    def _check(self) -> WeightEncoding:
        if self.scheme != "bit_sliced" and self.slices != 1:
            raise ValueError(f"slices={self.slices} needs scheme 'bit_sliced' (scheme is {self.scheme!r})")
        return self


class InputEncoding(StrictModel):
    """How an input vector drives the word lines.

    - ``bit_serial``: ``bits`` (sign included) sent ``bits_per_pulse`` at a time; every
      pulse is one array read whose partial sums are digitized and shift-added.
    - ``dac``: a multi-level DAC of ``bits`` drives each row in one read.

    ``range``: ``per_vector_max`` scales each input vector by its own absolute maximum
    in the digital periphery (undone after the ADC); ``calibrated`` uses one fixed range
    per layer set by :func:`cimflow.calibrate` on data.
    """

    scheme: Literal["bit_serial", "dac"] = "dac"
    bits: int = Field(default=8, ge=1, le=24, description="input precision, sign included")
    bits_per_pulse: int = Field(default=1, ge=1, le=16)
    range: Literal["per_vector_max", "calibrated"] = "per_vector_max"
    dac: Cost = Field(default_factory=Cost, description="one row driven for one read (DAC or word-line driver)")

    @model_validator(mode="after")
    def _check(self) -> InputEncoding:
        if self.scheme == "bit_serial" and self.bits_per_pulse > max(self.bits - 1, 1):
            raise ValueError(f"bits_per_pulse ({self.bits_per_pulse}) must not exceed the magnitude bits (bits - 1 = {self.bits - 1})")
        return self

    @property
    def pulses(self) -> int:
        """Array reads per input vector."""
        if self.scheme == "dac":
            return 1
        return math.ceil(max(self.bits - 1, 1) / self.bits_per_pulse)


class ADC(StrictModel):
    """The converter that digitizes each array column's partial sum.

    ``range``:
    - ``fixed``: full scale = ``full_scale`` x the rows driven in one read
      (``max_active_rows``, else ``rows``), in units of one fully-on cell driven at full
      input (1.0 covers every possible partial sum);
    - ``expected`` (default): from the expected column-current statistics, mean + ``sigmas``
      standard deviations of each column's partial sum for the programmed weights and the
      assumed input statistics (:func:`cimflow.sim.array_state.expected_full_scale`), the
      largest column of each array, never above the worst case; with calibration data
      (:func:`cimflow.calibrate`), mean + ``sigmas`` standard deviations of the partial sums seen;
    - ``per_array_max``: the worst case, the largest partial sum the programmed array can produce;
    - ``percentile``: the ``percentile``-th percentile of |partial sums| seen on
      calibration data (:func:`cimflow.calibrate`); per_array_max until calibrated.
    """

    bits: int = Field(ge=1, le=24, description="resolution; 24 is float32-exact (no quantization)")
    columns_per_adc: int = Field(
        default=1, ge=1, le=1 << 16,
        description="physical columns sharing one converter (time-multiplexed); a differential or slice pair is converted once")
    range: Literal["expected", "fixed", "per_array_max", "percentile"] = "expected"
    full_scale: float = Field(default=1.0, gt=0, le=1)
    sigmas: float = Field(default=4.0, ge=1, le=16, description="range 'expected': standard deviations above the mean, 1 to 16")
    percentile: float = Field(default=99.99, gt=0, le=100)
    conversion: Cost = Field(default_factory=Cost, description="one conversion")
    energy_quoted_at_bits: int | None = Field(
        default=None, ge=1, le=24,
        description="resolution at which conversion.energy_pj was measured (default: bits); other resolutions follow the converter law",
    )


class ArrayReadCost(StrictModel):
    """Electrical parameters of one array read (the cost model's inputs)."""

    read_voltage: float = Field(default=0.2, ge=1e-3, le=5, description="volts across a cell during a read: 1 mV to 5 V")
    read_pulse_s: float = Field(default=10e-9, ge=1e-12, le=1e-3, description="read (integration) time, seconds: 1 ps to 1 ms")
    line_capacitance_f: float = Field(
        default=0.2e-15, ge=0, le=1e-12,
        description="word/bit-line capacitance per cell, farads: at most 1 pF")
    area_per_cell_um2: float | None = Field(default=None, ge=0, le=1e4, description="um^2 per cell, at most 1e4 (100 um x 100 um)")
    source: str | None = None


class AdderTree(StrictModel):
    """Digital CIM: the adder tree and accumulator behind each column."""

    energy_per_bit_op_pj: float = Field(
        default=0.0, ge=0, le=MAX_ENERGY_PJ,
        description="energy per 1-bit x 1-bit multiply-accumulate, pJ (at most 1e6)")
    area_um2: float | None = Field(default=None, ge=0, le=MAX_AREA_UM2)
    source: str | None = None


class ArraySpec(StrictModel):
    """One kind of array on the chip: analog (ADC) or digital CIM (exact adder tree)."""

    kind: Literal["analog", "digital"] = "analog"
    device: SerializeAsAny[Device]  # a Device or a model's subclass (cimflow.chip.devices)
    rows: int = Field(ge=1, le=1 << 16)
    cols: int = Field(ge=1, le=1 << 16)
    weight_encoding: WeightEncoding = Field(default_factory=WeightEncoding)
    input_encoding: InputEncoding = Field(default_factory=InputEncoding)
    adc: ADC | None = None
    weight_bits: int | None = Field(default=None, ge=1, le=24, description="digital CIM: weight precision, sign included")
    weight_scaling: Literal["per_column", "per_layer"] = "per_column"
    wire_resistance: float = Field(
        default=0.0, ge=0, le=1e6,
        description="ohms per cell segment of word and bit line (IR drop): at most 1 MOhm")
    max_active_rows: int | None = Field(default=None, ge=1, le=1 << 16, description="rows that may be driven in one read (None: all)")
    read: ArrayReadCost = Field(default_factory=ArrayReadCost)
    adder_tree: AdderTree | None = None
    source: str | None = None

    @field_validator("device", mode="before")
    @classmethod
    def _device_model(cls, value: object) -> object:
        from cimflow.chip.devices import parse_device  # the models subclass Device: imported when used

        return parse_device(value)

    @model_validator(mode="after")
    def _check(self) -> ArraySpec:
        if self.kind == "analog":
            if self.adc is None:
                raise ValueError("an analog array needs an 'adc' block (bits, range, ...)")
        else:
            if self.adc is not None:
                raise ValueError("a digital array has no ADC (its adder tree is exact): remove 'adc'")
            if self.weight_bits is None:
                raise ValueError("a digital array needs 'weight_bits'")
        if self.weight_encoding.scheme == "differential" or self.weight_encoding.scheme == "bit_sliced":
            if self.cols < 2:
                raise ValueError("differential and bit-sliced encodings need at least 2 columns")
        if self.weight_encoding.scheme == "bit_sliced" and self.device.n_levels ** self.weight_encoding.slices > 1 << 24:
            raise ValueError(f"bit-sliced weights of {self.weight_encoding.slices} slices x {self.device.n_levels} levels resolve "
                             f"{self.device.n_levels}^{self.weight_encoding.slices} steps: at most 2^24 (float32-exact) are allowed")
        if self.adc is not None and self.adc.columns_per_adc > self.cols:
            raise ValueError(f"adc.columns_per_adc ({self.adc.columns_per_adc}) cannot exceed cols ({self.cols})")
        if self.max_active_rows is not None and self.max_active_rows > self.rows:
            raise ValueError(f"max_active_rows ({self.max_active_rows}) cannot exceed rows ({self.rows})")
        return self

    def analog_adc(self) -> ADC:
        """The ADC of an analog array (validation gives every analog array one)."""
        if self.adc is None:
            raise ChipSpecError(f"a {self.kind} array has no ADC; only analog arrays convert through one")
        return self.adc

    @property
    def cells_per_weight(self) -> int:
        """Physical cells that store one weight (the reference column not counted)."""
        if self.kind == "digital":
            return self.weight_bits or 1
        enc = self.weight_encoding
        if enc.scheme == "differential":
            return 2
        if enc.scheme == "offset":
            return 1
        return 2 * enc.slices

    @property
    def weight_columns(self) -> int:
        """Logical weight columns one array holds."""
        if self.kind == "digital":
            return max(self.cols // (self.weight_bits or 1), 1)
        enc = self.weight_encoding
        if enc.scheme == "offset":
            return max(self.cols - 1, 1)
        return max(self.cols // self.cells_per_weight, 1)


class Core(StrictModel):
    """A core groups arrays with a buffer; the chip has ``count`` identical cores."""

    count: int = Field(ge=1, le=MAX_CORES, description="cores on the chip: at most 1e5 (wafer-scale engines have ~1e6 tiny cores)")
    arrays: dict[str, int] = Field(description="arrays per core, by array-kind name (each 1 to 1e5)")
    buffer_bytes: int = Field(default=0, ge=0, le=MAX_BYTES, description="bytes per core, at most 1e15")

    @model_validator(mode="after")
    def _check(self) -> Core:
        if not self.arrays:
            raise ValueError("a core needs at least one array kind")
        for name, n in self.arrays.items():
            if n < 1 or n > MAX_ARRAYS_PER_CORE:
                raise ValueError(f"arrays[{name!r}] must be within [1, {MAX_ARRAYS_PER_CORE}], got {n}")
        return self


class DigitalUnit(StrictModel):
    """The digital vector unit (activations, normalization, pooling, dynamic matmuls)."""

    ops_per_cycle: int = Field(default=64, ge=1, le=10**7, description="operations per clock cycle, at most 1e7")
    energy_per_op_pj: float = Field(default=0.05, ge=0, le=MAX_ENERGY_PJ)
    area_um2: float | None = Field(default=None, ge=0, le=MAX_AREA_UM2)
    leakage_uw: float | None = Field(
        default=None, ge=0, le=MAX_LEAKAGE_UW,
        description="static power of the whole unit, microwatts (at most 10 W)")
    source: str | None = None


class TechnologyNode(StrictModel):
    node_nm: float = Field(ge=1, le=1000, description="feature size, nm: 1 to 1000 (every CMOS node since 1985)")
    supply_v: float = Field(ge=0.1, le=5, description="supply, volts: 0.1 (near-threshold) to 5")


class Roles(StrictModel):
    """Which array kind serves which operator class by default."""

    mvm: str = Field(description="array kind for Linear / Conv weights")
    embedding: str | None = Field(default=None, description="array kind for embedding tables (defaults to mvm)")
    digital: str | None = Field(default=None, description="digital CIM array kind, target of 'keep digital' and sensitivity moves")


class Chip(StrictModel):
    """A complete chip description (what a YAML file or a preset holds)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    description: str = ""
    technology: TechnologyNode
    clock_hz: float = Field(ge=1e3, le=1e11, description="digital clock, Hz: 1 kHz to 100 GHz")
    arrays: dict[str, ArraySpec]
    roles: Roles
    cores: Core
    digital_unit: DigitalUnit = Field(default_factory=DigitalUnit)
    buffer: Memory | None = None
    interconnect: Interconnect = Field(default_factory=Interconnect)
    dram: Memory | None = None
    pim: Pim | None = Field(default=None, description="near-memory compute DRAM tier (HBM-PIM / AiM): rows pooled in the banks")
    host: Host | None = Field(default=None, description="the host that runs host operators (default: cimflow's server CPU preset)")
    host_link: Link | None = Field(default=None, description="chip-to-host link (default: PCIe Gen4 x16, see cimflow.cost.system)")
    chip_link: Link | None = Field(default=None, description="chip-to-chip link of a multi-chip system (default: see cimflow.cost.system)")
    board: Board | None = Field(default=None, description="card-level static power and the default leakage density")
    sources: dict[str, str] = Field(default_factory=dict, description="citation keys used in 'source' fields")
    assumptions: list[str] = Field(default_factory=list, description="assumptions made where the source is silent, with reasons")

    @model_validator(mode="after")
    def _check(self) -> Chip:
        if not self.arrays:
            raise ValueError("a chip needs at least one array kind under 'arrays'")
        known = sorted(self.arrays)
        for kind in self.cores.arrays:
            if kind not in self.arrays:
                raise ValueError(f"cores.arrays names array kind {kind!r}, but the chip has only {known}")
        for role, role_kind in (("mvm", self.roles.mvm), ("embedding", self.roles.embedding), ("digital", self.roles.digital)):
            if role_kind is not None and role_kind not in self.arrays:
                raise ValueError(f"roles.{role} names array kind {role_kind!r}, but the chip has only {known}")
            if role_kind is not None and role_kind not in self.cores.arrays:
                raise ValueError(f"roles.{role} names array kind {role_kind!r}, but cores.arrays places none on the chip")
        if self.roles.digital is not None and self.arrays[self.roles.digital].kind != "digital":
            raise ValueError(f"roles.digital must name a digital array kind; {self.roles.digital!r} is analog")
        return self

    def array(self, kind: str) -> ArraySpec:
        if kind not in self.arrays:
            raise ChipSpecError(f"chip {self.name!r} has no array kind {kind!r}; it has {sorted(self.arrays)}")
        return self.arrays[kind]

    def arrays_on_chip(self, kind: str) -> int:
        """Total arrays of one kind on the chip (cores x arrays per core)."""
        return self.cores.count * self.cores.arrays.get(kind, 0)

    @property
    def embedding_kind(self) -> str:
        return self.roles.embedding or self.roles.mvm


__all__ = [
    "ADC", "MAX_AREA_UM2", "MAX_ARRAYS_PER_CORE", "MAX_BANDWIDTH_B_PER_S", "MAX_BYTES", "MAX_CORES", "MAX_ENERGY_PJ",
    "MAX_LEAKAGE_UW", "MIN_BANDWIDTH_B_PER_S", "SCHEMA_VERSION", "AdderTree", "ArrayReadCost", "ArraySpec", "ArrayYield",
    "Board", "Chip", "Core", "Cost", "Device", "DigitalUnit", "Drift", "Host", "InputEncoding", "Interconnect", "Link",
    "Memory", "Pim", "ProgrammingNoise", "Roles", "StrictModel", "Technology", "TechnologyNode", "WeightEncoding",
]
