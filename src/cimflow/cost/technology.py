"""Technology scaling laws shared by the cost models.

Everything here is a ratio to a reference design point so that a constant fitted or quoted at
one node and supply can be re-targeted, and the result explained:

* capacitance scales with the feature size, ``C ∝ (L / L_ref) ** gamma``; ``gamma = 1`` is the
  textbook law, a fitted ``gamma < 1`` says wires and FinFET parasitics shrink more slowly than
  the node name;
* switched energy is ``E = C V^2``, so it scales with ``(L / L_ref) ** gamma * (V / V_ref) ** 2``;
* layout area scales with the square of the feature size, ``A ∝ (L / L_ref) ** 2``
  (areas are naturally quoted in F^2, the square of the node).

Units are SI: nodes in metres, supplies in volts.
"""

from __future__ import annotations

import math

from cimflow.errors import CimflowError

#: Reference node of the scaling laws (28 nm planar CMOS), in metres.
REFERENCE_NODE_M = 28e-9
#: Reference supply of the scaling laws, in volts.
REFERENCE_SUPPLY_V = 1.0


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise CimflowError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def capacitance_scale(node_m: float, exponent: float = 1.0, reference_node_m: float = REFERENCE_NODE_M) -> float:
    """Capacitance at ``node_m`` relative to the reference node: ``(node / ref) ** exponent``."""
    return (_positive("node_m", node_m) / _positive("reference_node_m", reference_node_m)) ** exponent


def switching_energy_scale(
    node_m: float,
    supply_v: float,
    exponent: float = 1.0,
    reference_node_m: float = REFERENCE_NODE_M,
    reference_supply_v: float = REFERENCE_SUPPLY_V,
) -> float:
    """Energy of a C V^2 event at (node, supply) relative to the reference point (dimensionless)."""
    voltage_ratio = _positive("supply_v", supply_v) / _positive("reference_supply_v", reference_supply_v)
    return capacitance_scale(node_m, exponent, reference_node_m) * voltage_ratio**2


def feature_area_m2(node_m: float) -> float:
    """Area of one F^2 at this node, in square metres (F = the node's feature size)."""
    return _positive("node_m", node_m) ** 2
