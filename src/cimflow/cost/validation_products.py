"""Validation rows for shipping products and the systems of issue 13, on ordinary presets.

The chip validation of :mod:`cimflow.cost.validation` reproduces the reference table through
validation presets. The presets added for the products the field points to
(``chip/presets/*.yaml``) are checked here the same way, and every row is a **prediction**:
no parameter of the preset was computed from the figure it is compared with (a parameter
derived from another figure of the same product, such as an array count sized to the
product's peak TOPS, only makes *that* figure's row ``derived``).

Two kinds of rows:

* :class:`~cimflow.cost.validation.ChipBenchmark` on an ordinary preset: compile + estimate of
  the product's benchmark condition (:func:`product_benchmarks`), rows from
  :func:`cimflow.cost.validation.compare`;
* :class:`ChipFormula`: a figure that follows in closed form from the preset's design
  parameters without a compiled workload, e.g. the near-memory PIM tier's peak FLOPS
  (units x lanes x 2 x clock) and internal-to-external bandwidth ratio.

Presets without a row say why in their YAML (a figure that is only a bound, or one in a
number format cimflow does not model): ``witmem-wtm2101``, ``tsinghua-mcnn-2020``,
``tsmc-mixed-rram-sram-2025``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip, Pim
from cimflow.cost.validation import TOLERANCE, ChipBenchmark, LinearMVM, Reported, ValidationRow, compare, measure
from cimflow.errors import CimflowError


@dataclass(frozen=True)
class ChipFormula:
    """A published figure predicted in closed form from a preset's design parameters."""

    name: str
    preset: str
    metric: str
    unit: str
    reported: float
    predict: Callable[[Chip], float]
    formula: str
    source: str
    notes: str = ""

    def row(self) -> ValidationRow:
        predicted = float(self.predict(resolve_chip(self.preset)))
        if not predicted > 0:
            raise CimflowError(f"product formula {self.name!r}: predicted {self.metric} = {predicted!r}")
        error = predicted / self.reported - 1.0
        return ValidationRow(chip=self.name, metric=self.metric, unit=self.unit, predicted=predicted, reported=self.reported,
                             derived=False, error=error, within_tolerance=abs(error) <= TOLERANCE, preset=self.preset,
                             workload=self.formula, source=self.source, derived_parameters=[], notes=self.notes)


def _per_stack(chip: Chip, stacks: int = 4) -> Chip:
    """The hbm-pim-recsys preset holds 4 HBM2-PIM stacks; the published figures are per stack."""
    if chip.pim is None:
        raise CimflowError(f"preset {chip.name!r} has no pim block")
    pim = chip.pim.model_copy(update={"units": chip.pim.units // stacks,
                                      "bandwidth_bytes_per_s": chip.pim.bandwidth_bytes_per_s / stacks})
    return chip.model_copy(update={"pim": pim})


def _pim_of(chip: Chip) -> Pim:
    if chip.pim is None:
        raise CimflowError(f"preset {chip.name!r} has no pim block")
    return chip.pim


def _pim_peak_tflops(chip: Chip) -> float:
    pim = _per_stack(chip).pim
    assert pim is not None
    return 2.0 * pim.ops_per_s / 1e12  # a MAC lane op is 2 FLOPs


def _pim_bandwidth_ratio(chip: Chip) -> float:
    pim = _per_stack(chip).pim
    assert pim is not None
    return pim.internal_bandwidth_bytes_per_s / pim.bandwidth_bytes_per_s


def _aim(chip: Chip) -> Chip:
    """The same pim block at SK hynix GDDR6-AiM's design point [aim2022]: one 16-lane BF16 unit per
    bank, 2 channels x 16 banks (JEDEC GDDR6 [jesd250]), 32 B per bank access, 1 GHz, 16 data pins
    per channel at 16 Gb/s (64 GB/s per device)."""
    if chip.pim is None:
        raise CimflowError(f"preset {chip.name!r} has no pim block")
    pim = chip.pim.model_copy(update={"units": 32, "lanes": 16, "access_bytes": 32, "clock_hz": 1e9,
                                      "bandwidth_bytes_per_s": 32 * 16e9 / 8})
    return chip.model_copy(update={"pim": pim})


