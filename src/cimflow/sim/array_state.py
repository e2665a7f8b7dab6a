"""One programmed array instance: the lifecycle shared by crossbar layers and embedding tables.

A chip instance goes through the same steps whatever its arrays hold (a weight matrix,
:class:`cimflow.sim.engine.CrossbarEngine`, or an embedding table,
:class:`cimflow.sim.embedding.CIMEmbeddingBag`):

- **program** every cell once (programming noise, stuck cells, drift exponents), optionally
  with **program-and-verify**, counting write pulses;
- **age** it (:meth:`ArrayInstance.set_time`: drift, the effective weights and read-noise
  variances at ``t``);
- **compensate** drift from a reference read (one factor per layer, or one per column);
- **calibrate** the ADC range on data (mean + k sigma, or the percentile, of the partial sums
  seen); without data the ``expected`` full scale comes from the weights' column statistics
  (:func:`expected_full_scale`).

:class:`ArrayInstance` is the base class of both owners: it holds that state, its tensors as
registered (non-persistent) buffers so ``.to(device)`` moves every one of them, and the
steps' logic, with small hooks the owner fills in (how it reads its reference columns, how
it refreshes its cached weights). The cell physics is called here and only here
(:func:`program_cells`, :func:`program_hashed_cells`, :func:`effective_weights`), through
the functions of :mod:`cimflow.physics`, so a device model plugs in at one place.

Draws: a matrix layer draws each purpose from its own seeded generator (seed, layer,
purpose, side); a table draws each cell from a counter-based hash of (seed, table, row,
cell, side) so that a table of 10^8 rows is never materialized. Both give the same
distributions.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from cimflow.chip.spec import ArraySpec, Device, InputEncoding
from cimflow.errors import SimulationError
from cimflow.mapping import ConductanceTargets
from cimflow.physics import (
    apply_drift,
    apply_stuck_at,
    generator_for,
    program_conductances,
    programming_sigma,
    sample_drift_exponents,
    sample_stuck_mask,
)
from cimflow.physics.devices import CellDraws, DeviceModel, GeneratorDraws, HashedDraws, check_endurance, model_for
from cimflow.physics.devices.array_yield import columns_dead, dead_cells, rows_unrepaired
from cimflow.physics.hashing import cell_draws, cell_normal, cell_uniform

EPS = 1e-12

#: Drift-compensation modes of :meth:`ArrayInstance.set_compensation` (None: off).
COMPENSATION_MODES = (None, "global", "per_column")


def check_compensation_mode(mode: str | None) -> str | None:
    """``mode`` if it is a known drift-compensation mode (``"none"`` reads as None), else a SimulationError."""
    if mode == "none":
        return None
    if mode not in COMPENSATION_MODES:
        raise SimulationError(f"compensation mode must be one of 'global', 'per_column' or None, got {mode!r}")
    return mode


def check_verify_settings(iterations: object, tolerance: object) -> tuple[int, float | None]:
    """Validated program-and-verify settings (iterations >= 0, tolerance > 0 or None)."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise SimulationError(f"verify_iterations must be an integer >= 0, got {iterations!r}")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
                                      and tolerance > 0 and math.isfinite(tolerance)):
        raise SimulationError(f"verify_tolerance must be a positive fraction of g_max (or None), got {tolerance!r}")
    return iterations, None if tolerance is None else float(tolerance)


