"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from typing import Any

from cimflow.chip import Chip, chip_from_dict, load_preset


def chip_with(base: str = "ideal", **changes: Any) -> Chip:
    """A preset with some fields replaced; keys are dotted paths (``arrays.analog.adc.bits``)."""
    data = load_preset(base).model_dump(mode="json", exclude_none=True)
    for path, value in changes.items():
        node = data
        keys = path.split("__") if "__" in path else path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return chip_from_dict(data, origin=f"{base}+changes")
