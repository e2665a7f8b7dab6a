"""Device models named in the chip YAML: ``device: {model: pcm, ...its own fields...}``.

The plain :class:`~cimflow.chip.spec.Device` form (no ``model``, or ``model: generic``) is the
generic model: one programming-noise polynomial, one drift-exponent distribution, one read
noise. Every other model is a subclass that adds its own physics fields, each with physical
bounds; :func:`parse_device` picks the class from ``model`` (``auto``: the technology's own
model, :data:`TECHNOLOGY_MODELS`). The physics behind each model is
:mod:`cimflow.physics.devices` (one module per technology); docs/devices.md gives the laws
and their sources. This module knows nothing of PyTorch.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from cimflow.chip.spec import Device, Drift, StrictModel

#: The model each technology uses under ``model: auto``.
TECHNOLOGY_MODELS = {"pcm": "pcm", "rram": "rram", "nor_flash": "nor_flash", "mram": "mram", "fefet": "fefet", "sram": "generic"}


class CurvePiece(StrictModel):
    """One piece of a state-dependent curve y(x), x = G / g_max, used from ``x_from`` on:
    ``polynomial``: sum_k c_k x^k; ``log``: c_0 + c_1 ln(x); ``power``: c_0 x^c_1
    (x floored at 1e-7 for ``log`` and 1e-3 for ``power``); then clipped to [y_min, y_max]."""

    x_from: float = Field(default=0.0, ge=0, le=1, description="where this piece starts, as G/g_max")
    form: Literal["polynomial", "log", "power"] = "polynomial"
    coefficients: list[float] = Field(min_length=1, max_length=8)
    y_min: float | None = Field(default=None, ge=-100, le=100)
    y_max: float | None = Field(default=None, ge=-100, le=100)

    @model_validator(mode="after")
    def _check(self) -> CurvePiece:
        if any(not math.isfinite(c) or abs(c) > 100 for c in self.coefficients):
            raise ValueError("coefficients must be finite numbers within [-100, 100]")
        if self.form in ("log", "power") and len(self.coefficients) != 2:
            raise ValueError(f"a {self.form} piece takes exactly 2 coefficients, got {len(self.coefficients)}")
        if self.form == "power" and self.coefficients[1] < -2:
            raise ValueError("a power piece's exponent must be at least -2 (y stays finite at x = 1e-3)")
        if self.y_min is not None and self.y_max is not None and self.y_min > self.y_max:
            raise ValueError(f"y_min ({self.y_min:g}) must not exceed y_max ({self.y_max:g})")
        return self


class StateCurve(StrictModel):
    """A curve of the normalized conductance x = G / g_max, in pieces (the first from x = 0)."""

    pieces: list[CurvePiece] = Field(min_length=1, max_length=8)
    source: str | None = None

    @model_validator(mode="after")
    def _check(self) -> StateCurve:
        starts = [p.x_from for p in self.pieces]
        if starts[0] != 0:
            raise ValueError("the first piece must start at x_from = 0")
        if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
            raise ValueError(f"x_from must increase from piece to piece, got {starts}")
        return self


def _curve(*pieces: dict) -> StateCurve:
    return StateCurve(pieces=[CurvePiece(**p) for p in pieces])


class ModelDevice(Device):
    """A named device model (every model but the generic one): not ideal, and where the model
    has its own law of change over time (``drift_replaced_by``), the generic power-law drift
    exponents are refused rather than silently ignored."""

    #: what stands in for the generic power-law drift in this model (None: drift.nu_* allowed).
    drift_replaced_by: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _own_drift_law(self) -> ModelDevice:
        if self.drift_replaced_by is not None and (self.drift.nu_mean or self.drift.nu_std):
            raise ValueError(f"model {self.model} has {self.drift_replaced_by}, not the generic power-law drift: "
                             "leave drift.nu_mean and drift.nu_std at 0")
        return self

    @property
    def is_ideal(self) -> bool:
        return False


class PCMDevice(ModelDevice):
    """Phase-change memory: conductance-dependent drift exponent nu(x) ~ N(mean(x), std(x)),
    G(t) = G_prog (t / t0)^-nu, plus accumulated 1/f noise of sigma
    G(t) Q_s(x) sqrt(ln((t + t_read) / (2 t_read))), drawn once per cell and scaled with t.
    Defaults: the 1-million-device characterization [joshi2020] as published with
    aihwkit's PCMLikeNoiseModel (t0 = 20 s, t_read = 250 ns)."""

    model: Literal["pcm"] = "pcm"  # type: ignore[assignment]
    drift: Drift = Field(default_factory=lambda: Drift(t0_s=20.0))
    drift_nu_mean: StateCurve = Field(default_factory=lambda: _curve(
        {"form": "log", "coefficients": [0.0244, -0.0155], "y_min": 0.049, "y_max": 0.1}))
    drift_nu_std: StateCurve = Field(default_factory=lambda: _curve(
        {"form": "log", "coefficients": [-0.0059, -0.0125], "y_min": 0.008, "y_max": 0.045}))
    noise_q_s: StateCurve = Field(default_factory=lambda: _curve(
        {"form": "power", "coefficients": [0.0088, -0.65], "y_max": 0.2}))
    t_read_s: float = Field(default=250e-9, ge=1e-12, le=1.0, description="read pulse width of the 1/f fit, s")
    drift_replaced_by: ClassVar[str | None] = "drift exponents from drift_nu_mean / drift_nu_std (curves of G/g_max)"