# ---------------------------------------------------------------------- cell physics (the one place)
def verify_cells(g: torch.Tensor, target: torch.Tensor, stuck: torch.Tensor | None, tolerance: torch.Tensor, iterations: int,
                 redraw: Callable[[int], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Iterative program-and-verify: every cell whose conductance misses ``target`` by more
    than ``tolerance`` (siemens, per cell) is programmed again (``redraw(k)``, a fresh
    programming of every cell at iteration k = 1, 2, ...), up to ``iterations`` times. Stuck
    cells (``stuck`` true) keep their value and fail every verify. Returns the conductances
    and the re-programming pulses spent (one per re-programmed cell and iteration)."""
    pulses = 0
    for k in range(1, iterations + 1):
        bad = (g - target).abs() > tolerance
        count = int(bad.sum())
        if count == 0:
            break
        pulses += count
        g = torch.where(bad if stuck is None else bad & ~stuck, redraw(k), g)
    return g, pulses


def verify_tolerance_of(target: torch.Tensor, device: Device, tolerance: float | None) -> torch.Tensor:
    """Per-cell verify tolerance in siemens: a fraction of g_max, or each cell's own programming sigma (None)."""
    if tolerance is None:
        return programming_sigma(target, device.g_max, device.programming_noise.coefficients)
    return torch.full_like(target, tolerance * device.g_max)


def program_cells(target: torch.Tensor, device: Device, seed: int, stream: str, side: str, verify_iterations: int = 0,
                  verify_tolerance: float | None = None,
                  array_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Program the cells ``target`` (siemens) of one side of a matrix layer, every purpose from
    its own generator (seed, stream, purpose, side): programming noise, stuck cells,
    program-and-verify, drift exponents. Returns conductances, drift exponents, the stuck
    codes (int8: 1 on, -1 off, 0 healthy) and the write pulses (one per cell, plus verify).
    A device model other than ``generic`` programs through its plug-in
    (:mod:`cimflow.physics.devices`); the drift exponents are then its per-cell state.
    ``array_shape`` (rows, columns per array of one side) turns on array yield: cells on
    unrepaired dead rows or dead columns are stuck at g_min."""
    if device.model != "generic":
        draws = GeneratorDraws(tuple(target.shape), seed, stream, side, device=target.device, dtype=target.dtype)
        mask = stuck_codes(tuple(target.shape), device, seed, stream, side, array_shape, target.device)
        g, state, pulses = program_with_model(model_for(device), target, draws, mask, verify_iterations, verify_tolerance)
        return g, state, mask, pulses
    coeffs = device.programming_noise.coefficients
    gen = generator_for(seed, stream, "program", side, device=target.device)
    g = program_conductances(target, device.g_max, coeffs, gen)
    mask = stuck_codes(tuple(target.shape), device, seed, stream, side, array_shape, target.device)
    g = apply_stuck_at(g, mask, device.g_min, device.g_max)
    pulses = target.numel()
    if verify_iterations:
        tol = verify_tolerance_of(target, device, verify_tolerance)
        g, extra = verify_cells(g, target, mask != 0, tol, verify_iterations,
                                lambda k: program_conductances(target, device.g_max, coeffs, gen))
        pulses += extra
    drift_gen = generator_for(seed, stream, "drift", side, device=target.device)
    nu = sample_drift_exponents(target.shape, device.drift.nu_mean, device.drift.nu_std, drift_gen, device=target.device)
    return g, nu, mask, pulses


def stuck_codes(shape: tuple[int, ...], device: Device, seed: int, stream: str, side: str, array_shape: tuple[int, int] | None,
                on: torch.device | str = "cpu") -> torch.Tensor:
    """The stuck codes (int8: 1 on, -1 off, 0 healthy) of one side of a matrix layer, from the
    generator (seed, stream, "stuck", side), cells on dead lines included (``array_shape``,
    :func:`with_dead_lines`): what :func:`program_cells` applies, re-drawn identically."""
    gen = generator_for(seed, stream, "stuck", side, device=on)
    mask = sample_stuck_mask(shape, device.stuck_on_rate, device.stuck_off_rate, gen, device=on)
    return with_dead_lines(mask, device, seed, stream, side, array_shape)


def with_dead_lines(mask: torch.Tensor, device: Device, seed: int, stream: str, side: str,
                    array_shape: tuple[int, int] | None) -> torch.Tensor:
    """Stuck codes with the cells on dead lines (array yield,
    :func:`cimflow.physics.devices.array_yield.dead_cells`) stuck at g_min (code -1). Row
    draws are shared by both sides of the matrix (they are the same physical rows)."""
    if array_shape is None or device.array_yield.is_zero or mask.dim() != 3:
        return mask
    row_gen = generator_for(seed, stream, "yield-rows", device=mask.device)
    col_gen = generator_for(seed, stream, "yield-cols", side, device=mask.device)
    shape = (mask.shape[0], mask.shape[1], mask.shape[2])
    dead = dead_cells(shape, array_shape[0], array_shape[1], device.array_yield, row_gen, col_gen, device=mask.device)
    return torch.where(dead, torch.full_like(mask, -1), mask)


def table_dead_cells(rows: torch.Tensor, s_count: int, dim: int, device: Device, seed: int, stream: str, side: str,
                     array_shape: tuple[int, int]) -> torch.Tensor | None:
    """Boolean (S, n, dim): the cells of the table rows ``rows`` (n,) on one side that sit on an
    unrepaired dead row or a dead column (array yield, the law of
    :mod:`cimflow.physics.devices.array_yield`); None without array yield. Row r lies in the
    row tile ``r // rows`` of arrays of ``array_shape`` (rows, columns), column j in the column
    tile ``j // columns``; every slice has its own columns. The uniforms of an array's lines
    are hashed from its index (seed, stream, "yield-rows" / "yield-cols", side): only the
    arrays holding ``rows`` are drawn, with the same values in any subset or order. Row draws
    are shared by both sides (the same physical rows)."""
    spec = device.array_yield
    if spec.is_zero:
        return None
    a_rows, a_cols = array_shape
    col_tiles = -(-dim // a_cols)
    row_tiles, inverse = torch.unique(torch.div(rows, a_rows, rounding_mode="floor"), return_inverse=True)
    tile = torch.arange(col_tiles, device=rows.device)
    arrays = (row_tiles.unsqueeze(1) * col_tiles + tile).reshape(-1)  # the arrays in use, (tiles x col_tiles)
    bad_rows = rows_unrepaired(cell_uniform(arrays, a_rows, seed, stream, "yield-rows"), spec)  # (arrays, a_rows)
    used = min(a_cols, dim)  # the columns of an array that hold the table (a column's draw is its own)
    lines = (arrays.unsqueeze(1) * s_count + torch.arange(s_count, device=rows.device)).reshape(-1)  # (array, slice)
    col_u = cell_uniform(lines, used, seed, stream, "yield-cols", side).view(arrays.numel(), s_count, used)
    bad_cols = columns_dead(col_u, spec).permute(1, 0, 2)  # (S, arrays, used)
    j = torch.arange(dim, device=rows.device)
    local = inverse.unsqueeze(1) * col_tiles + torch.div(j, a_cols, rounding_mode="floor").unsqueeze(0)  # (n, dim)
    on_dead_row = bad_rows[local, (rows % a_rows).unsqueeze(1)]
    on_dead_col = bad_cols[:, local, (j % a_cols).unsqueeze(0)]
    return on_dead_row.unsqueeze(0) | on_dead_col


def program_hashed_cells(target: torch.Tensor, device: Device, rows: torch.Tensor, seed: int, stream: str, side: str,
                         verify_iterations: int = 0, verify_tolerance: float | None = None,
                         dead: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Program the cells ``target`` (S, n, dim) of the table rows ``rows`` (n,) on one side,
    every cell's draws from the counter-based hash of (seed, stream, row, cell, side)
    (:func:`cimflow.physics.hashing.cell_draws`; the verify re-programming of iteration k
    from key k): the same laws as :func:`program_cells`, for any subset of rows, in any
    order, with the same values. ``dead`` (S, n, dim; :func:`table_dead_cells`): cells on
    dead lines, stuck at g_min. Returns conductances, drift exponents and the verify pulses."""
    s_count, n, d = target.shape
    if device.model != "generic":
        hashed = HashedDraws(rows, s_count * d, seed, stream, side, layout=lambda x: x.view(n, s_count, d).permute(1, 0, 2))
        u = hashed.uniform("stuck")
        mask = torch.zeros(target.shape, dtype=torch.int8, device=target.device)
        mask[u < device.stuck_on_rate] = 1
        mask[(u >= device.stuck_on_rate) & (u < device.stuck_on_rate + device.stuck_off_rate)] = -1
        if dead is not None:
            mask[dead] = -1
        g, state, pulses = program_with_model(model_for(device), target, hashed, mask, verify_iterations, verify_tolerance)
        return g, state, pulses - target.numel()  # the verify pulses only, as below
    noisy = not device.programming_noise.is_zero or bool(device.stuck_on_rate or device.stuck_off_rate) or device.drift.nu_std > 0
    draws: list[torch.Tensor] = []
    if noisy:  # cell (row, s, column): two normals and a uniform, hashed
        draws = [x.view(n, s_count, d).permute(1, 0, 2) for x in cell_draws(rows, s_count * d, seed, stream, side)]
    g, sigma, stuck, pulses = target, None, None, 0
    if not device.programming_noise.is_zero:
        sigma = programming_sigma(target, device.g_max, device.programming_noise.coefficients)
        g = (target + sigma * draws[0]).clamp_min(0.0)
    if device.stuck_on_rate or device.stuck_off_rate:
        u = draws[2]
        stuck_on = u < device.stuck_on_rate
        stuck_off = (u >= device.stuck_on_rate) & (u < device.stuck_on_rate + device.stuck_off_rate)
        if dead is not None:
            stuck_on, stuck_off = stuck_on & ~dead, stuck_off | dead
        stuck = stuck_on | stuck_off
        g = torch.where(stuck_on, torch.full_like(g, device.g_max), g)
        g = torch.where(stuck_off, torch.full_like(g, device.g_min), g)
    elif dead is not None:
        stuck = dead
        g = torch.where(dead, torch.full_like(g, device.g_min), g)
    if verify_iterations and sigma is not None:
        tol = sigma if verify_tolerance is None else torch.full_like(target, verify_tolerance * device.g_max)
        sig = sigma

        def redraw(k: int) -> torch.Tensor:
            z = cell_normal(rows, s_count * d, seed, stream, side, "program", k).view(n, s_count, d).permute(1, 0, 2)
            return (target + sig * z).clamp_min(0.0)

        g, pulses = verify_cells(g, target, stuck, tol, verify_iterations, redraw)
    if device.drift.nu_std > 0:
        nu = (device.drift.nu_mean + device.drift.nu_std * draws[1]).clamp_min(0.0)
    else:
        nu = torch.full_like(g, max(device.drift.nu_mean, 0.0))
    return g, nu, pulses


def program_with_model(model: DeviceModel, target: torch.Tensor, draws: CellDraws, stuck: torch.Tensor,
                       verify_iterations: int, verify_tolerance: float | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Program ``target`` through a device plug-in: its programming law, the stuck codes
    ``stuck`` applied, program-and-verify (a fresh programming per round; tolerance None: each
    cell's programming sigma, and no verify where the model has none), then its per-cell
    state. Returns conductances, state and every write pulse spent."""
    device = model.spec
    g, pulses = model.program(target, draws)
    g = apply_stuck_at(g, stuck, device.g_min, device.g_max)
    if verify_iterations and not (verify_tolerance is None and device.programming_noise.is_zero):
        tol = verify_tolerance_of(target, device, verify_tolerance)
        g, again = verify_cells(g, target, stuck != 0, tol, verify_iterations, lambda k: model.program(target, draws, k)[0])
        pulses += round(again * pulses / max(target.numel(), 1))  # a re-programmed cell costs the mean pulses per cell
    return g, model.sample_state(target, g, draws), pulses


class InstanceSource(Protocol):
    """Where a matrix layer's instance takes its per-cell draws from instead of its own seeded
    generators (e.g. the cached pools of hardware-aware training,
    :class:`cimflow.train.draws.InstanceDraws`). ``shape`` is (2 S, in, out): the positive
    cells of every slice, then the negative ones."""

    def cells(self, shape: tuple[int, ...]) -> CellDraws:
        """The draws of every cell (programming noise, drift state, any purpose a device asks for)."""
        ...

    def stuck(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The cells' stuck codes (int8: 1 on, -1 off, 0 healthy)."""
        ...


def program_from_source(target: torch.Tensor, device: Device, source: InstanceSource, verify_iterations: int = 0,
                        verify_tolerance: float | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Program ``target`` (2 S, in, out) from a draw source through the device's model (the
    generic model included: its laws are those of :func:`program_cells`). Returns
    conductances, per-cell state (drift exponents, or a plug-in's stacked state) and pulses."""
    shape = tuple(target.shape)
    return program_with_model(model_for(device), target, source.cells(shape), source.stuck(shape), verify_iterations,
                              verify_tolerance)


def program_matrix(targets: ConductanceTargets, device: Device, seed: int, stream: str, array_shape: tuple[int, int],
                   expand: Callable[[torch.Tensor], torch.Tensor], draws: InstanceSource | None, verify_iterations: int,
                   verify_tolerance: float | None, what: str) -> tuple[tuple[torch.Tensor, ...], int]:
    """Program both sides of a matrix layer's targets: ((G+, G-, state+, state-), write pulses).
    Each side from its own generators (:func:`program_cells`; offset encoding: one reference
    cell per row and array, ``expand`` spreading it over the array's columns), or both from
    a draw source (:func:`program_from_source`; paired encodings without array yield)."""
    pos, neg = torch.stack(targets.positive), torch.stack(targets.negative)
    if draws is not None:
        if targets.reference_per_col_tile or not device.array_yield.is_zero:
            raise SimulationError(f"{what}: programming from a draw source needs differential or bit-sliced weight encoding "
                                  "and no array-yield defects")
        s = pos.shape[0]
        g, state, pulses = program_from_source(torch.cat([pos, neg]), device, draws, verify_iterations, verify_tolerance)
        return (g[:s], g[s:], state.narrow(-3, 0, s), state.narrow(-3, s, s)), pulses
    sides = {}
    pulses = 0
    for side, target in (("pos", pos), ("ref" if targets.reference_per_col_tile else "neg", neg)):
        shape = None if side == "ref" else array_shape  # array yield (dead lines)
        g, nu, _, spent = program_cells(target, device, seed, stream, side, verify_iterations, verify_tolerance, array_shape=shape)
        sides[side] = (expand(g), expand(nu)) if side == "ref" else (g, nu)
        pulses += spent
    (g_pos, nu_pos), (g_neg, nu_neg) = sides["pos"], sides["ref" if targets.reference_per_col_tile else "neg"]
    return (g_pos, g_neg, nu_pos, nu_neg), pulses


def drifted(g: torch.Tensor, nu: torch.Tensor, t_seconds: float, device: Device) -> torch.Tensor:
    """Conductances ``t_seconds`` after programming (the device's drift law; a plug-in's own
    law, :meth:`cimflow.physics.devices.DeviceModel.conductance`, with its state as ``nu``)."""
    if device.model != "generic" or device.drift.activation_energy_ev:  # a plug-in, or thermally activated drift
        return model_for(device).conductance(g, nu, t_seconds)
    return apply_drift(g, nu, t_seconds, device.drift.t0_s)


def effective_weights(g_pos: torch.Tensor, g_neg: torch.Tensor, denominator: float,
                      read_noise: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalized effective weights ``(G+ - G-) / denominator`` and each weight's read-noise
    variance ``r^2 ((G+/d)^2 + (G-/d)^2)`` (None without read noise), for conductances as
    they are now (drift and IR drop already applied)."""
    w = (g_pos - g_neg) / denominator
    if read_noise <= 0:
        return w, None
    # normalize before squaring: squares of siemens-scale values fall into float32
    # denormals, which make every later op on them ~20x slower
    var = torch.div(g_pos, denominator).square_()
    neg = torch.div(g_neg, denominator)
    var.addcmul_(neg, neg).mul_(read_noise**2)
    return w, var.masked_fill_(var < 1e-30, 0.0)


def reference_sums(g_pos: torch.Tensor, g_neg: torch.Tensor, significance: torch.Tensor, denominator: float) -> torch.Tensor:
    """The reference read: every row (dim 1) driven at full input, each physical column's
    current, slices (dim 0) combined by significance, in units of ``denominator``."""
    total = (g_pos + g_neg).sum(dim=1) / denominator
    return (total * significance.to(total).view(-1, *([1] * (total.dim() - 1)))).sum(dim=0)


def compensation_gain(mode: str, reference_t0: torch.Tensor, reference_now: torch.Tensor) -> torch.Tensor:
    """Drift-compensation factor reference(t0) / reference(t): one scalar (``global``) or one
    per column (``per_column``; columns that read (almost) nothing keep factor 1)."""
    if mode == "global":
        return (reference_t0.sum() / reference_now.sum().clamp_min(EPS)).reshape(())
    ok = reference_now > 1e-6 * reference_t0.abs().amax().clamp_min(EPS)
    return torch.where(ok, reference_t0 / reference_now.clamp_min(EPS), torch.ones_like(reference_t0))


def input_moments(enc: InputEncoding) -> tuple[float, float]:
    """Mean magnitude and mean square of one input (one pulse), as fractions of full input,
    that the ``expected`` ADC full scale assumes without calibration data. Assumption: each
    input's magnitude is uniform over its levels in [0, 1] (mean 1/2, mean square 1/3 for
    many levels), independent of the others; a bit-serial pulse's digit is uniform over its
    ``2**bits_per_pulse`` values (a 1-bit pulse: mean 1/2, mean square 1/2)."""
    if enc.scheme == "dac" or enc.pulses == 1:
        return 0.5, 1.0 / 3.0
    b = 1 << enc.bits_per_pulse
    return 0.5, (2 * b - 1) / (6 * (b - 1))


def expected_full_scale(w: torch.Tensor, dim: int, sigmas: float, enc: InputEncoding) -> torch.Tensor:
    """The ``expected`` ADC full scale of each column: for independent inputs x_i of mean
    magnitude m1 and mean square m2 (:func:`input_moments`), a column sum ``sum_i x_i w_i``
    (``w`` summed over ``dim``) has |mean| <= m1 |sum_i w_i| and standard deviation <=
    sqrt(m2 sum_i w_i^2) (signed or one-signed inputs alike); the full scale is the first
    plus ``sigmas`` times the second, never above the worst case ``sum_i |w_i|``."""
    # (square + sum: ~5x faster than linalg.vector_norm on CPU)
    return full_scale_from_sums(w.sum(dim=dim), w.square().sum(dim=dim), w.abs().sum(dim=dim), sigmas, enc)


def full_scale_from_sums(total: torch.Tensor, squares: torch.Tensor, magnitudes: torch.Tensor, sigmas: float,
                         enc: InputEncoding) -> torch.Tensor:
    """:func:`expected_full_scale` from each column's sums of ``w``, ``w^2`` and ``|w|`` (for a
    caller that has them already, e.g. a compiled kernel). ``total`` and ``squares`` are
    overwritten."""
    m1, m2 = input_moments(enc)
    mean = total.abs_().mul_(m1)
    sd = squares.mul_(m2).sqrt_()
    return torch.minimum(mean.add_(sd, alpha=sigmas), magnitudes)


def moment_full_scale(values: torch.Tensor, dim: int, sigmas: float) -> torch.Tensor:
    """|mean| + ``sigmas`` standard deviations of ``values`` along ``dim`` (calibration data)."""
    mean = values.mean(dim=dim)
    sd = values.var(dim=dim, unbiased=False).sqrt() if values.shape[dim] > 1 else torch.zeros_like(mean)
    return mean.abs() + sigmas * sd


def refresh_before_forward(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: re-program a module whose weights changed (its ``refresh()``), skipped
    while torch.compile traces (reading a tensor's version and programming are host work,
    outside the graph)."""
    if not torch.compiler.is_compiling():
        module.refresh()  # type: ignore[operator]


def percentile_values(values: torch.Tensor, percentile: float, dim: int) -> torch.Tensor:
    """The ``percentile``-th percentile (nearest rank, from below) of ``values`` along ``dim``."""
    count = values.shape[dim]
    k = min(int(math.ceil(percentile / 100.0 * count)), count) - 1
    return values.sort(dim=dim).values.select(dim, max(k, 0))


# ---------------------------------------------------------------------- the instance
#: Every live instance by ``id``: a compiled graph names the instance its opaque read op reads
#: by this key (an op takes tensors and numbers, not modules).
_LIVE: weakref.WeakValueDictionary[int, ArrayInstance] = weakref.WeakValueDictionary()


_Instance = TypeVar("_Instance", bound="ArrayInstance")


def live_instance(key: int, kind: type[_Instance]) -> _Instance:
    """The live instance of class ``kind`` that ``key`` (its ``id``) names, for a compiled
    graph's read op."""
    owner = _LIVE.get(key)
    if not isinstance(owner, kind):
        raise SimulationError("a compiled graph reads an array instance that no longer exists; compile the model again")
    return owner


def instance_op(name: str, schema: str, dispatch: str, kernel: Callable[..., torch.Tensor],
                fake: Callable[..., torch.Tensor]) -> Any:
    """Register ``cimflow::name``, an op that reads the live instance its first argument names
    (:func:`live_instance`), so torch.compile keeps the read whole: ``kernel`` for the dispatch
    key ``dispatch`` and ``fake`` for tracing (the output's shape). torch.library's plain
    registration: ``custom_op``'s Python autograd wrapper costs ~20 us a call, and these ops
    run only where nothing needs their gradient. Returns the op."""
    qualname = f"cimflow::{name}"
    torch.library.define(qualname, schema)
    torch.library.impl(qualname, dispatch)(kernel)
    torch.library.register_fake(qualname)(fake)
    return getattr(torch.ops.cimflow, name).default


class ArrayInstance(nn.Module):
    """Base class of an owner of programmed arrays: the instance's seed, time, write pulses,
    program-and-verify settings, drift compensation and ADC calibration, with its tensors as
    non-persistent buffers (they follow ``.to(device)``, stay out of the ``state_dict``).

    The owner calls :meth:`_init_instance` in its ``__init__`` and implements the hooks
    :meth:`_is_programmed`, :meth:`_reference_reads`, :meth:`_after_time_change` and
    :meth:`_finish_calibration`."""

    # buffers registered as None by _init_instance, set once programmed (None where they do not apply)
    w_scale: torch.Tensor  # per-column (or per-layer) weight scale (None until programmed)
    significance: torch.Tensor  # (S,) slice significances (analog arrays; None until programmed)
    output_gain: torch.Tensor | None  # drift-compensation factor, () or (columns,)
    reference_read_t0: torch.Tensor | None  # reference read right after programming (a cache)
    adc_range_calibrated: torch.Tensor | None  # ADC full scale from calibration data (percentile or expected)
    _anchor: torch.Tensor  # empty; marks the device the instance was moved to

    _BUFFERS = ("w_scale", "significance", "output_gain", "reference_read_t0", "adc_range_calibrated")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        _LIVE[id(self)] = self  # a copy or an unpickled instance is named by its own id

    def _init_instance(self, spec: ArraySpec, stream: str, what: str) -> None:
        """``stream``: the name seeding this instance's draws; ``what``: how errors name it."""
        _LIVE[id(self)] = self
        self.spec = spec
        self._stream, self._what = stream, what
        self.seed: int | None = None
        self.t_seconds: float = spec.device.drift.t0_s
        self.compensation: str | None = None  # drift compensation mode (COMPENSATION_MODES)
        self.write_pulses: int = 0  # programming pulses spent on this instance (program + verify + updates)
        self.write_cycles: int = 0  # write cycles of this instance's most-written cell (endurance)
        self.verify_iterations: int = 0  # program-and-verify (set_program_verify)
        self.verify_tolerance: float | None = None
        self.denominator: float = 1.0  # conductance span of one weight unit (analog arrays)
        self._calibrating = False
        self._calib_psums: list[torch.Tensor] = []
        self._read_gen: torch.Generator | None = None
        for name in self._BUFFERS:
            self.register_buffer(name, None, persistent=False)
        # an empty tensor that ``.to(device)`` moves like the others: where this instance lives,
        # known before anything is programmed (a table with no weight tensor programs there)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def is_digital(self) -> bool:
        return self.spec.kind == "digital"

    @property
    def instance_device(self) -> torch.device:
        """The device this instance was moved to (``.to(device)``), where it programs."""
        return self._anchor.device

    def set_buffers(self, **tensors: torch.Tensor | None) -> None:
        """Set registered buffers by name, as ``self.name = tensor`` does, without
        ``Module.__setattr__``'s re-registration (~5 us a buffer: hardware-aware training
        sets a dozen per layer on every step). A name that is not a registered buffer is an
        error."""
        held = self._buffers
        for name, value in tensors.items():
            if name not in held or not (value is None or isinstance(value, torch.Tensor)):
                raise TypeError(f"{name!r} is not a buffer of {type(self).__name__}, or {type(value).__name__} is not a tensor")
            held[name] = value

    def refresh(self) -> bool:
        """Program again if the weights changed since programming (an optimizer step), with the
        same instance seed and time after programming; returns whether it did. Owners with
        weights override it and call it before every eager forward (:func:`refresh_before_forward`
        as a forward pre-hook); a model compiled with ``torch.compile`` does not (call it, or
        ``cimflow.program``, after changing weights)."""
        return False

    # ------------------------------------------------------------------ hooks
    def _is_programmed(self) -> bool:
        return self.seed is not None

    def _reference_reads(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The reference read right after programming and now (None where there is none)."""
        raise NotImplementedError

    def _after_time_change(self) -> None:
        """Refresh what depends on ``t_seconds`` (cached weights, variances, compensation)."""
        raise NotImplementedError

    def _finish_calibration(self) -> None:
        """Set calibrated ranges from ``_calib_psums`` (and whatever else was recorded)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lifecycle
    def _start_programming(self, seed: int) -> None:
        """Common first step of every ``program``: a new instance at time t0. Re-programming the
        same instance (same seed) wears the same cells: see :meth:`spend_write_cycles`."""
        same_instance = self.seed is not None and int(seed) == self.seed
        self.write_cycles = self.write_cycles if same_instance else 0
        self.spend_write_cycles(1 + self.verify_iterations)
        self.seed = int(seed)
        self._read_gen = None
        self.t_seconds = self.spec.device.drift.t0_s
        self.reference_read_t0 = None

    def spend_write_cycles(self, cycles: int) -> None:
        """Count ``cycles`` more writes of the most-written cell of this instance (a programming
        is 1, plus 1 per verify round: the worst cell, e.g. a stuck one, fails every round; an
        EaPU update step is 1) and raise a SimulationError past the device's
        ``endurance_cycles`` (:func:`cimflow.physics.devices.check_endurance`)."""
        self.write_cycles += int(cycles)
        check_endurance(self.spec.device, self.write_cycles, self._what)

    @property
    def endurance_usage(self) -> tuple[int, float | None]:
        """(write cycles used by the most-written cell, the device's budget or None: unlimited)."""
        return self.write_cycles, self.spec.device.endurance_cycles

    def set_program_verify(self, iterations: int = 0, tolerance: float | None = None) -> None:
        """Program-and-verify settings used by every later ``program`` of this instance.

        ``iterations`` > 0: after each programming, cells whose conductance misses its target
        by more than ``tolerance`` (a fraction of ``g_max``; None: each cell's own programming
        sigma at its target) are programmed again with a fresh draw, up to that many times
        (stuck cells never pass and are retried every time). 0 turns verify off."""
        self.verify_iterations, self.verify_tolerance = check_verify_settings(iterations, tolerance)

    def set_time(self, t_seconds: float) -> None:
        """Move this instance to ``t_seconds`` after programming (drift), keeping its ADC ranges
        (and re-reading the drift-compensation reference when compensation is on)."""
        if not self._is_programmed():
            raise SimulationError(f"{self._what} is not programmed: call cimflow.program(model, seed) first")
        self.t_seconds = float(t_seconds)
        self._after_time_change()

    def set_compensation(self, mode: str | None) -> None:
        """Turn drift compensation on (``"global"``: one factor for the instance, ``"per_column"``:
        one per output column) or off (None). The factor is ``reference(t0) / reference(t)``
        (the reference read, every row driven), re-read on every :meth:`set_time`. It is
        applied ahead of the ADC: the converter's full scale is scaled by
        ``reference(t) / reference(t0)`` (a reference-current or integration-time adjustment)
        and the digital output by the inverse, which equals multiplying the analog partial
        sums by the factor. So a drifted array keeps the ADC's full resolution."""
        self.compensation = check_compensation_mode(mode)
        if self._is_programmed():
            self._update_gain()

    def _update_gain(self) -> None:
        """Recompute :attr:`output_gain` from the reference reads (None when compensation is off)."""
        reads = None
        if self.compensation is not None and not self.is_digital and self._is_programmed():
            with torch.no_grad():
                reads = self._reference_reads()
        self.output_gain = None if reads is None else compensation_gain(self.compensation or "global", *reads)

    def _read_generator(self, device: torch.device) -> torch.Generator:
        """The instance's seeded read-noise generator on ``device`` (made when first needed)."""
        if self._read_gen is None or self._read_gen.device != device:
            self._read_gen = generator_for(self.seed or 0, self._stream, "read", device=device)
        return self._read_gen

    # ------------------------------------------------------------------ calibration
    def begin_calibration(self) -> None:
        self._calibrating = True
        self._calib_psums = []

    def end_calibration(self) -> None:
        """Set the calibrated ranges from what was recorded since :meth:`begin_calibration`."""
        self._calibrating = False
        self._finish_calibration()
        self._calib_psums = []

    def _calibrating_percentile(self) -> float | None:
        """The ADC percentile to calibrate to, when the ADC calibrates and data was recorded."""
        adc = self.spec.adc
        if adc is not None and adc.range == "percentile" and self._calib_psums:
            return adc.percentile
        return None

    def _calibrating_sigmas(self) -> float | None:
        """The ``expected`` ADC range's sigmas, when it calibrates on recorded partial sums."""
        adc = self.spec.adc
        if adc is not None and adc.range == "expected" and self._calib_psums:
            return adc.sigmas
        return None


__all__ = ["ArrayInstance", "COMPENSATION_MODES", "EPS", "InstanceSource", "check_compensation_mode", "check_verify_settings",
           "compensation_gain", "drifted", "effective_weights", "expected_full_scale", "full_scale_from_sums", "input_moments",
           "moment_full_scale",
           "percentile_values", "program_cells", "program_from_source", "program_matrix", "program_hashed_cells", "program_with_model",
           "reference_sums", "refresh_before_forward", "stuck_codes", "table_dead_cells", "verify_cells",
           "verify_tolerance_of", "with_dead_lines"]
