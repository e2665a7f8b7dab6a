"""Device and circuit effects as pure, seeded functions on tensors.

Every random draw takes an explicit :class:`torch.Generator`; :func:`generator_for`
derives one from (seed, instance, layer name, purpose) so that the same seed gives
bit-identical results on the same device.
"""

from cimflow.physics.converters import adc_quantize, dac_quantize, quantize_symmetric
from cimflow.physics.device import (
    apply_drift,
    apply_stuck_at,
    drift_exponents_,
    ir_drop_attenuate,
    ir_drop_path_cells,
    program_conductances,
    programming_sigma,
    quantize_to_levels,
    read_noise,
    sample_drift_exponents,
    sample_stuck_mask,
    stuck_codes_from,
)
from cimflow.physics.rng import derive_seed, generator_for

__all__ = [
    "adc_quantize", "apply_drift", "apply_stuck_at", "dac_quantize", "drift_exponents_", "derive_seed", "generator_for",
    "ir_drop_attenuate", "ir_drop_path_cells", "program_conductances", "programming_sigma", "quantize_symmetric",
    "quantize_to_levels", "read_noise", "sample_drift_exponents", "sample_stuck_mask",
    "stuck_codes_from",
]