class RRAMDevice(ModelDevice):
    """Resistive RAM: state-dependent programming noise (the ``programming_noise`` polynomial)
    and relaxation after programming: for t > t0 each cell moves by
    g_max [shift_per_decade log10(t/t0) + sigma(x) log10(t/t0) z], z ~ N(0, 1) drawn once per
    cell (mean and spread linear in log time, as fitted to filamentary HfOx cells)."""

    model: Literal["rram"] = "rram"  # type: ignore[assignment]
    relaxation_sigma_per_decade: StateCurve = Field(default_factory=lambda: _curve({"coefficients": [0.005]}),
                                                    description="spread added per decade after t0, fraction of g_max")
    relaxation_shift_per_decade: float = Field(default=0.0, ge=-0.5, le=0.5,
                                               description="mean shift per decade after t0, fraction of g_max")


class NORFlashDevice(ModelDevice):
    """NOR flash / charge-trap cell programmed by incremental step pulses (ISPP) with verify:
    from the erased state (g_max) each pulse raises the threshold voltage by ``ispp_step_v``
    (+ N(0, ``pulse_sigma_v``)) until it passes the verify level (half a step below the
    target), so the final error lies within half a step plus the pulse noise. Conductance is
    taken linear in V_th across ``vth_window_v`` (g_max erased, g_min fully programmed).
    Retention: stored charge leaks as ``retention_rate`` ln(1 + t_eff / ``retention_tau_s``)."""

    model: Literal["nor_flash"] = "nor_flash"  # type: ignore[assignment]
    drift: Drift = Field(default_factory=lambda: Drift(activation_energy_ev=1.1))
    vth_window_v: float = Field(default=4.0, ge=0.1, le=20.0, description="V_th span from erased to fully programmed, V")
    ispp_step_v: float = Field(default=0.1, ge=1e-3, le=5.0, description="V_th step per program pulse, V")
    pulse_sigma_v: float = Field(default=0.02, ge=0, le=5.0, description="pulse-to-pulse V_th step spread, V")
    max_pulses: int = Field(default=512, ge=1, le=100_000, description="ISPP pulses before a cell is given up")
    retention_rate: float = Field(default=0.002, ge=0, le=1, description="fraction of stored charge lost per e-fold of time")
    retention_tau_s: float = Field(default=1.0, ge=1e-9, le=1e9, description="retention time constant, s")
    drift_replaced_by: ClassVar[str | None] = "retention loss (retention_rate)"

    @model_validator(mode="after")
    def _flash(self) -> NORFlashDevice:
        if not self.programming_noise.is_zero:
            raise ValueError("model nor_flash programs by ISPP (ispp_step_v, pulse_sigma_v); leave programming_noise at 0")
        return self


class MRAMDevice(ModelDevice):
    """Spin-transfer-torque MRAM: binary cells (levels 2) switched stochastically. A write
    pulse of ``write_pulse_s`` at ``write_current_ratio`` = I/I_c0 switches with probability
    1 - exp(-t_p / tau), tau = ``attempt_time_s`` exp(Delta (1 - I/I_c0)) (thermally assisted
    switching), Delta = ``thermal_stability`` x 300 K / T. A failed write leaves the cell reset
    (g_min). Each read is a weak pulse of the same law (read disturb: g_max -> g_min), read
    ``reads_per_second`` times per cell after programming."""

    model: Literal["mram"] = "mram"  # type: ignore[assignment]
    thermal_stability: float = Field(default=60.0, ge=1, le=200, description="Delta = E_b / kT at 300 K")
    attempt_time_s: float = Field(default=1e-9, ge=1e-12, le=1e-6, description="tau_0, s")
    write_current_ratio: float = Field(default=1.005, ge=0, le=10, description="write current / critical current I_c0")
    write_pulse_s: float = Field(default=10e-9, ge=1e-12, le=1e-3)
    read_current_ratio: float = Field(default=0.3, ge=0, le=1, description="read current / critical current I_c0")
    read_pulse_s: float = Field(default=10e-9, ge=1e-12, le=1e-3)
    reads_per_second: float = Field(default=1e3, ge=0, le=1e10, description="reads of each cell per second of operation")
    drift_replaced_by: ClassVar[str | None] = "write errors and read disturb"

    @model_validator(mode="after")
    def _mram(self) -> MRAMDevice:
        if self.n_levels != 2:
            raise ValueError(f"model mram cells are binary: levels must be 2, got {self.n_levels}")
        if not self.programming_noise.is_zero:
            raise ValueError("model mram cells are binary: leave programming_noise at 0 (write errors model it)")
        return self