def product_formulas() -> tuple[ChipFormula, ...]:
    """Closed-form predictions of published figures from design parameters."""
    return (
        ChipFormula(
            name="hbm-pim (Aquabolt-XL, per stack)", preset="hbm-pim-recsys", metric="peak_tflops", unit="TFLOPS", reported=1.2,
            predict=_pim_peak_tflops, formula="128 PCUs x 16 FP16 lanes x 2 FLOP x 300 MHz",
            source="[kwon2021] (1.2 TFLOPS)",
            notes="PCU count and clock from [kwon2021]'s structure; 16 lanes from the 32 B pseudo-channel access [jesd235]"),
        ChipFormula(
            name="hbm-pim (Aquabolt-XL, per stack)", preset="hbm-pim-recsys", metric="bank_to_interface_bandwidth", unit="x",
            reported=4.0, predict=_pim_bandwidth_ratio,
            formula="(128 PCUs x 32 B x 300 MHz) / (1024 pins x 2.4 Gb/s / 8)",
            source="[kwon2021] (four times the processing bandwidth of an off-chip solution)",
            notes="internal bandwidth of the PCUs' bank accesses over the stack's external interface [aquabolt]"),
        ChipFormula(
            name="gddr6-aim (per device)", preset="hbm-pim-recsys", metric="peak_tflops", unit="TFLOPS", reported=1.0,
            predict=lambda chip: 2.0 * _pim_of(_aim(chip)).ops_per_s / 1e12,
            formula="32 banks x 16 BF16 lanes x 2 FLOP x 1 GHz (the preset's pim block at the AiM design point)",
            source="[aim2022] (1 TFLOPS MAC operation)",
            notes="one unit per bank [aim2022], 2 channels x 16 banks [jesd250], 32 B per access / 2 B per BF16 value"),
        ChipFormula(
            name="gddr6-aim (per device)", preset="hbm-pim-recsys", metric="bank_to_interface_bandwidth", unit="x",
            reported=16.0, predict=lambda chip: _pim_of(_aim(chip)).internal_bandwidth_bytes_per_s
            / _pim_of(_aim(chip)).bandwidth_bytes_per_s,
            formula="(32 banks x 32 B x 1 GHz) / (32 pins x 16 Gb/s / 8)",
            source="[aim2022] (up to 16x faster computation than with plain GDDR6)",
            notes="the published 16x is a speed-up of memory-bound work, read here as the bank-to-pin bandwidth ratio"),
    )


def product_benchmarks() -> tuple[ChipBenchmark, ...]:
    """Compile + estimate benchmarks of the product presets (one full-array MVM per array)."""
    return (
        ChipBenchmark(
            name="encharge-en100", preset="encharge-en100",
            workload=LinearMVM(1152, 18, batch=1024),
            reported=(Reported("tops_w", 200.0 / 8.25), Reported("tops", 200.0, derived=True)),
            derived_parameters=("cores.arrays: 512 CIMUs sized to the 200 TOPS (sets TOPS only)",),
            reported_source="[encharge2025] (200 TOPS INT8 on an 8.25 W M.2 card: 24.2 TOPS/W at the card)",
            notes=("8b x 8b on 1152 x 256 charge-domain CIMUs with [jia2021]'s 1.2 fF cell capacitor; the reported figure is "
                   "a card (with its DRAM and regulators), the prediction the accelerator's arrays and buffers; the product "
                   "also claims >40 TOPS/W for the chip")),
        ChipBenchmark(
            name="axelera-metis (digital-sram-cim-soc)", preset="digital-sram-cim-soc",
            workload=LinearMVM(512, 64, batch=64),
            reported=(Reported("tops_w", 15.0), Reported("tops_mm2", 6.65, source="[metis_blog]"),
                      Reported("tops", 209.6, derived=True)),
            derived_parameters=("cores.arrays: 32 D-IMC macros sized to the 209.6 TOPS (sets TOPS only)",),
            reported_source="[metis2024] (15 TOPS/W, 209.6 TOPS), [metis_blog] (6.65 TOPS/mm^2)",
            notes=("8b x 8b MVMs on 512 x 512 D-IMC macros with [chih2021]'s energy and area per bit scaled to 12 nm / 0.8 V; "
                   "[metis2024]'s 15 TOPS/W is an SoC figure")),
    )


def validate_products(names: Iterable[str] | None = None) -> list[ValidationRow]:
    """Rows of every product benchmark and formula (``names``: restrict to these row names or presets)."""
    benchmarks, formulas = product_benchmarks(), product_formulas()
    if names is not None:
        wanted = set(names)
        benchmarks = tuple(b for b in benchmarks if b.name in wanted or b.preset in wanted)
        formulas = tuple(f for f in formulas if f.name in wanted or f.preset in wanted)
    rows = [row for b in benchmarks for row in compare(b, measure(b))]
    return rows + [f.row() for f in formulas]


def product_names() -> set[str]:
    """Row names and presets :func:`validate_products` answers to."""
    return {x for b in product_benchmarks() for x in (b.name, b.preset)} | {x for f in product_formulas() for x in (f.name, f.preset)}


def validate_all(names: Iterable[str] | None = None) -> list[ValidationRow]:
    """The reference-table rows (:func:`cimflow.cost.validation.validate_chips`) and the product
    rows (:func:`validate_products`); ``names`` selects from either."""
    from cimflow.cost.validation import validate_chips

    if names is None:
        return validate_chips() + validate_products()
    wanted = list(names)
    products = product_names()
    mine, theirs = [n for n in wanted if n in products], [n for n in wanted if n not in products]
    return (validate_chips(theirs) if theirs else []) + (validate_products(mine) if mine else [])


__all__ = ["ChipFormula", "product_benchmarks", "product_formulas", "product_names", "validate_all", "validate_products"]
