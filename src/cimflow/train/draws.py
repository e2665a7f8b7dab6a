"""Cached per-cell draws: a fresh chip instance every training step at the cost of a few
elementwise passes.

Programming a chip instance (:meth:`cimflow.sim.engine.CrossbarEngine.program`) draws, for
every cell, a standard normal (programming noise), a uniform (stuck cells) and a normal
(drift exponent) from generators seeded by the instance. Hardware-aware training programs
a new instance on every step, and on a CPU those draws cost as much as the step's matmuls.

:class:`InstanceDraws` draws them once per layer into *pools* of twice the layer's cell
count and gives each step a window of consecutive pool entries at a uniformly random
offset (derived from the step's instance seed), re-drawing a slice of every pool per step
(the whole pool every ``refresh_steps`` steps, 64 by default; a small pool's slices a batch
at a time, :data:`cimflow.sim.draw_pool.MIN_SLICE`). So, on every step:

- each cell's draws have exactly the device model's distribution (the pool entries are
  i.i.d. draws from it: standard normals re-scaled by the cell's programming sigma at its
  target conductance, stuck codes at the chip's rates, drift exponents ``N(nu_mean,
  nu_std)`` clipped at 0, made by :mod:`cimflow.physics` itself; a PCM cell's two state
  normals, its drift exponent's and its 1/f noise's, turned into its state by the model's
  law);
- the cells of one instance are independent (a window holds distinct pool entries), and so
  are one cell's draws of different kinds (each kind has a pool and a window offset of its
  own);
- one cell's draws on two steps are independent unless the two offsets coincide
  (probability ``1 / (n + 1)`` for ``n`` cells), and the pool keeps being renewed. (Two
  instances are not independent as wholes: until renewed, an entry one step gave a cell
  may come back at another cell on a later step.)

What differs from drawing each instance from its own generators is only which entries of
the (renewed) pool a step's instance is made of, never the distribution of any instance:
``tests/train/test_draws.py`` pins the per-step moments against the exact path's. The
instance is then aged to its time once: for one differential slice of a generic or PCM
device (:func:`generic_physics`, :func:`pcm_physics`), in place in buffers re-used step
after step (checked once per layer against the engine's own refresh and, for PCM, the
model's own state); any other covered layer is programmed by ``CrossbarEngine.program(seed,
draws=..., t_seconds=...)`` itself, the pools its draw source (:class:`_PooledSource`).

Memory: the pools hold two draws of each kind per cell (about 18 bytes per cell, 26 for
PCM), the fast path's buffers about 32 bytes per weight (52 in the torch form; PCM's state
adds 48); any other device plug-in adds 8 bytes per cell for every kind of draw it asks for.

An instance made here is not re-drawn by its seed: ``CrossbarEngine.stuck_masks`` (which
re-draws an instance's stuck cells from its seed) does not describe it; program with
``cimflow.program`` for an instance to analyse.

Layers the cache does not cover (embedding bags, digital arrays, offset encoding,
program-and-verify, array-yield defects) are programmed by their own ``program`` as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cimflow.chip.devices import PCMDevice, StateCurve
from cimflow.chip.spec import Device
from cimflow.errors import CimflowError
from cimflow.mapping import encode_weights
from cimflow.physics import derive_seed, drift_exponents_, generator_for, stuck_codes_from
from cimflow.physics.devices import REGISTRY, PCMModel, effective_time
from cimflow.physics.hashing import stream_key
from cimflow.sim import fused_read
from cimflow.sim.array_state import input_moments
from cimflow.sim.convert import cim_layers
from cimflow.sim.draw_pool import REFRESH_STEPS, DrawPool, pool_normals, pool_uniforms
from cimflow.sim.engine import CrossbarEngine
from cimflow.sim.layers import CIMLayer


class StuckPool:
    """A :class:`DrawPool` of stuck codes (0 healthy, 1 stuck on, -1 stuck off) that also keeps
    the sorted positions of its stuck entries (re-indexed slice by slice as the pool is
    renewed), so a window's stuck cells are found by binary search, not a pass over every cell."""

    def __init__(self, n: int, on_rate: float, off_rate: float, generator: torch.Generator, device: torch.device,
                 refresh_steps: int = REFRESH_STEPS) -> None:
        def sample(count: int, gen: torch.Generator) -> torch.Tensor:
            return stuck_codes_from(pool_uniforms(count, gen, device), on_rate, off_rate)

        self.pool = DrawPool(n, sample, generator, refresh_steps)
        chunk, size = self.pool.chunk, 2 * n
        self._slices = [(a, min(a + chunk, size)) for a in range(0, size, chunk)]
        self._stuck = [self._positions(a, b) for a, b in self._slices]
        self._stale: set[int] = set()  # slices renewed since their positions were taken

    def _positions(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.pool.data[start:end]
        return torch.nonzero(codes == 1).flatten() + start, torch.nonzero(codes == -1).flatten() + start

    def renew(self) -> None:
        """Re-draw the pool's next slice (its positions are taken again when :meth:`window`
        next needs them; a caller reading the codes themselves never pays for them)."""
        start, end = self.pool.renew()
        chunk = self.pool.chunk
        self._stale.update(range(start // chunk, -(-end // chunk)))

    def window(self, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices (within the window) of the stuck-on and stuck-off cells at ``offset``:
        the slices inside the window whole, the two it cuts by binary search (no pass that
        tests every index)."""
        for k in self._stale:
            self._stuck[k] = self._positions(*self._slices[k])
        self._stale.clear()
        end = offset + self.pool.n
        out = []
        for side in (0, 1):
            pieces = []
            for (a, b), positions in zip(self._slices, self._stuck, strict=True):
                if b <= offset or a >= end:
                    continue
                idx = positions[side]
                if a < offset or b > end:  # the window starts or ends inside this slice
                    bounds = torch.searchsorted(idx, torch.tensor([offset, end], dtype=idx.dtype, device=idx.device)).tolist()
                    idx = idx[bounds[0]:bounds[1]]
                pieces.append(idx)
            out.append(torch.cat(pieces) - offset)
        return out[0], out[1]


class PooledDraws:
    """A per-cell draw source (the :class:`cimflow.physics.devices.CellDraws` protocol a device
    plug-in programs from) backed by pools: every (kind, purpose, k) a :class:`DrawPool` of
    standard normals or uniforms on [0, 1); each instance (:meth:`start`) takes one window per
    (kind, purpose, k) at an offset derived from (instance seed, layer, purpose, k) and renews
    a slice of that pool."""

    def __init__(self, shape: tuple[int, ...], seed: int, name: str, device: torch.device, refresh_steps: int = REFRESH_STEPS) -> None:
        self.shape, self.seed, self.name, self.device, self.refresh_steps = shape, int(seed), name, device, refresh_steps
        self.n = math.prod(shape)
        self._pools: dict[tuple[str, str, int], DrawPool] = {}
        self._instance = 0
        self._used: set[tuple[str, str, int]] = set()

    def start(self, instance_seed: int) -> None:
        """Begin the draws of a new instance."""
        self._instance, self._used = int(instance_seed), set()

    def _draw(self, kind: str, purpose: str, k: int) -> torch.Tensor:
        key = (kind, purpose, int(k))
        pool = self._pools.get(key)
        if pool is None:
            device = self.device

            def sample(count: int, gen: torch.Generator) -> torch.Tensor:
                return pool_normals(count, gen, device) if kind == "normal" else pool_uniforms(count, gen, device)

            pool = self._pools[key] = DrawPool(self.n, sample, generator_for(self.seed, self.name, "hwa-pool", *key, device=device),
                                               self.refresh_steps)
        if key not in self._used:
            pool.renew()
            self._used.add(key)
        return pool.window(derive_seed(self._instance, self.name, "hwa-window", *key) % (self.n + 1)).view(self.shape)

    def normal(self, purpose: str, k: int = 0) -> torch.Tensor:
        return self._draw("normal", purpose, k)

    def uniform(self, purpose: str, k: int = 0) -> torch.Tensor:
        return self._draw("uniform", purpose, k)


_StuckWindow = tuple[StuckPool, int] | None  # a stuck pool and this instance's window offset in it
_NO_CODES = np.empty((0, 1, 1), np.int8)  # the compiled kernels' empty operands
_NO_CELLS = np.empty((0, 1), np.float32)
_NO_CELLS3 = np.empty((0, 1, 1), np.float32)
_NO_STATE = np.empty((0, 1, 1, 1), np.float32)
_NO_CURVE = np.empty((0, 1))


@dataclass
class _LayerPools:
    stuck: StuckPool | None  # None when the device has no stuck cells
    shape: tuple[int, ...]  # (2 S, in, out): positive cells of every slice, then negative ones
    device: torch.device
    spec: Device  # the layer's device
    normal: DrawPool | None = None  # the fast path: standard normals (programming noise)
    state: dict[str, DrawPool] | None = None  # the fast path: the per-cell state's draws by purpose (_STATE_DRAWS)
    work: _Workspace | None = None  # the in-place buffers of the fast path (when it applies)
    cells: PooledDraws | None = None  # any other layer: the draws its device model asks for


class _PooledSource:
    """One layer's instance ``seed`` as a draw source for ``CrossbarEngine.program``
    (:class:`cimflow.sim.array_state.InstanceSource`): the device model's draws from
    :class:`PooledDraws`, stuck codes from the stuck pool's window."""

    def __init__(self, owner: InstanceDraws, name: str, layer: CIMLayer, seed: int) -> None:
        self.owner, self.name, self.layer, self.seed = owner, name, layer, int(seed)
        self.pools: _LayerPools | None = None

    def _pools(self, shape: tuple[int, ...]) -> _LayerPools:
        if self.pools is None or self.pools.shape != shape:
            self.pools = self.owner._pools_for(self.name, self.layer, shape, self.layer.weight.device)
        return self.pools

    def cells(self, shape: tuple[int, ...]) -> PooledDraws:
        pools = self._pools(shape)
        if pools.cells is None:
            pools.cells = PooledDraws(shape, self.owner.seed, self.name, pools.device, self.owner.refresh_steps)
        pools.cells.start(self.seed)
        return pools.cells

    def stuck(self, shape: tuple[int, ...]) -> torch.Tensor:
        pools = self._pools(shape)
        if pools.stuck is None:
            return torch.zeros(shape, dtype=torch.int8, device=pools.device)
        pools.stuck.renew()
        offset = derive_seed(self.seed, self.name, "hwa-window", "stuck") % (pools.stuck.pool.n + 1)
        return pools.stuck.pool.window(offset).view(shape)


def generic_physics(dev: Device) -> bool:
    """Whether ``dev`` follows the generic laws the fast path implements: the generic device
    model (polynomial programming noise, one drift-exponent distribution, power-law drift) at
    the reference temperature (no thermal acceleration of drift). Of the device plug-ins
    (cimflow.physics.devices) the fast path implements PCM (:func:`pcm_physics`); any other,
    or the generic model at another temperature, is programmed by the layer itself."""
    accelerated = getattr(dev, "temperature_k", 300.0) != 300.0 and getattr(dev.drift, "activation_energy_ev", 0.0) != 0.0
    return type(dev) is Device and getattr(dev, "model", "generic") == "generic" and not accelerated


def pcm_physics(dev: Device) -> bool:
    """Whether ``dev`` follows the laws of the PCM plug-in as the fast path implements them
    (:class:`cimflow.physics.devices.PCMModel`: the generic programming law, a drift exponent
    ``|N(mean, std)|`` with moments of the target level, accumulated 1/f noise of a standard
    normal per cell scaled by a curve ``Q_s`` of ``|G| / g_max``; any temperature: the model's
    effective time)."""
    return type(dev) is PCMDevice and REGISTRY.get(dev.model) is PCMModel


#: the fast path's per-cell state draws by purpose, one pool each: the generic law's drift
#: exponents; PCM's standard normals of the drift exponent and of the 1/f noise (the purposes
#: ``PCMModel.sample_state`` asks :class:`_StateDraws` for)
_STATE_DRAWS = {"generic": ("drift",), "pcm": ("drift", "1/f")}


class _StateDraws:
    """One instance's windows of a PCM layer's state pools as the draw source its model samples
    the state from (:class:`cimflow.physics.devices.CellDraws`: ``sample_state``): the window
    of each purpose of ``_STATE_DRAWS``."""

    def __init__(self, windows: Mapping[str, torch.Tensor]) -> None:
        self.windows = windows

    def normal(self, purpose: str, k: int = 0) -> torch.Tensor:
        if purpose not in self.windows or k:
            raise CimflowError(f"the cached draws hold no normal {purpose!r} #{k} of a PCM cell: the fast path's draws "
                               f"({', '.join(self.windows)}) no longer match PCMModel.sample_state")
        return self.windows[purpose]

    def uniform(self, purpose: str, k: int = 0) -> torch.Tensor:
        raise CimflowError(f"the cached draws hold no uniform {purpose!r} of a PCM cell: the fast path's draws no longer match "
                           "PCMModel.sample_state")


def covered(layer: nn.Module) -> bool:
    """Whether :class:`InstanceDraws` programs ``layer`` from cached draws (an analog matrix
    layer with differential or bit-sliced encoding, no program-and-verify and no array-yield
    defects (dead lines are drawn by the layer's own ``program``); any device model: a
    plug-in, :mod:`cimflow.physics.devices`, draws from :class:`PooledDraws`)."""
    if not isinstance(layer, CIMLayer):
        return False
    eng = layer.engine
    return (not eng.is_digital and eng.spec.weight_encoding.scheme != "offset" and not eng.verify_iterations
            and eng.spec.device.array_yield.is_zero)


def _fast(layer: CIMLayer) -> bool:
    """Whether the in-place fast path applies: one differential slice, read groups of
    consecutive rows, no IR drop, exact read-noise variances, :func:`generic_physics` or
    :func:`pcm_physics`."""
    eng = layer.engine
    dev = eng.spec.device
    return (eng.spec.weight_encoding.scheme == "differential" and eng.grid.contiguous and eng.spec.wire_resistance == 0
            and eng.read_noise_mode != "column_mean" and (generic_physics(dev) or pcm_physics(dev)))


def _sigma_coefficients(dev: Device) -> list[float]:
    """The programming sigma's polynomial in ``x = G / g_max`` with ``g_max`` folded in
    (siemens), highest power first: ``sigma = sum_k b_k x^k``, evaluated by Horner's rule in
    ``x`` as :func:`cimflow.physics.programming_sigma` does (the same float32 arithmetic as
    the engine's own programming; one coefficient per power, at most the spec's 8)."""
    return [c * dev.g_max for c in reversed(dev.programming_noise.coefficients)]


class _Workspace:
    """Buffers of the fast path, allocated once per layer: every step writes them in place
    (fresh large tensors cost a page fault per 4 KiB on first touch, several times the
    arithmetic). The instance-facing tensors (and, compiled, a PCM layer's state) are
    double-buffered: the tensors of the previous step's instance stay intact while the next
    one is programmed."""

    def __init__(self, eng: CrossbarEngine, device: torch.device) -> None:
        rows, out = eng.grid.in_features, eng.grid.out_features
        g, gr = eng.grid.read_groups, eng.grid.group_rows
        self._scratch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # the torch form's buffers
        self.g0 = [torch.empty(2, rows, out, device=device) for _ in range(2)]
        self.w_eff = [torch.zeros(1, g, gr, out, device=device) for _ in range(2)]
        self.read_var = [torch.zeros(1, g, gr, out, device=device) for _ in range(2)] if eng.spec.device.read_noise > 0 else None
        self.bounds = [(k * gr, min((k + 1) * gr, rows)) for k in range(g)]
        self.sigma = _sigma_coefficients(eng.spec.device)
        self.padded: np.ndarray | None = None  # the compiled form's copy of sigma, padded
        self.significance = torch.ones(1, device=device)
        self.flip = 0
        self.model = PCMModel(eng.spec.device) if pcm_physics(eng.spec.device) else None  # the PCM law (None: the generic one)
        self.pcm: tuple[np.ndarray, np.ndarray, list[torch.Tensor]] | None = None  # the compiled form's PCM operands (_pcm_operands)

    def scratch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The torch form's buffers (the compiled one needs none), made once: the levels (in,
        out) and two (2, in, out)."""
        if self._scratch is None:
            g = self.g0[0]
            self._scratch = (torch.empty(g.shape[1:], dtype=g.dtype, device=g.device), torch.empty_like(g), torch.empty_like(g))
        return self._scratch


class InstanceDraws:
    """Cached per-cell draws of a converted model's layers (see the module docstring).

    ``seed`` seeds the pools; each step's instance is chosen by its instance seed (the
    window offsets), so the same (seed, instance seeds) give the same instances. The fast
    path writes each layer's instance into buffers it re-uses: an instance's tensors are
    overwritten two instances later."""

    def __init__(self, seed: int = 0, refresh_steps: int = REFRESH_STEPS) -> None:
        if isinstance(refresh_steps, bool) or not isinstance(refresh_steps, int) or refresh_steps < 1:
            raise CimflowError(f"refresh_steps must be an integer >= 1, got {refresh_steps!r}")
        self.seed = int(seed)
        self.refresh_steps = refresh_steps
        self._pools: dict[str, _LayerPools] = {}
        self._checked: set[str] = set()  # layers whose fast path was checked against the engine
        self.fallbacks: set[str] = set()  # layers whose fast path disagreed: programmed the generic way

    def _pools_for(self, name: str, layer: CIMLayer, shape: tuple[int, ...], device: torch.device) -> _LayerPools:
        pools = self._pools.get(name)
        if pools is not None and pools.shape == shape and pools.device == device:
            return pools
        dev = layer.engine.spec.device
        stuck = None
        if dev.stuck_on_rate > 0 or dev.stuck_off_rate > 0:
            stuck = StuckPool(math.prod(shape), dev.stuck_on_rate, dev.stuck_off_rate,
                              generator_for(self.seed, name, "hwa-pool", "stuck", device=device), device, self.refresh_steps)
        pools = self._pools[name] = _LayerPools(stuck, shape, device, dev)
        return pools

    def _windows(self, pools: _LayerPools, name: str, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], _StuckWindow]:
        """Renew the pools by one slice and take this instance's windows, each shaped like the
        cells and at an offset of its own: standard normals (programming), the per-cell
        state's draws by purpose (the generic law: ``drift`` the drift exponents; PCM: ``drift``
        and ``1/f`` standard normals), and the stuck pool's window offset."""
        if pools.normal is None or pools.state is None:
            dev, n, device = pools.spec, math.prod(pools.shape), pools.device

            def normals(count: int, g: torch.Generator) -> torch.Tensor:
                return pool_normals(count, g, device)

            def exponents(count: int, g: torch.Generator) -> torch.Tensor:
                return drift_exponents_(pool_normals(count, g, device), dev.drift.nu_mean, dev.drift.nu_std)

            def pool(purpose: str, sample: Any) -> DrawPool:
                return DrawPool(n, sample, generator_for(self.seed, name, "hwa-pool", purpose, device=device), self.refresh_steps)

            pools.normal = pool("program", normals)
            law = "pcm" if pcm_physics(dev) else "generic"
            pools.state = {purpose: pool(purpose, normals if law == "pcm" else exponents) for purpose in _STATE_DRAWS[law]}
        pools.normal.renew()
        for state_pool in pools.state.values():
            state_pool.renew()
        if pools.stuck is not None:
            pools.stuck.renew()
        n = pools.normal.n

        def offset(purpose: str) -> int:
            return derive_seed(seed, name, "hwa-window", purpose) % (n + 1)

        z = pools.normal.window(offset("program")).view(pools.shape)
        state = {purpose: state_pool.window(offset(purpose)).view(pools.shape) for purpose, state_pool in pools.state.items()}
        return z, state, None if pools.stuck is None else (pools.stuck, offset("stuck"))

    @torch.no_grad()
    def program_layer(self, name: str, layer: CIMLayer, seed: int, t_seconds: float | None = None) -> None:
        """Program a fresh instance (instance ``seed``) of one covered layer from the pools and
        age it to ``t_seconds`` (default: the device's ``t0``), as ``layer.program(seed)``
        followed by ``layer.set_time(t_seconds)`` does with fresh generators."""
        eng = layer.engine
        t = eng.spec.device.drift.t0_s if t_seconds is None else float(t_seconds)
        if not (_fast(layer) and name not in self.fallbacks):  # the engine's own programming, drawing from the pools
            layer.program(seed, draws=_PooledSource(self, name, layer, seed), t_seconds=t)
            return
        eng._start_programming(seed)  # seed, read generator, t0, reference read: a new instance
        eng._read_key = stream_key(int(seed), eng.name, "read", "counter")
        eng.read_counter.zero_()
        draws = self._program_fast(name, layer, seed, t)
        if name not in self._checked:
            self._check_fast(name, layer, t, draws)
        eng.write_pulses = eng.g_pos.numel() + eng.g_neg.numel()
        eng._update_gain()
        eng._weight_version = layer.weight._version

    def _check_fast(self, name: str, layer: CIMLayer, t: float, draws: dict[str, torch.Tensor]) -> None:
        """Once per layer: recompute the fast path's ADC ranges, effective weights and read
        variances with the engine's own refresh from the same conductances and per-cell state
        (a PCM layer's state first recomputed by its model from the engine's targets and the
        same draws, ``draws``, at the cells whose conductance is a number). Where they disagree
        (an engine whose laws changed) the engine's values are kept and the layer is programmed
        the generic way from then on."""
        eng = layer.engine
        work = self._pools[name].work
        model = None if work is None else work.model
        if model is not None:
            targets = encode_weights(layer.weight_matrix().detach() / eng.w_scale, eng.spec, eng.grid.col_tiles)
            target = torch.stack([targets.positive[0], targets.negative[0]]).nan_to_num_(model.spec.g_min)  # see _cells_torch
            g = torch.cat([eng.g_pos, eng.g_neg])
            theirs_state = model.sample_state(target, g, _StateDraws(draws))
            mine_state = torch.cat([eng.nu_pos, eng.nu_neg], dim=1)
            kept = torch.isfinite(g)  # a NaN weight's cells: NaN conductances whatever the state
            if not all(_agree(a[kept], b[kept]) for a, b in zip(mine_state, theirs_state, strict=True)):
                self.fallbacks.add(name)
                eng.nu_pos, eng.nu_neg = theirs_state.narrow(-3, 0, 1), theirs_state.narrow(-3, 1, 1)
        mine = {"w_eff": eng.w_eff.clone(), "adc_range": eng.adc_range.clone(),
                "read_var": None if eng.read_var is None else eng.read_var.clone()}
        eng.t_seconds = eng.spec.device.drift.t0_s
        eng._refresh(set_adc_range=True)
        theirs: dict[str, torch.Tensor | None] = {"adc_range": eng.adc_range}
        eng.t_seconds = t
        eng._refresh()
        theirs.update(w_eff=eng.w_eff, read_var=eng.read_var)
        for key, value in mine.items():
            other = theirs[key]
            if not ((value is None and other is None) or (value is not None and other is not None and _agree(value, other))):
                self.fallbacks.add(name)
        self._checked.add(name)

    def _program_fast(self, name: str, layer: CIMLayer, seed: int, t: float) -> dict[str, torch.Tensor]:
        """One differential slice, in place: the same conductances, per-cell state, drift,
        effective weights, read-noise variances and ADC ranges as ``program`` + ``set_time``,
        and no fresh large tensor; the per-cell arithmetic in one compiled pass where numba
        runs (:mod:`cimflow.train.program_kernels`), else in elementwise torch passes
        (:meth:`_cells_torch`: for the generic law about a third of those of ``program`` +
        ``set_time``, for PCM its model's own). Returns the instance's state draws by purpose."""
        eng = layer.engine
        dev = eng.spec.device
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # (out, in): rows contiguous
        rows, out = eng.grid.in_features, eng.grid.out_features
        pools = self._pools_for(name, layer, (2, rows, out), weight.device)
        if pools.work is None:
            pools.work = _Workspace(eng, weight.device)
        ws = pools.work
        ws.flip ^= 1
        z, draws, stuck = self._windows(pools, name, seed)
        g0, w_eff = ws.g0[ws.flip], ws.w_eff[ws.flip]
        var = None if ws.read_var is None else ws.read_var[ws.flip]
        eng.set_buffers(w_eff=w_eff)
        kernels = _compiled_kernels(weight, z, draws, ws)
        if kernels is not None:
            state = _cells_compiled(kernels, eng, weight, z, draws, stuck, ws, g0, var, t)
        else:
            state = _cells_torch(eng, weight, z, draws, stuck, ws, g0, var, t)
        # (_read_var_bf16: the fast inference read's bfloat16 copy of read_var; nu: as the engine splits (2, ...) or (3, 2, ...))
        eng.set_buffers(read_var=var, _read_var_bf16=None, g_pos=g0[0:1], g_neg=g0[1:2], nu_pos=state.narrow(-3, 0, 1),
                        nu_neg=state.narrow(-3, 1, 1), significance=ws.significance)
        eng.denominator = dev.g_max - dev.g_min
        eng.t_seconds = t
        return draws

    def program(self, model: nn.Module, seed: int, times: Mapping[str, float] | None = None) -> None:
        """Program instance ``seed`` into every CIM layer of a converted ``model``: covered
        layers from the pools, the others by their own ``program``; then age each layer to
        ``times[name]`` seconds after programming (absent: left at ``t0``)."""
        for name, layer in cim_layers(model):
            t = None if times is None else times.get(name)
            if covered(layer):
                assert isinstance(layer, CIMLayer)
                self.program_layer(name, layer, seed, t)
            else:
                program_at(layer, seed, t)


def _compiled_kernels(weight: torch.Tensor, z: torch.Tensor, draws: Mapping[str, torch.Tensor], ws: _Workspace) -> Any:
    """:mod:`cimflow.train.program_kernels` when the fast path's cells can be programmed by it
    (float32 tensors on the CPU, numba importable, ``CIMFLOW_FUSED_READ`` not 0: the switch
    of every compiled kernel, :func:`cimflow.sim.fused_read.available`), else None."""
    if not all(v.device.type == "cpu" and v.dtype == torch.float32 for v in (weight, z, *draws.values(), ws.g0[0])):
        return None
    if not fused_read.available():
        return None
    try:
        from cimflow.train import program_kernels
    except ImportError:  # numba not built for this Python: the torch form
        return None
    if len(ws.sigma) > program_kernels.COEFFICIENTS:  # more than the kernel's fixed Horner (the spec allows no more)
        return None
    return program_kernels


def _agree(value: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether the fast path's ``value`` is the engine's ``other`` up to float rounding (NaN
    where it is NaN)."""
    if value.shape != other.shape:
        return False
    if other.numel() == 0:
        return True
    top = float(other.abs().nan_to_num(0.0, 0.0).amax().clamp_min(1e-30))
    return bool(torch.allclose(value, other, rtol=1e-4, atol=1e-5 * top, equal_nan=True))


def _curve_rows(curve: StateCurve, k: Any) -> np.ndarray:
    """A state curve in the layout of the compiled kernels (``k``,
    :func:`cimflow.train.program_kernels._curve_row`): a row per piece, its form, ``x_from``,
    ``y_min``, ``y_max`` (infinite: none), then its coefficients (a polynomial's highest
    power first, right-aligned)."""
    forms = {"polynomial": k.POLYNOMIAL, "log": k.LOG, "power": k.POWER}
    rows = np.zeros((len(curve.pieces), k.CURVE_HEAD + k.COEFFICIENTS))
    for row, piece in zip(rows, curve.pieces, strict=True):
        lo, hi = -math.inf if piece.y_min is None else piece.y_min, math.inf if piece.y_max is None else piece.y_max
        row[:k.CURVE_HEAD] = forms[piece.form], piece.x_from, lo, hi
        c = piece.coefficients
        if piece.form == "polynomial":
            row[len(row) - len(c):] = c[::-1]
        else:
            row[k.CURVE_HEAD:k.CURVE_HEAD + len(c)] = c
    return rows


def _pcm_operands(eng: CrossbarEngine, model: PCMModel, k: Any, like: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor]]:
    """The compiled form's operands of a PCM layer, made once: the drift exponent's mean and
    std at every level (2, levels), evaluated by the model at the targets the engine encodes
    each level to (the values the engine's programming takes for its cells); Q_s as curve
    rows (:func:`_curve_rows`); the state buffers (3, 2, in, out), double-buffered as ``g0``."""
    levels = model.spec.n_levels
    at_levels = torch.arange(levels, dtype=torch.float32).div_(levels - 1).unsqueeze(1)  # w_norm of every level
    targets = encode_weights(at_levels, eng.spec).positive[0].view(-1)
    moments = torch.stack(model.drift_moments(targets)).numpy()
    return moments, _curve_rows(model.spec.noise_q_s, k), [torch.empty((3, *like.shape), dtype=like.dtype) for _ in range(2)]


def _adc_from_sums(eng: CrossbarEngine, col: torch.Tensor) -> None:
    """The engine's ADC full scale from the per-read-group column sums of |w_eff| at t0 ``col``
    (G, out), normalized: the largest of each array (``CrossbarEngine._initial_adc_range``)."""
    eng.set_buffers(adc_range=eng._col_tile_max(col.unsqueeze(0)).unsqueeze(2).clamp_min(1e-12))


def _sums_set_adc(eng: CrossbarEngine) -> bool:
    """Whether the ADC full scale is set from the column sums at t0 (``per_array_max``, or a
    ``percentile`` range not calibrated yet); any other law takes the engine's own."""
    adc = eng.spec.adc
    return adc is not None and (adc.range == "per_array_max" or (adc.range == "percentile" and eng.adc_range_calibrated is None))


def _cells_compiled(k: Any, eng: CrossbarEngine, weight: torch.Tensor, z: torch.Tensor, draws: Mapping[str, torch.Tensor],
                    stuck: _StuckWindow, ws: _Workspace, g0: torch.Tensor, var: torch.Tensor | None, t: float) -> torch.Tensor:
    """The fast path's per-cell arithmetic in :mod:`cimflow.train.program_kernels`. Returns
    the per-cell state: the drift exponents (generic law) or PCM's (nu, z, Q_s) buffer."""
    spec, dev = eng.spec, eng.spec.device
    rows, out = eng.grid.in_features, eng.grid.out_features
    w = weight.contiguous().numpy()
    scale = torch.empty(out)
    k.column_scales(w, spec.weight_scaling == "per_column", scale.numpy())
    eng.set_buffers(w_scale=scale)
    codes = _NO_CODES if stuck is None else stuck[0].pool.window(stuck[1]).view(g0.shape).numpy()
    if ws.padded is None:
        ws.padded = np.array([0.0] * (k.COEFFICIENTS - len(ws.sigma)) + ws.sigma)  # leading zeros: the same Horner values
    adc = spec.adc
    law: str | None = None if adc is None else adc.range
    if law in ("expected", "percentile") and eng.adc_range_calibrated is not None:
        law = "calibrated"
    sums = torch.empty(3, eng.grid.read_groups, out) if law in ("per_array_max", "percentile", "expected") else None
    t0, den = dev.drift.t0_s, dev.g_max - dev.g_min
    model, state, t_eff = ws.model, draws["drift"], t
    pcm: tuple[Any, ...] = (_NO_STATE, _NO_CELLS3, _NO_CELLS, _NO_CURVE, 0.0, 0.0)  # the generic law: drift exponents
    if model is not None:  # PCM: its state written into this instance's buffer; drift and 1/f noise at the effective time
        if ws.pcm is None:
            ws.pcm = _pcm_operands(eng, model, k, g0)
        moments, curve, states = ws.pcm
        state, t_eff = states[ws.flip], effective_time(t, t0, model.acceleration)
        pcm = (state.numpy(), draws["1/f"].numpy(), moments, curve, model.noise_growth(t0), model.noise_growth(t_eff))
    program = k.for_threads(k.program_instance, k.program_instance_threads, torch.get_num_threads())
    program(w, scale.numpy(), float(dev.n_levels - 1), z.numpy(), ws.padded, den / (dev.n_levels - 1), dev.g_min,
            dev.g_max, codes, draws["drift"].numpy(), math.log(t_eff / t0) if t_eff > t0 else 0.0, den,
            dev.read_noise**2, eng.grid.group_rows, _NO_CELLS3 if sums is None else sums.numpy(), g0.numpy(),
            eng.w_eff.view(-1, out)[:rows].numpy(), _NO_CELLS if var is None else var.view(-1, out)[:rows].numpy(), *pcm)
    if sums is None:  # fixed, calibrated (or no ADC): the engine's own law, which reads no weights
        eng.adc_range = eng._initial_adc_range()
    else:  # per array, the largest column sum of |w_eff| (expected: within its moments' bound)
        assert adc is not None
        full = torch.empty(sums.shape[1:])
        m1, m2 = input_moments(spec.input_encoding)
        k.adc_full_scale(sums.numpy(), law == "expected", m1, m2, adc.sigmas, eng.grid.weight_columns, full.numpy())
        eng.set_buffers(adc_range=full.view(1, full.shape[0], 1, full.shape[1]))
    return state


def _cells_torch(eng: CrossbarEngine, weight: torch.Tensor, z: torch.Tensor, draws: Mapping[str, torch.Tensor], stuck: _StuckWindow,
                 ws: _Workspace, g0: torch.Tensor, var: torch.Tensor | None, t: float) -> torch.Tensor:
    """The fast path's per-cell arithmetic as in-place torch passes (any device and dtype); a
    PCM layer's state and conductances by its model's own code (fresh tensors). Returns the
    per-cell state: the drift exponents (generic law) or PCM's (nu, z, Q_s)."""
    spec, dev = eng.spec, eng.spec.device
    rows, out = eng.grid.in_features, eng.grid.out_features
    # weight scale (mapping.weight_scales: max |w| per column or per layer, 1 for all-zero)
    scale = torch.maximum(weight.amax(dim=1), weight.amin(dim=1).neg_())
    if spec.weight_scaling != "per_column":
        scale = scale.amax().expand(out).clone()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    eng.w_scale = scale
    # signed level of every weight (mapping.encode_weights, differential): round(w / scale * (levels - 1))
    levels, a, b = ws.scratch()
    lev = torch.div(weight.t(), scale, out=levels).clamp_(-1.0, 1.0).mul_(dev.n_levels - 1).round_()
    torch.clamp_min(lev, 0.0, out=a[0])  # the positive cell's level, then the negative cell's
    torch.sub(a[0], lev, out=a[1])
    # the targets, then the programming sigma at each (Horner in G / g_max), then the draw
    a.mul_((dev.g_max - dev.g_min) / (dev.n_levels - 1)).add_(dev.g_min)
    coeffs = ws.sigma
    if any(c != 0 for c in coeffs):
        if len(coeffs) == 1:
            b.fill_(coeffs[0])
        else:
            x = torch.div(a, dev.g_max, out=g0)  # g0 as scratch until the draw
            torch.mul(x, coeffs[0], out=b).add_(coeffs[1])
            for c in coeffs[2:]:
                b.mul_(x).add_(c)
        b.clamp_min_(0.0)
        torch.addcmul(a, b, z, out=g0).clamp_min_(0.0)
    else:
        g0.copy_(a)
    if stuck is not None:
        on, off = stuck[0].window(stuck[1])
        g0.view(-1).index_fill_(0, on, dev.g_max).index_fill_(0, off, dev.g_min)
    den, t0, model = dev.g_max - dev.g_min, dev.drift.t0_s, ws.model
    state, g_start = draws["drift"], g0  # the generic law's state; the conductances at t0
    if model is not None:  # PCM: its state (from the targets, still in a) and its conductances at t0 (1/f noise)
        # a NaN weight's targets (NaN) taken at g_min, as the compiled form takes them (its level
        # table is indexed by them): the same state; the cells' conductances are NaN anyway
        state = model.sample_state(a.nan_to_num(dev.g_min), g0, _StateDraws(draws))
        g_start = model.conductance(g0, state, t0)
    # ADC full scale, set at programming time (t0): per read group and array, the largest
    # column sum of |w_eff| (the engine's _initial_adc_range)
    flat = eng.w_eff.view(-1, out)[:rows]
    if _sums_set_adc(eng):
        diff = torch.sub(g_start[0], g_start[1], out=a[0]).abs_()
        _adc_from_sums(eng, torch.stack([diff[i:j].sum(dim=0) for i, j in ws.bounds]).div_(den))  # (G, out)
    else:  # any other law: the engine's own, on the effective weights at t0
        torch.sub(g_start[0], g_start[1], out=flat).div_(den)
        eng.adc_range = eng._initial_adc_range()
    # conductances at t (the drift law G(t0) (t / t0) ** -nu, or PCM's), effective weights, read noise
    g_t = g0
    if model is not None:
        g_t = model.conductance(g0, state, t)
    elif t > t0:
        g_t = torch.mul(state, -math.log(t / t0), out=b).exp_().mul_(g0)
    torch.sub(g_t[0], g_t[1], out=flat).div_(den)
    if var is not None:
        v = var.view(-1, out)[:rows]
        sq = torch.div(g_t, den, out=a).square_()
        torch.add(sq[0], sq[1], out=v).mul_(dev.read_noise**2)
    return state


def program_at(layer: nn.Module, seed: int, t_seconds: float | None) -> None:
    """Program instance ``seed`` into one CIM layer with its own generators and leave it at
    ``t_seconds`` after programming (None: at ``t0``); a matrix layer computes its cached
    weights once (``CrossbarEngine.program(t_seconds=)``), a table is programmed, then aged."""
    with torch.no_grad():
        if isinstance(layer, CIMLayer):
            layer.program(seed, t_seconds=t_seconds)
            return
        layer.program(seed)  # type: ignore[operator]
        if t_seconds is not None:
            layer.set_time(t_seconds)  # type: ignore[operator]


__all__ = ["REFRESH_STEPS", "DrawPool", "InstanceDraws", "PooledDraws", "StuckPool", "covered", "generic_physics", "pcm_physics",
           "program_at"]
