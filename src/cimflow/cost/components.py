"""Per-event energies and per-instance areas of the chip's components (SI units).

Every function here is a closed form of chip-spec numbers; :mod:`cimflow.cost.estimate`
multiplies them by event counts taken from a :class:`~cimflow.compile.plan.Plan`.

Technology scaling (docs/architecture.md: capacitance ∝ node, energy ∝ C V²) uses
:func:`cimflow.cost.technology.switching_energy_scale`. A constant quoted at one design
point (node ``L0``, supply ``V0``) is re-targeted to the chip's node and supply with
:func:`retarget_energy`::

    E(L, V) = E(L0, V0) * (L / L0) * (V / V0) ** 2

and an area quoted in F² (F = the node) with :func:`f2_area_m2`. Numbers that the chip
preset gives (``energy_pj``, ``area_um2``) are used as given: presets already state them
at the chip's own node and supply. The built-in defaults below are used only where a
preset is silent; each names its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cimflow.chip.spec import ADC, ArraySpec, Chip, Memory
from cimflow.cost.adc_law import (
    ADC_ENOB_LOSS_BITS,
    ADC_REFERENCE_YEAR,
    ADC_SCHREIER_FOM_DB,
    adc_thermal_energy_j,
    load_adc_law,
)
from cimflow.cost.cell_tech import CELL_LAWS, cell_fill, cell_law, charge_read_energy_j, default_cell_area_m2
from cimflow.cost.technology import feature_area_m2, switching_energy_scale

# ----------------------------------------------------------------------------- constants

#: Horowitz, ISSCC 2014: the energies of his 45 nm table, quoted at 0.9 V.
HOROWITZ_NODE_M = 45e-9
HOROWITZ_SUPPLY_V = 0.9
#: 8-bit integer add, 45 nm / 0.9 V [Horowitz 2014], joules.
INT8_ADD_J = 0.03e-12
#: 32-bit integer add, 45 nm / 0.9 V [Horowitz 2014], joules.
INT32_ADD_J = 0.1e-12

#: Converters without a chip energy follow the law fitted to B. Murmann's ADC Performance
#: Survey (:mod:`cimflow.cost.adc_law`, ``CostOptions.adc_law``). The constant Walden figure of
#: merit below is the alternative a user may ask for (``CostOptions.adc_fom_j_per_step``),
#: joules per conversion step at 28 nm / 0.9 V: ``E_conversion = FOM * 2**bits``. 5 fJ/step
#: gives 1.3 pJ at 8 bits, between the best (~0.3-1 pJ) and the median (~3 pJ per conversion
#: at 4-8 ENOB) of 22-32 nm Nyquist converters in the survey.
ADC_FOM_J_PER_STEP = 5e-15
ADC_FOM_NODE_M = 28e-9
ADC_FOM_SUPPLY_V = 0.9

#: Digital SRAM CIM energy per 1-bit x 1-bit MAC, joules, at 22 nm / 0.72 V: 1.40 fJ, from
#: 89 TOPS/W at 4b x 4b of Chih et al., ISSCC 2021 (see sram-digital-22nm.yaml).
DCIM_BIT_OP_J = 1.4045e-15
DCIM_NODE_M = 22e-9
DCIM_SUPPLY_V = 0.72

#: Default cell area of an analog RRAM cell (1T1R), in F²: 100 F², the assumption of
#: hybrid-rram-sram-28nm.yaml (0.078 um^2 at 28 nm). Each technology has its own
#: (:data:`cimflow.cost.cell_tech.CELL_LAWS`); used only when read.area_per_cell_um2 is missing.
ANALOG_CELL_AREA_F2 = CELL_LAWS["rram"].area_f2
#: Default area per stored bit of a digital SRAM CIM macro, adder trees included, in F²:
#: 3.07 um^2 at 22 nm (derived from Chih et al., ISSCC 2021, 16.3 TOPS/mm^2; see
#: sram-digital-22nm.yaml) = 6,343 F².
DIGITAL_CELL_AREA_F2 = 3.07e-12 / (22e-9) ** 2
#: Default ADC area per conversion step, in F²: ``A = 2,000 F² * 2**bits`` (cimflow's macro
#: fit to data/imc_macros.csv gives ~2,070 F² per step; see docs/cost_model.md). Used only
#: when adc.conversion.area_um2 is missing.
ADC_AREA_F2_PER_STEP = 2000.0
#: Default SRAM buffer area per bit, in F²: a 6T bit cell of ~160 F² (0.127 um^2 at 28 nm,
#: TSMC's high-density 28 nm cell) over a 70 % array efficiency = 230 F² per bit.
SRAM_BUFFER_AREA_F2_PER_BIT = 160.0 / 0.7

PJ = 1e-12
UM2 = 1e-12


# ----------------------------------------------------------------------------- scaling

def retarget_energy(energy_j: float, from_node_m: float, from_supply_v: float, to_node_m: float, to_supply_v: float) -> float:
    """Re-target an energy quoted at (``from_node_m``, ``from_supply_v``) to another node and
    supply by C V² scaling: ``E * (L / L0) * (V / V0)**2`` (joules)."""
    return energy_j * switching_energy_scale(to_node_m, to_supply_v, 1.0, from_node_m, from_supply_v)


def f2_area_m2(f2: float, node_m: float) -> float:
    """An area of ``f2`` F² at ``node_m`` (metres), in square metres."""
    return f2 * feature_area_m2(node_m)


def chip_node_m(chip: Chip) -> float:
    """The chip's node in metres."""
    return chip.technology.node_nm * 1e-9


