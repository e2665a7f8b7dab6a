"""Weight -> conductance encodings and tiling of weight matrices onto arrays."""

from cimflow.mapping.encoding import ConductanceTargets, encode_weights, weight_scales
from cimflow.mapping.tiling import TileGrid, tile_grid

__all__ = ["ConductanceTargets", "TileGrid", "encode_weights", "tile_grid", "weight_scales"]
