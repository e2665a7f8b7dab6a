"""The device-model protocol and the laws several technologies share.

A model is built from its chip spec (:class:`cimflow.chip.spec.Device` or a subclass from
:mod:`cimflow.chip.devices`) and acts on conductance tensors (siemens, any shape):

- :meth:`DeviceModel.program`: target conductances -> programmed conductances (at t0) and
  the write pulses spent;
- :meth:`DeviceModel.sample_state`: the per-cell random state drawn once per programming
  (a drift exponent, a relaxation direction, ...), stacked on a leading axis;
- :meth:`DeviceModel.conductance`: the conductances ``t`` seconds after programming at the
  device's operating temperature (drift, relaxation, retention, read disturb);
- :meth:`DeviceModel.read_sigma`: the relative sigma of one read (float or per-cell tensor).

Every draw comes from a :class:`CellDraws` source, so the same model runs on a seeded
generator per purpose (weight matrices, :class:`GeneratorDraws`) or on a counter-based hash
per cell (embedding tables that are never materialized, :class:`HashedDraws`).

Temperature: a thermally activated process runs ``AF = exp(-Ea/k (1/T - 1/T_ref))`` times
faster at T than at T_ref = 300 K (:func:`arrhenius_factor`); a model applies it by ageing
the cell to ``t_eff = t0 + AF (t - t0)`` (:func:`effective_time`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from cimflow.chip.devices import CurvePiece, StateCurve
from cimflow.chip.spec import Device
from cimflow.physics.device import apply_drift, programming_sigma
from cimflow.physics.hashing import cell_normal, cell_uniform
from cimflow.physics.rng import generator_for

#: Boltzmann constant, eV / K (CODATA 2018, exact).
BOLTZMANN_EV = 8.617333262e-5
#: Temperature at which device parameters are quoted (room temperature; assumption).
T_REF_K = 300.0


class CellDraws(Protocol):
    """A source of per-cell random draws shaped like the cells being programmed. ``k``
    numbers repeated draws of one purpose (a verify iteration, an ISPP pulse)."""

    def normal(self, purpose: str, k: int = 0) -> torch.Tensor: ...

    def uniform(self, purpose: str, k: int = 0) -> torch.Tensor: ...


class GeneratorDraws:
    """Draws from one seeded generator per purpose, (seed, stream, purpose, side): each call
    takes the next values of that purpose's generator (``k`` is the call order)."""

    def __init__(self, shape: tuple[int, ...], seed: int, stream: str, side: str,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.shape, self.seed, self.stream, self.side = tuple(shape), int(seed), stream, side
        self.device, self.dtype = torch.device(device), dtype
        self._gens: dict[str, torch.Generator] = {}

    def _gen(self, purpose: str) -> torch.Generator:
        if purpose not in self._gens:
            self._gens[purpose] = generator_for(self.seed, self.stream, purpose, self.side, device=self.device)
        return self._gens[purpose]

    def normal(self, purpose: str, k: int = 0) -> torch.Tensor:
        return torch.randn(self.shape, generator=self._gen(purpose), device=self.device, dtype=self.dtype)

    def uniform(self, purpose: str, k: int = 0) -> torch.Tensor:
        return torch.rand(self.shape, generator=self._gen(purpose), device=self.device, dtype=self.dtype)


class HashedDraws:
    """Draws from a counter-based hash of (seed, stream, side, purpose, k, row, cell): the
    cells of any subset of table rows, in any order, get the same values. ``layout`` turns
    the (rows, cells) draws into the caller's shape."""

    def __init__(self, rows: torch.Tensor, cells: int, seed: int, stream: str, side: str,
                 layout: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> None:
        self.rows, self.cells, self.seed, self.stream, self.side, self.layout = rows, cells, int(seed), stream, side, layout

    def normal(self, purpose: str, k: int = 0) -> torch.Tensor:
        return self.layout(cell_normal(self.rows, self.cells, self.seed, self.stream, self.side, purpose, k))

    def uniform(self, purpose: str, k: int = 0) -> torch.Tensor:
        return self.layout(cell_uniform(self.rows, self.cells, self.seed, self.stream, self.side, purpose, k))


def arrhenius_factor(activation_energy_ev: float, temperature_k: float, reference_k: float = T_REF_K) -> float:
    """How much faster a process with activation energy Ea runs at T than at the reference:
    ``exp(-Ea / k_B (1/T - 1/T_ref))`` (1 at T = T_ref or Ea = 0)."""
    return math.exp(-activation_energy_ev / BOLTZMANN_EV * (1.0 / temperature_k - 1.0 / reference_k))


def effective_time(t: float, t0: float, factor: float) -> float:
    """The time ``t`` (s after programming) a cell held at an accelerated temperature has
    aged to: t0 + factor (t - t0) (unchanged for t <= t0)."""
    return t if t <= t0 or factor == 1.0 else t0 + factor * (t - t0)


def _piece_value(piece: CurvePiece, x: torch.Tensor) -> torch.Tensor:
    """One piece's formula at every x (a fresh tensor, built in place: a few passes)."""
    c = piece.coefficients
    if piece.form == "polynomial":  # Horner, highest power first (0 * x + c_last is c_last exactly)
        if len(c) == 1:
            y = torch.full_like(x, c[0])
        else:
            y = torch.mul(x, c[-1]).add_(c[-2])
            for coefficient in reversed(c[:-2]):
                y.mul_(x).add_(coefficient)
    elif piece.form == "log":
        y = x.clamp_min(1e-7).log_().mul_(c[1]).add_(c[0])
    else:
        y = x.clamp_min(1e-3).pow_(c[1]).mul_(c[0])
    if piece.y_min is not None or piece.y_max is not None:
        y.clamp_(piece.y_min, piece.y_max)
    return y


def evaluate_curve(curve: StateCurve, x: torch.Tensor) -> torch.Tensor:
    """The curve's value at x = G / g_max (see :class:`cimflow.chip.devices.CurvePiece`): each
    piece's formula evaluated in place, then one ``where`` per later piece (piece i holds from
    its ``x_from`` on; the first also below 0)."""
    out = _piece_value(curve.pieces[0], x)
    for piece in curve.pieces[1:]:
        out = torch.where(x >= piece.x_from, _piece_value(piece, x), out)
    return out


def curves_at_targets(spec: Device, target: torch.Tensor, *curves: StateCurve) -> list[torch.Tensor]:
    """Each curve at x = |target| / g_max. Target conductances on the device's level grid
    (``g_min + (g_max - g_min) level / (levels - 1)``, what :func:`cimflow.mapping.encode_weights`
    programs) take the curves evaluated once per level and gathered (a few passes over the
    cells, whatever the curves' pieces); any other target is evaluated directly."""
    levels, span = spec.n_levels, spec.g_max - spec.g_min
    if target.is_floating_point() and target.numel() > 4 * levels:
        grid = spec.g_min + span * torch.arange(levels, dtype=target.dtype, device=target.device) / (levels - 1)
        # (a NaN target, from a NaN weight, takes index 0 here: the check below then fails and
        # every target is evaluated directly, NaN giving NaN)
        index = (target - spec.g_min).mul_((levels - 1) / span).round_().nan_to_num_(0.0).clamp_(0, levels - 1).to(torch.int32).view(-1)
        if bool(grid.index_select(0, index).view_as(target).eq(target).all()):  # on the levels: the same x, the same values
            x = grid.div(spec.g_max).abs_()
            return [evaluate_curve(curve, x).index_select(0, index).view_as(target) for curve in curves]
    x = target.div(spec.g_max).abs_()
    return [evaluate_curve(curve, x) for curve in curves]


def retention_loss(g: torch.Tensor, anchor: float, rate: float, tau_s: float, t_eff: float, t0: float) -> torch.Tensor:
    """Log-time retention loss toward ``anchor`` (the state the stored charge or polarization
    relaxes to): ``anchor + (g - anchor) max(0, 1 - rate ln(1 + (t_eff - t0) / tau))``."""
    if t_eff <= t0 or rate == 0:
        return g
    kept = max(0.0, 1.0 - rate * math.log1p((t_eff - t0) / tau_s))
    return anchor + (g - anchor) * kept


class DeviceModel:
    """The generic model: the plain ``Device`` form's laws (polynomial programming noise,
    one drift-exponent distribution, constant relative read noise). Plug-ins subclass it and
    override what their technology does differently."""

    name = "generic"

    def __init__(self, spec: Device) -> None:
        self.spec = spec

    # ------------------------------------------------------------------ programming
    def program(self, target: torch.Tensor, draws: CellDraws, k: int = 0) -> tuple[torch.Tensor, int]:
        """One programming of every cell (``k``: which programming of the same cells, for
        verify): the conductances at t0 and the write pulses spent."""
        if self.spec.programming_noise.is_zero:
            return target.clone(), target.numel()
        sigma = programming_sigma(target, self.spec.g_max, self.spec.programming_noise.coefficients)
        return torch.addcmul(target, sigma, draws.normal("program", k)).clamp_min_(0.0), target.numel()

    def sample_state(self, target: torch.Tensor, g: torch.Tensor, draws: CellDraws) -> torch.Tensor:
        """Per-cell state drawn once per programming: here the drift exponents nu (shape of g)."""
        drift = self.spec.drift
        if drift.nu_std == 0:
            return torch.full_like(g, max(drift.nu_mean, 0.0))
        return torch.mul(draws.normal("drift"), drift.nu_std).add_(drift.nu_mean).clamp_min_(0.0)

    @property
    def t0(self) -> float:
        """Reference time, s: the programmed conductances are those read at t0."""
        return self.spec.drift.t0_s

    @property
    def acceleration(self) -> float:
        """Arrhenius factor of drift/retention at the operating temperature."""
        return arrhenius_factor(self.spec.drift.activation_energy_ev, self.spec.temperature_k)

    def conductance(self, g: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        """Conductances ``t`` seconds after programming (power-law drift, thermally accelerated)."""
        return apply_drift(g, state, effective_time(t, self.t0, self.acceleration), self.t0)

    def read_sigma(self, g: torch.Tensor, t: float) -> float | torch.Tensor:
        """Relative sigma of one read (a fraction of each cell's conductance). Every model now
        returns the device's ``read_noise`` field, which the simulator samples on column sums;
        noise that accumulates with time since programming (PCM's 1/f noise, RRAM relaxation)
        is part of :meth:`conductance`."""
        return self.spec.read_noise

    def write_cycles(self, verify_rounds: int) -> int:
        """Write cycles one programming costs the most-written cell (1, plus one per verify round)."""
        return 1 + verify_rounds


__all__ = ["BOLTZMANN_EV", "T_REF_K", "CellDraws", "DeviceModel", "GeneratorDraws", "HashedDraws", "arrhenius_factor",
           "curves_at_targets", "effective_time", "evaluate_curve", "retention_loss"]