# ----------------------------------------------------------------------------- cells and lines

def mean_cell_conductance(spec: ArraySpec, weight_fill: float) -> float:
    """Mean conductance of a used cell, siemens.

    ``weight_fill`` is the mean ``|w| / w_max`` of the stored weights (0..1; 0.5 when no
    statistics are known). A cell carrying magnitude ``m`` sits at ``g_min + (g_max - g_min) m``:

    * differential / bit-sliced: one cell of each pair at ``|w|``, the other at 0:
      mean fill = ``weight_fill / 2``;
    * offset: each cell at ``0.5 + w/2`` (the reference column at 0.5): mean fill 0.5,
      independent of the weights (signed weights average out).
    """
    dev = spec.device
    return dev.g_min + (dev.g_max - dev.g_min) * cell_fill(spec, weight_fill)


def cell_read_energy_j(spec: ArraySpec, supply_v: float, weight_fill: float) -> tuple[float, float]:
    """(conduction, line charging) energy of one driven cell in one analog read, joules.

    * conduction: ``G_mean * V_read**2 * t_read`` (ohmic cell current for the read pulse); a
      charge-domain cell (:mod:`cimflow.cost.cell_tech`) has no static current: its capacitor,
      ``C_cell * V_supply**2 * fill``, takes this place;
    * line charging: ``C_cell * V_supply**2`` with ``C_cell = read.line_capacitance_f``, the
      line capacitance a cell adds; it stands for the bit-line segment at each driven cell
      (the word line is the driver's, see :func:`row_drive_energy_j`).
    """
    r = spec.read
    if cell_law(spec).read == "charge":
        conduction = charge_read_energy_j(spec, supply_v, weight_fill)
    else:
        conduction = mean_cell_conductance(spec, weight_fill) * r.read_voltage**2 * r.read_pulse_s
    lines = r.line_capacitance_f * supply_v**2
    return conduction, lines


def row_drive_energy_j(spec: ArraySpec, supply_v: float) -> float:
    """Energy to drive one row for one read (DAC / word-line driver), joules.

    ``input_encoding.dac.energy_pj`` when the chip gives it; otherwise the word line's
    C V²: ``cols * line_capacitance_f * V_supply**2`` (a driver with no overhead).
    Digital CIM macros whose published energy covers their drivers give no dac cost and
    have ``line_capacitance_f = 0``: then this is 0.
    """
    dac = spec.input_encoding.dac
    if dac.energy_pj is not None:
        return dac.energy_pj * PJ
    return spec.cols * spec.read.line_capacitance_f * supply_v**2


# ----------------------------------------------------------------------------- converters

def adc_fom_energy_j(bits: int, node_m: float, supply_v: float, fom_j_per_step: float = ADC_FOM_J_PER_STEP) -> float:
    """Conversion energy of a ``bits``-bit ADC (joules): the Walden regime ``FOM(L, V) * 2**bits``
    (FOM quoted at 28 nm / 0.9 V, re-targeted by C V² scaling, :func:`retarget_energy`) plus
    the thermal regime :func:`adc_thermal_energy_j` (4x per bit). With the defaults the two
    cross near 15 bits: below, energy doubles per bit; above, it quadruples."""
    fom = retarget_energy(fom_j_per_step, ADC_FOM_NODE_M, ADC_FOM_SUPPLY_V, node_m, supply_v)
    return fom * 2.0**bits + adc_thermal_energy_j(bits)


