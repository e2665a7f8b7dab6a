"""Tests of the shipped chip presets: they load, round-trip, carry their provenance, and
reproduce the published figures they were derived from.

Provenance convention (what these tests enforce on every preset but the placeholder
``ideal``):

- every block that has a ``source`` field and sets any number (array, device, noise,
  drift, cost blocks, adder tree, digital unit, memories, interconnect) has a non-empty
  ``source``;
- a ``source`` either cites at least one key of the top-level ``sources`` mapping as
  ``[key]`` or starts with "assumption" (the reason follows, or is under ``assumptions``);
- every ``[key]`` written anywhere (sources, description, assumptions) exists in
  ``sources``, and every key in ``sources`` is cited at least once;
- the top-level numbers without a ``source`` field (technology, clock, cores) are
  accounted for in ``assumptions`` by an entry naming the field.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from cimflow.chip import Chip, chip_to_yaml, load_chip_yaml, load_preset, preset_names, resolve_chip
from cimflow.mapping.tiling import tile_grid

SHIPPED = {"ideal", "rram-analog-generic", "pcm-hermes-like", "sram-digital-22nm", "hybrid-rram-sram-28nm"}
# Presets whose `assumptions` declare every number a placeholder (not meant for estimates).
PLACEHOLDERS = {"ideal"}
ALL = preset_names()
SOURCED = [name for name in ALL if name not in PLACEHOLDERS]
CITATION = re.compile(r"\[([a-z][a-z0-9_]*)\]")
TOP_LEVEL_FIELDS = ("technology.node_nm", "technology.supply_v", "clock_hz", "cores.count", "cores.arrays", "cores.buffer_bytes")


def sourced_blocks(model: BaseModel, path: str = "") -> Iterator[tuple[str, BaseModel]]:
    """Every sub-model (with its dotted path) that has a ``source`` field."""
    if "source" in type(model).model_fields:
        yield path or "(chip)", model
    for field in type(model).model_fields:
        value = getattr(model, field)
        children = value.items() if isinstance(value, dict) else [(None, value)]
        for key, child in children:
            if isinstance(child, BaseModel):
                child_path = f"{path}.{field}" if path else field
                yield from sourced_blocks(child, f"{child_path}.{key}" if key is not None else child_path)


def all_texts(chip: Chip) -> list[str]:
    """Every free text of a preset that may cite a source key."""
    texts = [chip.description, *chip.assumptions, *chip.sources.values()]
    texts += [block.source for _, block in sourced_blocks(chip) if getattr(block, "source", None)]
    return texts


# ---------------------------------------------------------------- loading and round trip
def test_every_shipped_preset_is_listed():
    assert SHIPPED <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_preset_round_trips_unchanged(name: str):
    chip = load_preset(name)
    assert chip.name == name
    text = chip_to_yaml(chip)
    again = load_chip_yaml(text, origin=f"round-trip:{name}")
    assert again == chip
    assert chip_to_yaml(again) == text
    assert resolve_chip(name) == chip


@pytest.mark.parametrize("name", ALL)
def test_every_role_has_arrays_on_the_chip(name: str):
    chip = load_preset(name)
    for kind in {chip.roles.mvm, chip.embedding_kind, chip.roles.digital} - {None}:
        assert chip.arrays_on_chip(kind) >= 1, f"{name}: role kind {kind!r} is in no core"


# ---------------------------------------------------------------- provenance
@pytest.mark.parametrize("name", ALL)
def test_every_array_has_a_source(name: str):
    chip = load_preset(name)
    for kind, spec in chip.arrays.items():
        assert spec.source and spec.source.strip(), f"{name}: arrays.{kind} has no source"
        if name not in PLACEHOLDERS:
            assert spec.device.source and spec.device.source.strip(), f"{name}: arrays.{kind}.device has no source"


@pytest.mark.parametrize("name", SOURCED)
def test_every_block_with_numbers_has_a_source(name: str):
    chip = load_preset(name)
    missing = [
        path for path, block in sourced_blocks(chip)
        if path != "(chip)" and (block.model_fields_set - {"source"}) and not (block.source or "").strip()
    ]
    assert not missing, f"{name}: blocks with numbers but no source: {missing}"


@pytest.mark.parametrize("name", ALL)
def test_sources_cite_a_key_or_say_assumption(name: str):
    chip = load_preset(name)
    for path, block in sourced_blocks(chip):
        source = getattr(block, "source", None)
        if source:
            assert CITATION.search(source) or source.lower().startswith("assumption"), (
                f"{name}: {path}.source neither cites a [key] nor starts with 'assumption': {source!r}"
            )


@pytest.mark.parametrize("name", ALL)
def test_every_citation_key_exists(name: str):
    chip = load_preset(name)
    cited = {key for text in all_texts(chip) for key in CITATION.findall(text)}
    unknown = cited - set(chip.sources)
    assert not unknown, f"{name}: cites {sorted(unknown)}, not in sources {sorted(chip.sources)}"


@pytest.mark.parametrize("name", ALL)
def test_every_source_key_is_cited(name: str):
    chip = load_preset(name)
    for key in chip.sources:
        others = [text for text in all_texts(chip) if text != chip.sources[key]]
        assert any(f"[{key}]" in text for text in others), f"{name}: sources.{key} is never cited"


@pytest.mark.parametrize("name", SOURCED)
def test_top_level_numbers_are_accounted_for(name: str):
    chip = load_preset(name)
    for field in TOP_LEVEL_FIELDS:
        assert any(field in entry for entry in chip.assumptions), f"{name}: no assumptions entry names {field}"


@pytest.mark.parametrize("name", SOURCED)
def test_cost_fields_are_filled(name: str):
    chip = load_preset(name)
    for kind, spec in chip.arrays.items():
        assert spec.read.area_per_cell_um2 is not None, f"{name}: arrays.{kind}.read.area_per_cell_um2"
        if spec.kind == "analog":
            conversion = spec.adc.conversion
            assert None not in (conversion.energy_pj, conversion.area_um2, conversion.latency_ns), f"{name}: arrays.{kind}.adc.conversion"
            assert spec.input_encoding.dac.energy_pj is not None, f"{name}: arrays.{kind}.input_encoding.dac"
            assert spec.device.write.energy_pj is not None, f"{name}: arrays.{kind}.device.write"
        else:
            assert spec.adder_tree is not None and spec.adder_tree.energy_per_bit_op_pj > 0, f"{name}: arrays.{kind}.adder_tree"
    assert chip.buffer is not None and chip.buffer.energy_per_bit_pj > 0
    assert {"digital_unit", "interconnect"} <= chip.model_fields_set


# ---------------------------------------------------------------- the published figures
def _polynomial(coefficients: list[float], x: float) -> float:
    return sum(c * x**k for k, c in enumerate(coefficients))


def test_rram_generic_matches_neurram():
    chip = load_preset("rram-analog-generic")
    spec = chip.arrays["rram"]
    # 48 cores x one 256x256 array: ~3.1 million RRAM cells
    assert (chip.cores.count, spec.rows, spec.cols) == (48, 256, 256)
    assert chip.arrays_on_chip("rram") * spec.rows * spec.cols == 3_145_728
    # 4-bit signed weights on a differential pair: 2 * (levels - 1) + 1 = 15 values
    assert spec.weight_encoding.scheme == "differential"
    assert 2 * (spec.device.n_levels - 1) + 1 == 2**4 - 1
    # programming noise equals the cubic fit sigma[uS] = 1.053 + 0.2374 G - 1.167e-2 G^2 + 1.536e-4 G^3
    g_max_us = spec.device.g_max * 1e6
    for g_us in (1.0, 10.0, 20.0, 30.0, 39.0):
        fit = 1.053 + 0.2374 * g_us - 1.167e-2 * g_us**2 + 1.536e-4 * g_us**3
        ours = _polynomial(spec.device.programming_noise.coefficients, g_us / g_max_us) * g_max_us
        assert ours == pytest.approx(fit, rel=1e-4)


def test_pcm_hermes_matches_the_published_chip():
    chip = load_preset("pcm-hermes-like")
    spec = chip.arrays["pcm"]
    # 64 cores of 256x256 weights; 4 PCM devices per weight (2 per schema cell)
    assert chip.cores.count == 64 and spec.rows == 256 and spec.weight_columns == 256
    assert chip.arrays_on_chip("pcm") * spec.rows * spec.cols * 2 == 64 * 256 * 256 * 4
    # one 8-bit ADC per weight column
    assert spec.adc.bits == 8 and spec.adc.columns_per_adc * spec.weight_columns == spec.cols
    assert spec.input_encoding.scheme == "dac" and spec.input_encoding.bits == 8
    # peak throughput: 2 ops per MAC, one MVM per (integration window + readout): 63.1 TOPS
    mvm_s = spec.read.read_pulse_s + spec.adc.conversion.latency_s
    tops = chip.arrays_on_chip("pcm") * 2 * spec.rows * spec.weight_columns / mvm_s / 1e12
    assert tops == pytest.approx(63.1, rel=0.02)
    # programming noise equals the 2-device HERMES fit in uS, g_max 20.7 uS
    fit = [0.16603222, 4.71806468, -8.48101252, 4.68961419]
    for x in (0.0, 0.25, 0.5, 1.0):
        assert _polynomial(spec.device.programming_noise.coefficients, x) * 20.7 == pytest.approx(_polynomial(fit, x), rel=1e-3, abs=1e-4)


def test_sram_digital_reproduces_89_tops_per_watt_and_16_tops_per_mm2():
    chip = load_preset("sram-digital-22nm")
    spec = chip.arrays["sram_dcim"]
    assert (spec.rows, spec.cols, spec.weight_bits, spec.input_encoding.bits) == (256, 256, 4, 4)
    assert spec.device.is_ideal and spec.adc is None
    # 2 ops per 4b x 4b MAC, 16 one-bit MACs each
    joules_per_op = spec.adder_tree.energy_per_bit_op_pj * 1e-12 * 16 / 2
    assert 1.0 / joules_per_op / 1e12 == pytest.approx(89.0, rel=1e-3)
    # one input bit per cycle: 2 ops x 16,384 weights x f / 4 cycles over the macro area
    macro_tops = 2 * spec.rows * spec.weight_columns * chip.clock_hz / spec.input_encoding.bits / 1e12
    macro_mm2 = spec.read.area_per_cell_um2 * spec.rows * spec.cols * 1e-6
    assert macro_tops / macro_mm2 == pytest.approx(16.3, rel=0.01)
    assert spec.read.read_pulse_s == pytest.approx(1.0 / chip.clock_hz, rel=1e-9)
    assert chip.roles.mvm == chip.roles.digital == "sram_dcim"


def test_hybrid_pools_embeddings_in_rram_and_runs_mlps_on_sram():
    chip = load_preset("hybrid-rram-sram-28nm")
    assert chip.technology.node_nm == 28
    assert chip.embedding_kind == "rram_emb"
    assert chip.roles.mvm == chip.roles.digital == "sram_dcim"
    emb = chip.arrays["rram_emb"]
    assert emb.kind == "analog" and emb.max_active_rows is not None and emb.max_active_rows < emb.rows
    assert chip.dram is not None and chip.dram.bandwidth_bytes_per_s > 0
    # in-array pooling: one on/off pulse per read
    assert emb.input_encoding.pulses == 1
    # one ADC step (full scale over the rows of one read / steps per side) equals one cell
    # level, so every ideal pooled sum (a whole number of levels) is digitized exactly
    full_scale_cells = emb.adc.full_scale * emb.max_active_rows
    adc_step = full_scale_cells / (2 ** (emb.adc.bits - 1) - 1)
    assert adc_step == pytest.approx(1.0 / (emb.device.n_levels - 1), rel=1e-9)
    # and clipping needs more than half of the active rows at full level with one sign
    assert full_scale_cells > emb.max_active_rows / 2


def test_hybrid_fits_the_criteo_dlrm_mlps_in_sram():
    chip = load_preset("hybrid-rram-sram-28nm")
    spec = chip.arrays["sram_dcim"]
    bottom, top = [13, 512, 256, 64, 16], [367, 512, 256, 1]
    layers = list(itertools.pairwise(bottom)) + list(itertools.pairwise(top))
    needed = sum(tile_grid(i, o, spec).arrays for i, o in layers)
    assert needed <= chip.arrays_on_chip("sram_dcim")


@pytest.mark.parametrize("name", SOURCED)
def test_physical_numbers_are_plausible(name: str):
    chip = load_preset(name)
    for kind, spec in chip.arrays.items():
        if spec.kind == "analog":
            # conductances between 10 nS and 1 mS, noise below 20 % of g_max at any state
            assert 1e-8 <= spec.device.g_max <= 1e-3, f"{name}: arrays.{kind}.device.g_max"
            for x in (0.0, 0.25, 0.5, 0.75, 1.0):
                assert _polynomial(spec.device.programming_noise.coefficients, x) < 0.2
            assert math.isfinite(spec.adc.conversion.energy_pj) and spec.adc.conversion.energy_pj < 100
    assert 1e6 <= chip.clock_hz <= 5e9
