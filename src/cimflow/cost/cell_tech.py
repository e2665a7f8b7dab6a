"""Technology-specific cost laws of a CIM cell: read energy, programming, cell area, leakage.

The cost model reads an array's cells through one of two laws, chosen by the device:

* ``ohmic`` (RRAM, PCM, MRAM, NOR flash, FeFET, current-domain SRAM): the driven cell conducts
  for the read pulse, ``E = G_mean V_read^2 t_read`` (a transistor cell in the same form, with
  ``G`` its on-conductance at the read bias);
* ``charge`` (charge-domain SRAM, EnCharge / Verma-style, ``device.model: charge_sram``): the
  cell's capacitor is charged to the supply when its input x weight product is 1 and then
  shares its charge on the column: ``E = C_cell V_supply^2 x fill``, no static read current.
  ``C_cell = capacitor_area_um2 x`` :data:`MOM_CAP_F_PER_UM2`.

Per technology (:data:`CELL_LAWS`) the cell area where the chip gives none, the energy and
time of one program pulse and the mean pulses to program a cell, and whether the cell is
volatile (SRAM holds its weights only while powered and leaks; the non-volatile cells can be
power-gated and leak nothing). Where the device model carries the physics, the numbers follow
its fields: NOR-flash ISPP pulses ``vth_window_v / (2 ispp_step_v)`` (a uniform target in the
window), STT-MRAM ``1 / P_switch`` with the device's thermally assisted switching law, an
RRAM/PCM pulse ``V_write^2 g_max t_pulse`` (RRAM) or a RESET pulse (PCM), an SRAM write
``rows C_line V_supply^2`` (one bit line swung per bit). ``device.write.energy_pj`` and
``latency_ns``, when the chip gives them, replace the law's pulse.

Numbers not taken from a device field are assumptions of the order the literature reports,
marked as such on :class:`CellLaw` (``source``); docs/cost_model.md lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cimflow.chip.spec import ArraySpec, Chip
from cimflow.errors import CimflowError

#: Capacitance density of the metal-oxide-metal cell capacitor of charge-domain SRAM, F per um^2.
#: Assumption: 1 fF/um^2, the order of BEOL fringe capacitors stacked over a bit cell.
MOM_CAP_F_PER_UM2 = 1e-15
#: Static power of one stored SRAM bit at 0.9 V, W. Assumption: 20 pW (10-50 pA of cell leakage
#: at room temperature in 22-28 nm high-density cells), scaled linearly with the supply.
SRAM_BIT_LEAKAGE_W = 20e-12
SRAM_LEAKAGE_SUPPLY_V = 0.9
#: Voltage across an RRAM cell while it is programmed (SET/RESET), V. Assumption: 1.5 V.
RRAM_WRITE_V = 1.5
#: Critical switching current of an STT-MRAM cell and the write voltage across cell and access
#: transistor. Assumptions: 50 uA, 1.0 V.
MRAM_CRITICAL_CURRENT_A = 50e-6
MRAM_WRITE_V = 1.0


@dataclass(frozen=True)
class CellLaw:
    """The cost law of one cell technology (SI units).

    Attributes:
        name: technology (``device.technology``) or ``charge_sram``.
        read: ``"ohmic"`` or ``"charge"`` (module docstring).
        area_f2: cell area where ``read.area_per_cell_um2`` is not given, in F^2.
        write_pulse_j, write_pulse_s: one program pulse where neither the device's physics
            nor ``device.write`` gives it.
        pulses_per_write: mean pulses to program one cell (program-and-verify included).
        volatile: the cell loses its weight unpowered, so it leaks while holding it.
        source: where the numbers come from (assumptions marked).
    """

    name: str
    read: str
    area_f2: float
    write_pulse_j: float
    write_pulse_s: float
    pulses_per_write: float
    volatile: bool
    source: str


#: The law of each technology.
CELL_LAWS: dict[str, CellLaw] = {
    "sram": CellLaw("sram", "ohmic", 300.0, 50e-15, 1e-9, 1.0, True,
                    "assumption: 8T compute cell ~2x a 6T cell (162 F^2 for TSMC's 0.127 um^2 at 28 nm); one write "
                    "= one bit-line swing, 1 ns; volatile"),
    "charge_sram": CellLaw("charge_sram", "charge", 300.0, 50e-15, 1e-9, 1.0, True,
                           "assumption: the 8T cell with its capacitor stacked above it (area: the larger of the two); "
                           "writes as SRAM; volatile"),
    "rram": CellLaw("rram", "ohmic", 100.0, 10e-12, 100e-9, 8.0, False,
                    "assumption: 1T1R at 100 F^2 (as hybrid-rram-sram-28nm.yaml); 100 ns pulses, ~8 program-and-verify "
                    "iterations per cell"),
    "pcm": CellLaw("pcm", "ohmic", 50.0, 12e-12, 50e-9, 10.0, False,
                   "assumption: 1T1R at 50 F^2; a RESET-class pulse of 200 uA x 1.2 V x 50 ns = 12 pJ; ~10 iterative "
                   "program-and-verify pulses"),
    "nor_flash": CellLaw("nor_flash", "ohmic", 10.0, 0.4e-9, 1e-6, 20.0, False,
                         "assumption: 1T NOR cell at 10 F^2; channel-hot-electron pulse of 100 uA x 4 V x 1 us = 0.4 nJ; "
                         "20 ISPP pulses (a 4 V window in 0.1 V steps, half on average)"),
    "mram": CellLaw("mram", "ohmic", 50.0, 0.5e-12, 10e-9, 1.0, False,
                    "assumption: 1T1MTJ at 50 F^2; 50 uA x 1 V x 10 ns = 0.5 pJ per pulse"),
    "fefet": CellLaw("fefet", "ohmic", 15.0, 16e-15, 100e-9, 3.0, False,
                     "assumption: 1T cell at 15 F^2; gate C V^2 of ~1 fF at 4 V = 16 fJ per pulse, 100 ns; ~3 pulses "
                     "with verify for a multi-level state"),
}


def cell_law(spec: ArraySpec) -> CellLaw:
    """The law of an array's cells: ``charge_sram`` for that device model, else its technology's."""
    name = "charge_sram" if getattr(spec.device, "model", "generic") == "charge_sram" else spec.device.technology
    if name not in CELL_LAWS:
        raise CimflowError(f"no cost law for cell technology {name!r}; known: {', '.join(CELL_LAWS)}")
    return CELL_LAWS[name]


def cell_fill(spec: ArraySpec, weight_fill: float) -> float:
    """Mean fraction of its full state a used cell sits at, from the mean ``|w| / w_max``:
    differential / bit-sliced: one cell of each pair at ``|w|``, the other at 0 (mean
    ``weight_fill / 2``); offset: each cell at ``0.5 + w/2`` (mean 0.5 whatever the weights)."""
    if not 0.0 <= weight_fill <= 1.0:
        raise CimflowError(f"weight_fill (mean |w|/w_max) must be within [0, 1], got {weight_fill!r}")
    return 0.5 if spec.weight_encoding.scheme == "offset" else 0.5 * weight_fill


def cell_capacitance_f(spec: ArraySpec) -> float:
    """Compute capacitor of a charge-domain cell (F): ``capacitor_area_um2 x`` :data:`MOM_CAP_F_PER_UM2`."""
    area = getattr(spec.device, "capacitor_area_um2", None)
    if area is None:
        raise CimflowError(f"a {spec.device.technology} cell with device model {getattr(spec.device, 'model', 'generic')!r} "
                           "has no compute capacitor (use device.model: charge_sram)")
    return float(area) * MOM_CAP_F_PER_UM2


def charge_read_energy_j(spec: ArraySpec, supply_v: float, weight_fill: float) -> float:
    """Energy of one driven charge-domain cell in one read (J): ``C_cell V_supply^2 x fill``."""
    return cell_capacitance_f(spec) * supply_v**2 * cell_fill(spec, weight_fill)


def default_cell_area_m2(spec: ArraySpec, node_m: float) -> float:
    """Cell area (m^2) of an analog array that gives no ``read.area_per_cell_um2``: the
    technology's F^2 at this node; a charge-domain cell is the larger of that and its capacitor."""
    law = cell_law(spec)
    area = law.area_f2 * node_m**2
    if law.read == "charge":
        area = max(area, cell_capacitance_f(spec) / MOM_CAP_F_PER_UM2 * 1e-12)
    return area


