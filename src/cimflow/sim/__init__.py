"""CIM modules that execute a mapping: crossbar engine, CIM layers, whole-model transforms."""

from cimflow.sim.convert import (
    ConversionReport,
    calibrate_model,
    cim_layers,
    compensate_model,
    convert_model,
    drift_model,
    program_model,
    write_pulses,
)
from cimflow.sim.embedding import CIMEmbeddingBag
from cimflow.sim.engine import CrossbarEngine, ReadStats
from cimflow.sim.layers import CIMConv, CIMLayer, CIMLinear
from cimflow.sim.stats import gather_stats
from cimflow.sim.tables import HashedTable, TableSource, TensorTable

__all__ = [
    "CIMConv", "CIMEmbeddingBag", "CIMLayer", "HashedTable", "TensorTable", "CIMLinear", "ConversionReport", "CrossbarEngine", "ReadStats",
    "TableSource",
    "calibrate_model", "cim_layers", "compensate_model", "convert_model", "drift_model", "gather_stats", "program_model", "write_pulses",
]
