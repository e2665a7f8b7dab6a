"""Device models as plug-ins: one module per technology, one registry.

``model_for(spec)`` returns the model the chip spec's ``device.model`` names (the plain
``Device`` form is ``generic``). A model maps target conductances to programmed ones and says
how they move with time and temperature (:class:`~cimflow.physics.devices.base.DeviceModel`);
register a new one with :func:`register`. docs/devices.md lists the laws and their sources.
"""

from __future__ import annotations

from cimflow.chip.spec import Device
from cimflow.errors import ChipSpecError
from cimflow.physics.devices.base import (
    CellDraws,
    DeviceModel,
    GeneratorDraws,
    HashedDraws,
    arrhenius_factor,
    curves_at_targets,
    effective_time,
    evaluate_curve,
    retention_loss,
)
from cimflow.physics.devices.charge_sram import ChargeSRAMModel
from cimflow.physics.devices.fefet import FeFETModel
from cimflow.physics.devices.mram import MRAMModel, switching_probability
from cimflow.physics.devices.nor_flash import NORFlashModel
from cimflow.physics.devices.pcm import PCMModel
from cimflow.physics.devices.rram import RRAMModel
from cimflow.physics.devices.wear import check_endurance

#: model name -> model class (the names of cimflow.chip.devices.DEVICE_SPECS).
REGISTRY: dict[str, type[DeviceModel]] = {}


def register(cls: type[DeviceModel]) -> type[DeviceModel]:
    """Add a model class under its ``name`` (usable as a class decorator)."""
    REGISTRY[cls.name] = cls
    return cls


for _cls in (DeviceModel, PCMModel, RRAMModel, NORFlashModel, MRAMModel, FeFETModel, ChargeSRAMModel):
    register(_cls)


def model_for(spec: Device) -> DeviceModel:
    """The device model of ``spec`` (its ``model`` field)."""
    cls = REGISTRY.get(spec.model)
    if cls is None:
        raise ChipSpecError(f"device model must be one of {', '.join(sorted(REGISTRY))}, got {spec.model!r}")
    return cls(spec)


__all__ = ["REGISTRY", "CellDraws", "ChargeSRAMModel", "DeviceModel", "FeFETModel", "GeneratorDraws", "HashedDraws", "MRAMModel",
           "NORFlashModel", "PCMModel", "RRAMModel", "arrhenius_factor", "check_endurance", "curves_at_targets", "effective_time",
           "evaluate_curve", "model_for", "register", "retention_loss", "switching_probability"]
