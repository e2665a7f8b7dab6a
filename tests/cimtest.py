"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from typing import Any

import torch

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


def random_lookups(per_bag: list[int], seed: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random lookups of ``per_bag[b]`` rows (of ``rows``) in each bag b: the per-bag
    counts (tensor), each lookup's bag, each lookup's row."""
    counts = torch.tensor(per_bag)
    bags = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    idx = torch.randint(0, rows, (bags.numel(),), generator=torch.Generator().manual_seed(seed))
    return counts, bags, idx
