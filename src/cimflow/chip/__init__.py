"""The hardware description: pydantic models, YAML I/O and shipped presets."""

from cimflow.chip.io import chip_from_dict, chip_to_yaml, load_chip_file, load_chip_yaml, load_preset, preset_names, resolve_chip
from cimflow.chip.spec import (
    ADC,
    ArraySpec,
    Chip,
    Core,
    Cost,
    Device,
    DigitalUnit,
    Drift,
    InputEncoding,
    Interconnect,
    Memory,
    ProgrammingNoise,
    Roles,
    TechnologyNode,
    WeightEncoding,
)

__all__ = [
    "ADC", "ArraySpec", "Chip", "Core", "Cost", "Device", "DigitalUnit", "Drift", "InputEncoding",
    "Interconnect", "Memory", "ProgrammingNoise", "Roles", "TechnologyNode", "WeightEncoding",
    "chip_from_dict", "chip_to_yaml", "load_chip_file", "load_chip_yaml", "load_preset", "preset_names", "resolve_chip",
]