def adc_sample_rate_hz(adc: ADC, clock_hz: float) -> float:
    """Conversions per second of one converter: ``1 / conversion.latency_ns`` when the chip
    gives it, else the chip clock (one conversion per cycle)."""
    latency = adc.conversion.latency_s
    return 1.0 / latency if latency > 0 else clock_hz


def adc_law_energy_j(bits: float, node_m: float, supply_v: float, sample_rate_hz: float, law: str = "median",
                     year: int = ADC_REFERENCE_YEAR) -> float:
    """Energy of one conversion of a ``bits``-bit converter by the law fitted to the ADC survey
    (:mod:`cimflow.cost.adc_law`; ``law`` ``"median"`` or ``"frontier"``), at ``bits -``
    :data:`~cimflow.cost.adc_law.ADC_ENOB_LOSS_BITS` effective bits (joules)."""
    return load_adc_law(law).energy_j(max(bits - ADC_ENOB_LOSS_BITS, 0.0), sample_rate_hz, node_m, supply_v, year)


def adc_conversion_energy_j(adc: ADC, node_m: float, supply_v: float, fom_j_per_step: float | None = None, *,
                            sample_rate_hz: float = 1e8, law: str = "median",
                            year: int = ADC_REFERENCE_YEAR) -> tuple[float, str]:
    """Energy of one conversion (joules) and where it came from.

    The converter law is the survey fit :func:`adc_law_energy_j` (``law``, at
    ``sample_rate_hz`` and design ``year``), or the constant-FOM form :func:`adc_fom_energy_j`
    when ``fom_j_per_step`` is given.

    * ``adc.conversion.energy_pj`` given: that number, measured at ``adc.energy_quoted_at_bits``
      (default: the array's own ``adc.bits``), moved to ``adc.bits`` along the converter law
      (the ratio of the law at the two resolutions);
    * else the converter law itself (source ``"converter_law"``).
    """
    def energy(bits: int) -> float:
        if fom_j_per_step is not None:
            return adc_fom_energy_j(bits, node_m, supply_v, fom_j_per_step)
        return adc_law_energy_j(bits, node_m, supply_v, sample_rate_hz, law, year)

    if adc.conversion.energy_pj is not None:
        quoted = adc.bits if adc.energy_quoted_at_bits is None else adc.energy_quoted_at_bits
        ratio = 1.0 if quoted == adc.bits else energy(adc.bits) / energy(quoted)
        return adc.conversion.energy_pj * PJ * ratio, "chip"
    return energy(adc.bits), "converter_law"


# ----------------------------------------------------------------------------- digital

def add_energy_j(bits: int, node_m: float, supply_v: float) -> float:
    """One integer addition of ``bits`` bits (joules): linear through Horowitz's 45 nm
    int8 add (0.03 pJ) and int32 add (0.1 pJ), re-targeted to (node, supply) by C V²."""
    bits = min(max(int(bits), 1), 64)
    if bits >= 8:
        at_45 = INT8_ADD_J + (INT32_ADD_J - INT8_ADD_J) * (bits - 8) / 24.0
    else:  # below 8 bits: proportional to the width
        at_45 = INT8_ADD_J * bits / 8.0
    return retarget_energy(at_45, HOROWITZ_NODE_M, HOROWITZ_SUPPLY_V, node_m, supply_v)


def accumulator_bits(spec: ArraySpec, slices: int, read_groups_per_output: int) -> int:
    """Width of the shift-add accumulator behind an ADC: the conversion's bits, plus the
    input bits it is shifted over, plus the carry bits of summing slices and read groups;
    clipped to [8, 32]."""
    adc_bits = spec.adc.bits if spec.adc is not None else 1
    grow = math.ceil(math.log2(max(slices, 1))) + math.ceil(math.log2(max(read_groups_per_output, 1)))
    return int(min(max(adc_bits + spec.input_encoding.bits + grow, 8), 32))


def digital_bit_op_energy_j(spec: ArraySpec, node_m: float, supply_v: float) -> tuple[float, str]:
    """Digital CIM energy per 1-bit x 1-bit MAC (joules): ``adder_tree.energy_per_bit_op_pj``,
    else Chih et al.'s 1.40 fJ at 22 nm / 0.72 V re-targeted by C V²."""
    if spec.adder_tree is not None and spec.adder_tree.energy_per_bit_op_pj > 0:
        return spec.adder_tree.energy_per_bit_op_pj * PJ, "chip"
    return retarget_energy(DCIM_BIT_OP_J, DCIM_NODE_M, DCIM_SUPPLY_V, node_m, supply_v), "chih2021_scaled"


