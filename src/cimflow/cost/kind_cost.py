"""The cost model's options and the per-event costs of one array kind of a chip.

:class:`CostOptions` holds the cost-model parameters the chip schema does not (yet) hold;
:func:`kind_costs` turns one array kind into per-event energies (cell read, row drive,
conversion, digital bit operation) and per-array area. Used by
:func:`cimflow.cost.estimate.estimate` (whose docstring gives the event counts and energy
laws) and re-exported from :mod:`cimflow.cost.estimate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cimflow.chip.spec import ArraySpec, Chip
from cimflow.compile.partition import input_pulses
from cimflow.cost.adc_law import ADC_LAW_QUANTILES, ADC_REFERENCE_YEAR
from cimflow.cost.components import (
    adc_conversion_energy_j,
    adc_sample_rate_hz,
    adcs_per_array,
    array_area,
    cell_read_energy_j,
    digital_bit_op_energy_j,
    row_drive_energy_j,
)
from cimflow.errors import CimflowError


@dataclass(frozen=True)
class CostOptions:
    """Cost-model parameters the chip schema does not (yet) hold, with documented defaults.

    Attributes:
        weight_fill: mean ``|w| / w_max`` of stored weights (0..1), for the mean cell
            conductance; 0.5 when unknown. A layer's statistics may override it
            (key ``weight_fill``).
        fixed_row_activity: fraction of rows driven per read in the fixed estimate (1 = every
            row, every pulse: the worst case; ~0.5 is typical of random bit-serial inputs).
        adc_law: the converter law for ADCs without a chip energy, fitted to the ADC survey
            (:mod:`cimflow.cost.adc_law`): ``"median"`` (a typical published converter) or
            ``"frontier"`` (the best tenth).
        adc_year: design year at which that law costs a converter (1997-2025).
        adc_fom_j_per_step: ``None`` (the survey law), or a constant Walden FOM, joules per
            conversion step at 28 nm / 0.9 V, to use instead.
        activation_bits: bits per activation element written to or read from the buffer
            by the digital unit and written by array ops (their outputs, re-quantized
            for the next layer).
    """

    weight_fill: float = 0.5
    fixed_row_activity: float = 1.0
    adc_fom_j_per_step: float | None = None
    activation_bits: int = 8
    adc_law: str = "median"
    adc_year: int = ADC_REFERENCE_YEAR

    def __post_init__(self) -> None:
        def real(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for name in ("weight_fill", "fixed_row_activity"):
            v = getattr(self, name)
            if not (real(v) and 0.0 <= v <= 1.0):
                raise CimflowError(f"CostOptions.{name} must be within [0, 1], got {v!r}")
        fom = self.adc_fom_j_per_step  # published converters: ~1e-15 to 1e-12 J per step
        if fom is not None and not (real(fom) and 0 < fom <= 1e-9):
            raise CimflowError(f"CostOptions.adc_fom_j_per_step must be None or a number of joules in (0, 1e-9], got {fom!r}")
        if not isinstance(self.adc_law, str) or self.adc_law not in ADC_LAW_QUANTILES:
            raise CimflowError(f"CostOptions.adc_law must be one of {', '.join(ADC_LAW_QUANTILES)}, got {self.adc_law!r}")
        year = self.adc_year
        if not (isinstance(year, int) and not isinstance(year, bool) and 1997 <= year <= 2025):
            raise CimflowError(f"CostOptions.adc_year must be an integer within [1997, 2025] (the survey's years), got {year!r}")
        bits = self.activation_bits
        if not (isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 64):
            raise CimflowError(f"CostOptions.activation_bits must be an integer within [1, 64], got {bits!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


# ----------------------------------------------------------------------------- per array kind

@dataclass(frozen=True)
class KindCost:
    """Per-event energies (J) and per-array area (m²) of one array kind of a chip."""

    kind: str
    analog: bool
    pulses: int
    input_bits: int
    slices: int
    cols_per_weight: int
    reference_cols: int
    weight_bits: int
    e_cell_conduction: float
    e_cell_line: float
    e_row: float
    e_conversion: float
    conversion_source: str
    e_bit_op: float
    bit_op_source: str
    area_per_array: float
    area_parts: dict[str, float]
    area_notes: tuple[str, ...]
    adcs_per_array: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kind_costs(spec: ArraySpec, kind: str, chip: Chip, options: CostOptions, weight_fill: float | None = None) -> KindCost:
    """Per-event energies of array kind ``kind`` on ``chip`` (see the module docstring)."""
    node_m, supply = chip.technology.node_nm * 1e-9, chip.technology.supply_v
    analog = spec.kind == "analog"
    fill = options.weight_fill if weight_fill is None else weight_fill
    conduction, line = cell_read_energy_j(spec, supply, fill) if analog else (0.0, 0.0)
    e_conv, conv_src = 0.0, "none"
    if analog:
        assert spec.adc is not None  # an analog array validates only with an ADC
        e_conv, conv_src = adc_conversion_energy_j(
            spec.adc, node_m, supply, options.adc_fom_j_per_step, sample_rate_hz=adc_sample_rate_hz(spec.adc, chip.clock_hz),
            law=options.adc_law, year=options.adc_year)
    e_bit, bit_src = (0.0, "none") if analog else digital_bit_op_energy_j(spec, node_m, supply)
    enc = spec.weight_encoding
    area, notes = array_area(spec, node_m)
    return KindCost(
        kind=kind, analog=analog, pulses=input_pulses(spec), input_bits=spec.input_encoding.bits,
        slices=enc.slices if analog and enc.scheme == "bit_sliced" else 1,
        cols_per_weight=spec.cells_per_weight if analog else (spec.weight_bits or 1),
        reference_cols=1 if analog and enc.scheme == "offset" else 0,
        weight_bits=spec.weight_bits or 1,
        e_cell_conduction=conduction, e_cell_line=line,
        e_row=row_drive_energy_j(spec, supply) if analog or spec.input_encoding.dac.energy_pj is not None else 0.0,
        e_conversion=e_conv, conversion_source=conv_src, e_bit_op=e_bit, bit_op_source=bit_src,
        area_per_array=area.total, area_parts={"cells": area.cells, "adc": area.adcs, "dac": area.dacs, "adder_tree": area.adder_tree},
        area_notes=tuple(notes), adcs_per_array=adcs_per_array(spec),
    )
