"""Cached per-cell draws: a fresh chip instance every training step at the cost of a few
elementwise passes.

Programming a chip instance (:meth:`cimflow.sim.engine.CrossbarEngine.program`) draws, for
every cell, a standard normal (programming noise), a uniform (stuck cells) and a normal
(drift exponent) from generators seeded by the instance. Hardware-aware training programs
a new instance on every step, and on a CPU those draws cost as much as the step's matmuls.

:class:`InstanceDraws` draws them once per layer into *pools* of twice the layer's cell
count and gives each step a window of consecutive pool entries at a uniformly random
offset (derived from the step's instance seed), re-drawing a slice of every pool per step
(the whole pool every ``refresh_steps`` steps, 64 by default). So, on every step:

- each cell's draws have exactly the device model's distribution (the pool entries are
  i.i.d. draws from it: standard normals re-scaled by the cell's programming sigma at its
  target conductance, stuck codes at the chip's rates, drift exponents ``N(nu_mean,
  nu_std)`` clipped at 0, made by :mod:`cimflow.physics` itself);
- the cells of one instance are independent (a window holds distinct pool entries);
- one cell's draws on two steps are independent unless the two offsets coincide
  (probability ``1 / (n + 1)`` for ``n`` cells), and the pool keeps being renewed. (Two
  instances are not independent as wholes: until renewed, an entry one step gave a cell
  may come back at another cell on a later step.)

What differs from drawing each instance from its own generators is only which entries of
the (renewed) pool a step's instance is made of, never the distribution of any instance:
``tests/train/test_draws.py`` pins the per-step moments against the exact path's. The
instance is then aged to its time once: for one differential slice of a generic device, in
place in buffers re-used step after step (checked once per layer against the engine's own
refresh); any other covered layer is programmed by ``CrossbarEngine.program(seed,
draws=..., t_seconds=...)`` itself, the pools its draw source (:class:`_PooledSource`).

Memory: the pools hold two draws of each kind per cell (about 18 bytes per cell), the fast
path's buffers about 52 bytes per weight; a device plug-in adds 8 bytes per cell for every
kind of draw it asks for.

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

import torch
from torch import nn

from cimflow.chip.spec import Device
from cimflow.errors import CimflowError
from cimflow.physics import derive_seed, generator_for, sample_drift_exponents, sample_stuck_mask
from cimflow.physics.hashing import stream_key
from cimflow.sim.convert import cim_layers
from cimflow.sim.draw_pool import REFRESH_STEPS, DrawPool
from cimflow.sim.engine import CrossbarEngine
from cimflow.sim.layers import CIMLayer


class StuckPool:
    """A :class:`DrawPool` of stuck codes (0 healthy, 1 stuck on, -1 stuck off) that also keeps
    the sorted positions of its stuck entries (re-indexed slice by slice as the pool is
    renewed), so a window's stuck cells are found by binary search, not a pass over every cell."""

    def __init__(self, n: int, on_rate: float, off_rate: float, generator: torch.Generator, device: torch.device,
                 refresh_steps: int = REFRESH_STEPS) -> None:
        def sample(count: int, gen: torch.Generator) -> torch.Tensor:
            return sample_stuck_mask((count,), on_rate, off_rate, gen, device=device)

        self.pool = DrawPool(n, sample, generator, refresh_steps)
        chunk, size = self.pool.chunk, 2 * n
        self._slices = [(a, min(a + chunk, size)) for a in range(0, size, chunk)]
        self._stuck = [self._positions(a, b) for a, b in self._slices]

    def _positions(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.pool.data[start:end]
        return torch.nonzero(codes == 1).flatten() + start, torch.nonzero(codes == -1).flatten() + start

    def renew(self) -> None:
        start, end = self.pool.renew()
        k = start // self.pool.chunk
        self._stuck[k] = self._positions(start, end)

    def window(self, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices (within the window) of the stuck-on and stuck-off cells at ``offset``:
        the slices inside the window whole, the two it cuts by binary search (no pass that
        tests every index)."""
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
                draw = torch.randn if kind == "normal" else torch.rand
                return draw(count, generator=gen, device=device)

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


_StuckIndex = tuple[torch.Tensor, torch.Tensor] | None  # flat indices of stuck-on and stuck-off cells


@dataclass
class _LayerPools:
    stuck: StuckPool | None  # None when the device has no stuck cells
    shape: tuple[int, ...]  # (2 S, in, out): positive cells of every slice, then negative ones
    device: torch.device
    spec: Device  # the layer's device
    normal: DrawPool | None = None  # the fast path: standard normals (programming noise)
    drift: DrawPool | None = None  # the fast path: drift exponents
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
    """Whether ``dev`` follows the laws the cached draws implement: the generic device model
    (polynomial programming noise, one drift-exponent distribution, power-law drift) at the
    reference temperature (no thermal acceleration of drift). A device plug-in
    (cimflow.physics.devices) or another temperature is programmed by the layer itself."""
    accelerated = getattr(dev, "temperature_k", 300.0) != 300.0 and getattr(dev.drift, "activation_energy_ev", 0.0) != 0.0
    return type(dev) is Device and getattr(dev, "model", "generic") == "generic" and not accelerated


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
    consecutive rows, no IR drop, exact read-noise variances, :func:`generic_physics`."""
    eng = layer.engine
    return (eng.spec.weight_encoding.scheme == "differential" and eng.grid.contiguous and eng.spec.wire_resistance == 0
            and eng.read_noise_mode != "column_mean" and generic_physics(eng.spec.device))


def _sigma_in_levels(dev: Device) -> list[float]:
    """Coefficients ``b_k`` (highest power first) with ``sum_k b_k l^k`` equal to the
    programming sigma (siemens) of a cell programmed to level ``l``, i.e. to
    ``g_min + l (g_max - g_min) / (levels - 1)``: the device's polynomial in ``G / g_max``
    (:func:`cimflow.physics.programming_sigma`) composed with the level's conductance."""
    a = dev.g_min / dev.g_max  # x = a + d l
    d = (dev.g_max - dev.g_min) / (dev.n_levels - 1) / dev.g_max
    out = [0.0]  # polynomial in l, lowest power first
    for c in reversed(dev.programming_noise.coefficients):  # Horner: out = out * (a + d l) + c
        shifted = [0.0] + [d * v for v in out]
        out = [a * v for v in out] + [0.0]
        out = [u + v for u, v in zip(out, shifted, strict=True)]
        out[0] += c
    return [dev.g_max * v for v in reversed(out)]


class _Workspace:
    """Buffers of the fast path, allocated once per layer: every step writes them in place
    (fresh large tensors cost a page fault per 4 KiB on first touch, several times the
    arithmetic). The instance-facing tensors are double-buffered: the tensors of the
    previous step's instance stay intact while the next one is programmed."""

    def __init__(self, eng: CrossbarEngine, device: torch.device) -> None:
        rows, out = eng.grid.in_features, eng.grid.out_features
        g, gr = eng.grid.read_groups, eng.grid.group_rows
        self.levels = torch.empty(rows, out, device=device)
        self.a = torch.empty(2, rows, out, device=device)
        self.b = torch.empty(2, rows, out, device=device)
        self.g0 = [torch.empty(2, rows, out, device=device) for _ in range(2)]
        self.w_eff = [torch.zeros(1, g, gr, out, device=device) for _ in range(2)]
        self.read_var = [torch.zeros(1, g, gr, out, device=device) for _ in range(2)] if eng.spec.device.read_noise > 0 else None
        self.bounds = [(k * gr, min((k + 1) * gr, rows)) for k in range(g)]
        self.sigma = _sigma_in_levels(eng.spec.device)
        self.significance = torch.ones(1, device=device)
        self.flip = 0


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

    def _windows(self, pools: _LayerPools, name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, _StuckIndex]:
        """Renew the pools by one slice and take this instance's windows: standard normals,
        drift exponents (both shaped like the cells) and the stuck cells' flat indices."""
        if pools.normal is None or pools.drift is None:
            dev, n, device = pools.spec, math.prod(pools.shape), pools.device

            def normals(count: int, g: torch.Generator) -> torch.Tensor:
                return torch.randn(count, generator=g, device=device)

            def exponents(count: int, g: torch.Generator) -> torch.Tensor:
                return sample_drift_exponents((count,), dev.drift.nu_mean, dev.drift.nu_std, g, device=device)

            pools.normal = DrawPool(n, normals, generator_for(self.seed, name, "hwa-pool", "program", device=device), self.refresh_steps)
            pools.drift = DrawPool(n, exponents, generator_for(self.seed, name, "hwa-pool", "drift", device=device), self.refresh_steps)
        for pool in (pools.normal, pools.drift):
            pool.renew()
        if pools.stuck is not None:
            pools.stuck.renew()
        n = pools.normal.n
        off_z, off_nu, off_stuck = (derive_seed(seed, name, "hwa-window", purpose) % (n + 1) for purpose in ("program", "drift", "stuck"))
        z = pools.normal.window(off_z).view(pools.shape)
        nu = pools.drift.window(off_nu).view(pools.shape)
        return z, nu, None if pools.stuck is None else pools.stuck.window(off_stuck)

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
        self._program_fast(name, layer, seed, t)
        if name not in self._checked:
            self._check_fast(name, layer, t)
        eng.write_pulses = eng.g_pos.numel() + eng.g_neg.numel()
        eng._update_gain()
        eng._weight_version = layer.weight._version

    def _check_fast(self, name: str, layer: CIMLayer, t: float) -> None:
        """Once per layer: recompute the fast path's ADC ranges, effective weights and read
        variances with the engine's own refresh from the same conductances and drift
        exponents. Where they disagree (an engine whose laws changed) the engine's values are
        kept and the layer is programmed the generic way from then on."""
        eng = layer.engine
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
            same = (value is None and other is None) or (
                value is not None and other is not None and value.shape == other.shape
                and bool(torch.allclose(value, other, rtol=1e-4, atol=1e-5 * float(other.abs().amax().clamp_min(1e-30)))))
            if not same:
                self.fallbacks.add(name)
        self._checked.add(name)

    def _program_fast(self, name: str, layer: CIMLayer, seed: int, t: float) -> None:
        """One differential slice, in place: the same conductances, drift, effective weights,
        read-noise variances and ADC ranges as ``program`` + ``set_time``, in about a third of
        the elementwise passes and no fresh large tensor."""
        eng = layer.engine
        spec, dev = eng.spec, eng.spec.device
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # (out, in): rows contiguous
        rows, out = eng.grid.in_features, eng.grid.out_features
        pools = self._pools_for(name, layer, (2, rows, out), weight.device)
        if pools.work is None:
            pools.work = _Workspace(eng, weight.device)
        ws = pools.work
        ws.flip ^= 1
        z, nu, stuck = self._windows(pools, name, seed)
        # weight scale (mapping.weight_scales: max |w| per column or per layer, 1 for all-zero)
        scale = torch.maximum(weight.amax(dim=1), weight.amin(dim=1).neg_())
        if spec.weight_scaling != "per_column":
            scale = scale.amax().expand(out).clone()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        eng.w_scale = scale
        # signed level of every weight (mapping.encode_weights, differential): round(w / scale * (levels - 1))
        lev = torch.div(weight.t(), scale, out=ws.levels).clamp_(-1.0, 1.0).mul_(dev.n_levels - 1).round_()
        a, b = ws.a, ws.b
        torch.clamp_min(lev, 0.0, out=a[0])  # the positive cell's level, then the negative cell's
        torch.sub(a[0], lev, out=a[1])
        # programming sigma at each cell's target level (Horner in levels), then the target
        coeffs = ws.sigma
        g0 = ws.g0[ws.flip]
        if any(c != 0 for c in dev.programming_noise.coefficients):
            if len(coeffs) == 1:
                b.fill_(coeffs[0])
            else:
                torch.mul(a, coeffs[0], out=b).add_(coeffs[1])
                for c in coeffs[2:]:
                    b.mul_(a).add_(c)
            b.clamp_min_(0.0)
            a.mul_((dev.g_max - dev.g_min) / (dev.n_levels - 1)).add_(dev.g_min)
            torch.addcmul(a, b, z, out=g0).clamp_min_(0.0)
        else:
            a.mul_((dev.g_max - dev.g_min) / (dev.n_levels - 1)).add_(dev.g_min)
            g0.copy_(a)
        if stuck is not None:
            g0.view(-1).index_fill_(0, stuck[0], dev.g_max).index_fill_(0, stuck[1], dev.g_min)
        den = dev.g_max - dev.g_min
        # ADC full scale, set at programming time (t0): per read group and array, the largest
        # column sum of |w_eff| (the engine's _initial_adc_range)
        w_eff = ws.w_eff[ws.flip]
        eng.w_eff = w_eff
        flat = w_eff.view(-1, out)[:rows]
        adc = spec.adc
        if adc is not None and (adc.range == "per_array_max" or (adc.range == "percentile" and eng.adc_range_calibrated is None)):
            diff = torch.sub(g0[0], g0[1], out=a[0]).abs_()
            col = torch.stack([diff[i:j].sum(dim=0) for i, j in ws.bounds]).div_(den)  # (G, out)
            eng.adc_range = eng._col_tile_max(col.unsqueeze(0)).unsqueeze(2).clamp_min(1e-12)
        else:  # any other law: the engine's own, on the effective weights at t0
            torch.sub(g0[0], g0[1], out=flat).div_(den)
            eng.adc_range = eng._initial_adc_range()
        # conductances at t (the drift law G(t0) (t / t0) ** -nu), effective weights, read noise
        t0 = dev.drift.t0_s
        g_t = g0
        if t > t0:
            g_t = torch.mul(nu, -math.log(t / t0), out=b).exp_().mul_(g0)
        torch.sub(g_t[0], g_t[1], out=flat).div_(den)
        if ws.read_var is not None:
            var = ws.read_var[ws.flip].view(-1, out)[:rows]
            sq = torch.div(g_t, den, out=a).square_()
            torch.add(sq[0], sq[1], out=var).mul_(dev.read_noise**2)
            eng.read_var = ws.read_var[ws.flip]
        else:
            eng.read_var = None
        if hasattr(eng, "_read_var_bf16"):
            eng._read_var_bf16 = None  # the fast inference read's bfloat16 copy of read_var
        eng.g_pos, eng.g_neg = g0[0:1], g0[1:2]
        eng.nu_pos, eng.nu_neg = nu[0:1], nu[1:2]
        eng.significance = ws.significance
        eng.denominator = den
        eng.t_seconds = t

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


__all__ = ["REFRESH_STEPS", "DrawPool", "InstanceDraws", "PooledDraws", "StuckPool", "covered", "generic_physics", "program_at"]