# ----------------------------------------------------------------------------- area

@dataclass(frozen=True)
class ArrayArea:
    """Area of one array and its periphery, square metres."""

    cells: float
    adcs: float
    dacs: float
    adder_tree: float

    @property
    def total(self) -> float:
        return self.cells + self.adcs + self.dacs + self.adder_tree


def adcs_per_array(spec: ArraySpec) -> int:
    """Converters one array has: ``ceil(cols / columns_per_adc)`` (0 for digital arrays)."""
    if spec.adc is None:
        return 0
    return math.ceil(spec.cols / spec.adc.columns_per_adc)


def array_area(spec: ArraySpec, node_m: float) -> tuple[ArrayArea, list[str]]:
    """Area of one array (cells + ADCs + DACs + adder tree) and notes on defaults used.

    cells: ``rows * cols * read.area_per_cell_um2`` (default: the technology's F² of
    :data:`~cimflow.cost.cell_tech.CELL_LAWS` for analog cells, 6,343 F² per bit for digital CIM); ADCs: ``ceil(cols / columns_per_adc) *
    conversion.area_um2`` (default ``2,000 F² * 2**bits``); DACs: ``rows *
    input_encoding.dac.area_um2`` (0 when not given); adder tree: ``adder_tree.area_um2``.
    """
    notes: list[str] = []
    per_cell = spec.read.area_per_cell_um2
    if per_cell is None:
        if spec.kind == "digital":
            cell_m2 = f2_area_m2(DIGITAL_CELL_AREA_F2, node_m)
        else:
            cell_m2 = default_cell_area_m2(spec, node_m)
        notes.append(f"cell area not given: {cell_m2 / feature_area_m2(node_m):.0f} F^2 assumed "
                     f"({'digital CIM' if spec.kind == 'digital' else cell_law(spec).name})")
    else:
        cell_m2 = per_cell * UM2
    cells = spec.rows * spec.cols * cell_m2
    adcs = 0.0
    if spec.adc is not None:
        a = spec.adc.conversion.area_um2
        if a is None:
            a_m2 = f2_area_m2(ADC_AREA_F2_PER_STEP * 2.0**spec.adc.bits, node_m)
            notes.append(f"ADC area not given: {ADC_AREA_F2_PER_STEP:.0f} F^2 x 2^{spec.adc.bits} assumed")
        else:
            a_m2 = a * UM2
        adcs = adcs_per_array(spec) * a_m2
    dacs = spec.rows * (spec.input_encoding.dac.area_um2 or 0.0) * UM2
    tree = (spec.adder_tree.area_um2 or 0.0) * UM2 if spec.adder_tree is not None else 0.0
    return ArrayArea(cells, adcs, dacs, tree), notes


def buffer_area_m2(capacity_bytes: int, memory: Memory | None, node_m: float) -> tuple[float, str | None]:
    """Area of an SRAM buffer of ``capacity_bytes`` (m²): ``memory.area_um2_per_kib`` when
    given, else a 6T SRAM of 230 F² per bit (see :data:`SRAM_BUFFER_AREA_F2_PER_BIT`)."""
    if capacity_bytes <= 0:
        return 0.0, None
    if memory is not None and memory.area_um2_per_kib is not None:
        return capacity_bytes / 1024.0 * memory.area_um2_per_kib * UM2, None
    return capacity_bytes * 8 * f2_area_m2(SRAM_BUFFER_AREA_F2_PER_BIT, node_m), "buffer area not given: 6T SRAM at 230 F^2 per bit assumed"


__all__ = [
    "ADC_AREA_F2_PER_STEP", "ADC_FOM_J_PER_STEP", "ADC_SCHREIER_FOM_DB", "ANALOG_CELL_AREA_F2", "ArrayArea", "DCIM_BIT_OP_J",
    "DIGITAL_CELL_AREA_F2", "INT32_ADD_J", "INT8_ADD_J", "SRAM_BUFFER_AREA_F2_PER_BIT",
    "accumulator_bits", "adc_conversion_energy_j", "adc_fom_energy_j", "adc_law_energy_j", "adc_sample_rate_hz",
    "adc_thermal_energy_j", "adcs_per_array", "add_energy_j",
    "array_area", "buffer_area_m2", "cell_read_energy_j", "chip_node_m", "digital_bit_op_energy_j",
    "f2_area_m2", "mean_cell_conductance", "retarget_energy", "row_drive_energy_j",
]