# ----------------------------------------------------------------------------- programming

def pulses_per_write(spec: ArraySpec) -> float:
    """Mean program pulses per cell: from the device's own physics where it has them (NOR flash
    ISPP, STT-MRAM switching probability), else the technology law's."""
    device = spec.device
    model = getattr(device, "model", "generic")
    if model == "nor_flash":
        return max(1.0, device.vth_window_v / (2.0 * device.ispp_step_v))  # type: ignore[attr-defined]
    if model == "mram":
        delta = device.thermal_stability * 300.0 / device.temperature_k  # type: ignore[attr-defined]
        tau = device.attempt_time_s * math.exp(delta * (1.0 - device.write_current_ratio))  # type: ignore[attr-defined]
        p_switch = -math.expm1(-device.write_pulse_s / tau)  # type: ignore[attr-defined]
        return 1.0 / max(p_switch, 1e-12)
    return cell_law(spec).pulses_per_write


def write_pulse(spec: ArraySpec, supply_v: float) -> tuple[float, float]:
    """Energy (J) and duration (s) of one program pulse: ``device.write`` where given, else
    the technology's physics (module docstring), else the law's constants."""
    device, law = spec.device, cell_law(spec)
    model = getattr(device, "model", "generic")
    if model == "mram":
        t = float(device.write_pulse_s)  # type: ignore[attr-defined]
        energy = MRAM_CRITICAL_CURRENT_A * float(device.write_current_ratio) * MRAM_WRITE_V * t  # type: ignore[attr-defined]
    elif law.name == "rram":
        t = law.write_pulse_s if device.write.latency_ns is None else device.write.latency_s
        energy = RRAM_WRITE_V**2 * device.g_max * t
    elif law.name in ("sram", "charge_sram"):
        t = law.write_pulse_s
        energy = spec.rows * spec.read.line_capacitance_f * supply_v**2 or law.write_pulse_j
    else:
        t, energy = law.write_pulse_s, law.write_pulse_j
    if device.write.energy_pj is not None:
        energy = device.write.energy_pj * 1e-12
    if device.write.latency_ns is not None:
        t = device.write.latency_s
    return energy, t