class FeFETDevice(ModelDevice):
    """Ferroelectric FET: multi-level (``levels``), programming noise from the polynomial, and
    retention loss (depolarization): the memory window closes toward its middle as
    G(t) = g_mid + (G_prog - g_mid) max(0, 1 - ``retention_rate`` ln(1 + t_eff / ``retention_tau_s``))."""

    model: Literal["fefet"] = "fefet"  # type: ignore[assignment]
    drift: Drift = Field(default_factory=lambda: Drift(activation_energy_ev=1.0))
    retention_rate: float = Field(default=0.004, ge=0, le=1, description="window closed per e-fold of time")
    retention_tau_s: float = Field(default=1.0, ge=1e-9, le=1e9, description="retention time constant, s")
    drift_replaced_by: ClassVar[str | None] = "retention loss (retention_rate)"


class ChargeSRAMDevice(ModelDevice):
    """Charge-domain SRAM compute (a bit cell switching a capacitor): binary cells whose
    weight is set by a capacitor, so the error is a static per-cell gain error
    eps ~ N(0, sigma), sigma = A_C / sqrt(2 x area) (Pelgrom's law for one capacitor,
    A_C quoted for the difference of a pair), instead of conductance noise; no drift."""

    model: Literal["charge_sram"] = "charge_sram"  # type: ignore[assignment]
    capacitor_area_um2: float = Field(default=1.0, ge=1e-4, le=1e4, description="area of one cell's capacitor, um^2")
    pelgrom_a_pct_um: float = Field(default=0.5, ge=0, le=100, description="Pelgrom A_C: sigma(dC/C) of a pair x sqrt(area), % um")
    drift_replaced_by: ClassVar[str | None] = "a static capacitor mismatch (no drift)"

    @model_validator(mode="after")
    def _charge(self) -> ChargeSRAMDevice:
        if self.technology != "sram":
            raise ValueError(f"model charge_sram needs technology sram, got {self.technology}")
        if self.n_levels != 2:
            raise ValueError(f"model charge_sram cells are SRAM bits: levels must be 2, got {self.n_levels}")
        if not self.programming_noise.is_zero or self.read_noise:
            raise ValueError("model charge_sram has capacitor mismatch instead of conductance noise: "
                             "leave programming_noise and read_noise at 0")
        return self

    @property
    def mismatch_sigma(self) -> float:
        """Relative sigma of one capacitor: A_C / sqrt(2 area) (A_C in % um, area in um^2)."""
        return self.pelgrom_a_pct_um / 100.0 / math.sqrt(2.0 * self.capacitor_area_um2)

    @property
    def is_ideal(self) -> bool:
        return self.mismatch_sigma == 0 and Device.is_ideal.fget(self)  # type: ignore[attr-defined]


#: model name -> spec class (the physics registry, :mod:`cimflow.physics.devices`, has the same names).
DEVICE_SPECS: dict[str, type[Device]] = {
    "generic": Device, "pcm": PCMDevice, "rram": RRAMDevice, "nor_flash": NORFlashDevice, "mram": MRAMDevice,
    "fefet": FeFETDevice, "charge_sram": ChargeSRAMDevice,
}


def parse_device(value: Any) -> Any:
    """The device spec for ``value`` (a mapping from YAML, or a Device): the class ``model``
    names (``generic`` when absent; ``auto``: the technology's model). The generic form is
    returned as a mapping for the field to validate; anything else is left to pydantic."""
    if isinstance(value, Device) or not isinstance(value, dict):
        return value
    name = value.get("model", "generic")
    if name == "auto":
        tech = value.get("technology")
        name = TECHNOLOGY_MODELS.get(tech, "generic") if isinstance(tech, str) else "generic"
        value = {**value, "model": name}
    cls = DEVICE_SPECS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"device model must be one of {', '.join(sorted(DEVICE_SPECS))} or auto, got {name!r}")
    if cls is Device:  # validated as the field's own type, so errors keep their file line
        return {k: v for k, v in value.items() if k != "model"}
    return cls.model_validate(value)  # its ValidationError is reported under the field's location


__all__ = ["DEVICE_SPECS", "TECHNOLOGY_MODELS", "ChargeSRAMDevice", "CurvePiece", "FeFETDevice", "MRAMDevice",
           "ModelDevice", "NORFlashDevice", "PCMDevice", "RRAMDevice", "StateCurve", "parse_device"]
