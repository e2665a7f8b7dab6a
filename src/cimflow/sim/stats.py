"""Activity statistics of a simulated model, handed to the cost model as plain data.

``sim`` and ``cost`` are sibling layers: the simulator counts what its layers did (rows
driven per pulse, all-zero read groups, lookups per bag, ...) and :func:`gather_stats`
returns those counts as ``{layer name: {statistic: number}}``, which
:func:`cimflow.cost.estimate` reads without importing anything of ``sim``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from cimflow.errors import CimflowError
from cimflow.sim.convert import cim_layers
from cimflow.sim.embedding import CIMEmbeddingBag
from cimflow.sim.engine import ReadStats


def gather_stats(model: Any, batches: Iterable[Any], reset: bool = True) -> dict[str, dict[str, float]]:
    """Run ``batches`` through a converted (and programmed) model with statistics collection
    on, and return ``{layer name: statistics}`` for :func:`cimflow.cost.estimate`:
    ``ReadStats.to_dict()`` of matrix layers, the count dict (bags, lookups, reads,
    hot_lookups) of embedding tables.

    Each batch is a tensor or a tuple of positional arguments. ``reset`` clears earlier
    statistics first. Collection is switched off again afterwards.
    """
    layers = cim_layers(model)
    if not layers:
        raise CimflowError("gather_stats needs a model converted with cimflow.convert or cimflow.simulate (it has no CIM layers)")

    def switch(on: bool) -> None:
        for _, layer in layers:
            if isinstance(layer, CIMEmbeddingBag):
                layer.collect_stats = on
            else:
                layer.engine.collect_stats = on

    if reset:
        for _, layer in layers:
            if isinstance(layer, CIMEmbeddingBag):
                layer.stats = dict.fromkeys(layer.stats, 0)
            else:
                layer.engine.stats = ReadStats()
    switch(True)
    try:
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, tuple):
                    model(*batch)
                else:
                    model(batch)
    finally:
        switch(False)
    return {name: dict(layer.stats) if isinstance(layer, CIMEmbeddingBag) else layer.engine.stats.to_dict()
            for name, layer in layers}


__all__ = ["gather_stats"]