@dataclass(frozen=True)
class ProgramCost:
    """One-time cost of writing a plan's weights into its arrays (not per inference)."""

    cells: int
    pulses: float
    energy_j: float
    time_s: float


def program_cost(spec: ArraySpec, cells: int, supply_v: float) -> ProgramCost:
    """Programming ``cells`` cells of this array kind: ``cells x pulses_per_write`` pulses of
    :func:`write_pulse`; time: the pulses of one cell (a whole row is written in parallel, rows
    one after another: ``cells / cols`` rows)."""
    pulses = pulses_per_write(spec)
    energy, t = write_pulse(spec, supply_v)
    rows = math.ceil(cells / spec.cols) if cells else 0
    return ProgramCost(cells=cells, pulses=cells * pulses, energy_j=cells * pulses * energy, time_s=rows * pulses * t)


# ----------------------------------------------------------------------------- leakage

def array_leakage_w(chip: Chip) -> float:
    """Static power of the chip's volatile (SRAM) cells holding their weights (W):
    every cell of every such array x :data:`SRAM_BIT_LEAKAGE_W` x (V / 0.9 V). Non-volatile
    cells leak nothing (their arrays can be power-gated between reads)."""
    total = 0.0
    per_bit = SRAM_BIT_LEAKAGE_W * chip.technology.supply_v / SRAM_LEAKAGE_SUPPLY_V
    for kind, spec in chip.arrays.items():
        if cell_law(spec).volatile:
            total += chip.arrays_on_chip(kind) * spec.rows * spec.cols * per_bit
    return total


__all__ = [
    "CELL_LAWS", "MOM_CAP_F_PER_UM2", "SRAM_BIT_LEAKAGE_W", "CellLaw", "ProgramCost", "array_leakage_w", "cell_capacitance_f",
    "cell_fill", "cell_law", "charge_read_energy_j", "default_cell_area_m2", "program_cost",
    "pulses_per_write", "write_pulse",
]
