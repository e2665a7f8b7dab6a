"""The fused CPU read: read noise drawn inside the readout, one pass after the matmuls.

On a CPU, eager PyTorch runs a read's elementwise steps one pass each (combine the int8
planes' products, widen the variances, square root, draw the normals, add, scale, clamp,
round, scale twice), and the normal draw alone costs about as much as a float32 matmul of
the same output. :func:`read` does the DAC in one kernel, the products on the int8 and
bfloat16 matrix units, and all the rest in one compiled pass per chunk of output rows
(:mod:`cimflow.sim.read_kernels`, numba), drawing the read noise from a counter-based stream
(:func:`normals`: Box-Muller on a SplitMix64 hash of (stream key, draw number, element); no
generator state). The stream key is the layer's (seed, name, "read") key and the draw number
its :attr:`read_counter`, restarted by ``program``: the same seed reads the same values; a
compiled model's reads (:func:`cimflow.physics.hashing.counter_normal`) advance the same
counter.

The arithmetic is the unfused read's (:func:`cimflow.sim.single_read.single_read`): the same
ADC codes up to float rounding at a code boundary; ``tests/sim/test_fused_read.py`` pins the
normals' distribution (moments, tails, Kolmogorov-Smirnov, the transform against float64)
and the fused read against the unfused one (values without noise, gradients, the noise's
moments).

Used where the read runs on the int8 matrix units (:func:`cimflow.sim.fastmm.int8_planes`)
with a multi-bit ADC; ``CIMFLOW_FUSED_READ=0`` turns it off (the unfused torch passes, with
the instance's torch generator), and so does a missing numba.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cimflow.sim import fastmm
from cimflow.sim.array_state import EPS
from cimflow.sim.draw_pool import training_read_normal

if TYPE_CHECKING:
    from cimflow.sim.engine import CrossbarEngine

_KERNELS: Any = None
_TRIED = False


def _kernels() -> Any:
    global _KERNELS, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            from cimflow.sim import read_kernels
        except ImportError:  # numba absent or not built for this Python: the unfused read
            read_kernels = None  # type: ignore[assignment]
        _KERNELS = read_kernels
    return _KERNELS


def available() -> bool:
    """Whether the fused read runs here (numba importable, not turned off)."""
    return os.environ.get("CIMFLOW_FUSED_READ", "1") != "0" and _kernels() is not None


def _u64(value: int) -> np.uint64:
    """A stream key or draw number as the kernels' one integer type (two's complement for negatives)."""
    return np.uint64(value & 0xFFFFFFFFFFFFFFFF)


_EMPTY_I16 = torch.empty(0, 1, 1, dtype=torch.int16)
_EMPTY_BOOL = torch.empty(0, 1, 1, dtype=torch.bool)
_NO_SQUARES = np.empty((0, 1), np.int16)
_NO_FLOATS = np.empty((0, 1), np.float32)
_NO_Z = np.empty(0, np.float32)
_EMPTY_F32 = torch.empty(0, 1, 1)
_NO_GAIN = np.empty(0, np.float32)
#: Reads of at most this many vectors may take their products and variances from one compiled kernel
#: (:func:`cimflow.sim.read_kernels.few_products`) instead of two matmuls per read group: see :func:`few_vectors`
SMALL_BATCH = 4


def few_vectors(n: int, out: int) -> bool:
    """Whether a read of ``n`` vectors into ``out`` columns takes :func:`read_kernels.few_products`.
    Measured on a Zen 4 core for a 256-row group: the matmuls cost ~20 us plus ~0.065 us per column
    (an int8 and a bfloat16 one, nearly whatever ``n`` up to 16), the kernel ~0.03 us per column and
    vector (1 vector: 11 against 23 us at 256 columns, 129 against 288 at 4,096); so 1 or 2 vectors
    always, 3 or 4 for narrow layers (``n out <= 1024``)."""
    return n <= 2 or (n <= SMALL_BATCH and n * out <= 1024)


def normals(key: int, draw: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normals (float32, CPU) of draw ``draw`` of stream ``key``, element e of the
    flattened tensor the stream's element e: the values :func:`read` adds there."""
    out = torch.empty(shape, dtype=torch.float32)
    _kernels().normals(_u64(key), _u64(draw), out.view(-1).numpy())
    return out


def uniforms(key: int, draw: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniforms on [0, 1) (float32, CPU, on the 2^-24 grid as ``torch.rand``) of draw ``draw``
    of stream ``key``: element e from the 32 bits the stream gives element e."""
    out = torch.empty(shape, dtype=torch.float32)
    _kernels().uniforms(_u64(key), _u64(draw), out.view(-1).numpy())
    return out


@dataclass
class Operands:
    """What a fused read of one programmed instance needs, made once per instance state: per
    read group ``(start, end, planes, cell)`` (the int8 weight planes side by side (len, 2
    out) and the bfloat16 cell variances over the planes' scale squared (len, out)), and per
    (group, column) float32 ``coef`` (planes' units to ADC steps) and ``lsb`` (an ADC step in
    output units over the input scale)."""

    groups: list[tuple[int, int, torch.Tensor, torch.Tensor | None]]
    coef: torch.Tensor
    lsb: torch.Tensor
    planes: np.ndarray  # all groups' planes (G, gr, 2, out) int8 and cell variances (G, gr, out) as bfloat16 bits (or
    cells: np.ndarray  # empty): what :func:`read_kernels.few_products` reads for a few vectors


class _PlaneBuffers:
    """One engine's operand buffers, made once per layout and then rewritten in place: the
    planes (G, gr, 2, out) int8, the cell variances as bfloat16 bits (G, gr, out) (or empty),
    the planes' scale, ``coef`` and ``lsb`` (G, out), and each read group's views of them.
    Hardware-aware training makes an instance's operands on every step: fresh tensors and
    views cost tens of microseconds a layer there, more than the kernels filling them."""

    def __init__(self, g: int, gr: int, out: int, rows: int, noisy: bool) -> None:
        self.layout = (g, gr, out, rows, noisy)
        self.both = torch.empty((g, gr, 2, out), dtype=torch.int8)
        self.cell = torch.empty((g, gr, out), dtype=torch.int16) if noisy else _EMPTY_I16
        self.scale, self.coef, self.lsb = torch.empty((g, out)), torch.empty((g, out)), torch.empty((g, out))
        cell_bf16 = self.cell.view(torch.bfloat16) if noisy else None
        self.groups: list[tuple[int, int, torch.Tensor, torch.Tensor | None]] = []
        for k in range(g):
            a, b = k * gr, min((k + 1) * gr, rows)
            self.groups.append((a, b, self.both[k, :b - a].view(b - a, 2 * out), None if cell_bf16 is None else cell_bf16[k, :b - a]))
        self.arrays = (self.both.numpy(), self.cell.numpy(), self.scale.numpy(), self.coef.numpy(), self.lsb.numpy())


def _plane_buffers(engine: CrossbarEngine, layout: tuple[int, int, int, int, bool]) -> _PlaneBuffers:
    """The next of ``engine``'s two :class:`_PlaneBuffers` of ``layout`` (the other keeps the
    operands made last; the second is made on the second use)."""
    pair = engine.__dict__.get("_plane_buffers")
    if pair is None or pair[0].layout != layout:
        pair = engine.__dict__["_plane_buffers"] = [_PlaneBuffers(*layout), None, 0]
        return pair[0]
    pair[2] ^= 1
    if pair[pair[2]] is None:
        pair[pair[2]] = _PlaneBuffers(*layout)
    return pair[pair[2]]


def _operands(engine: CrossbarEngine, steps_in: float) -> Operands:
    def make() -> Operands:
        w = engine.w_eff[0].contiguous()  # (G, gr, out)
        g, gr, out = w.shape
        rows = engine.grid.in_features
        var = None if engine.read_var is None else engine.read_var[0].contiguous()
        buf = _plane_buffers(engine, (g, gr, out, rows, var is not None))
        both, cell, scale, coef, lsb = buf.arrays
        k = _kernels()
        k.weight_planes(w.numpy(), (_EMPTY_F32 if var is None else var).numpy(), both, cell, scale, rows)
        adc = engine.adc_range[0, :, 0].expand(g, out)  # (1, G, 1, out or 1): one full scale per group and column
        gain = engine.output_gain
        k.read_scales(adc.numpy(), scale, _NO_GAIN if gain is None else gain.expand(out).numpy(), engine.w_scale.expand(out).numpy(),
                      steps_in, float((1 << (engine.spec.analog_adc().bits - 1)) - 1), coef, lsb)
        return Operands(buf.groups, buf.coef, buf.lsb, both, cell)

    return fastmm.cached(engine, "_fused_operands", make)


def dac_applies(engine: CrossbarEngine, x: torch.Tensor) -> bool:
    """Whether :func:`dac` quantizes ``x`` for ``engine``: a multi-bit DAC with a per-vector
    range, float32 inputs on the CPU, not inside ``torch.compile``, numba here."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and engine.spec.input_encoding.bits > 1
            and not engine.has_fixed_input_range() and not torch.compiler.is_compiling() and available())


def dac(x: torch.Tensor, steps_in: float, space: fastmm.Workspace | None,
        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The input DAC with a per-vector range in one kernel: the DAC codes (N, in) in ``dtype``
    (float32, or int8 for the integer units; in ``space`` when given: scratch that does not
    outlive the read) and each vector's range (N, 1)."""
    x = x.contiguous()
    codes = torch.empty(x.shape, dtype=dtype) if space is None else space.get("xi" if dtype == torch.float32 else "codes", x.shape, dtype)
    scale = torch.empty(x.shape[0], 1)
    _kernels().quantize_rows(x.numpy(), steps_in, EPS, codes.numpy(), scale.view(-1).numpy(), _NO_SQUARES, _NO_FLOATS)
    return codes, scale


def scale_products(acc: torch.Tensor, per_out: torch.Tensor, scale_x: torch.Tensor) -> torch.Tensor:
    """``float32(acc[n, j]) * per_out[j] * scale_x[n]`` (N, M) of the int32 products ``acc``
    (N, M) in one kernel, as ``acc.to(float32).mul_(per_out).mul_(scale_x)`` computes it."""
    y = torch.empty(acc.shape)
    _kernels().scale_products(acc.numpy(), per_out.reshape(-1).numpy(), scale_x.reshape(-1).numpy(), y.numpy())
    return y


def applies(engine: CrossbarEngine, x: torch.Tensor) -> bool:
    """Whether :func:`read` reads ``x`` (N, in): an analog array read once on the int8 units
    (:func:`cimflow.sim.fastmm.int_read_applies`) with a multi-bit DAC with a per-vector range
    and a multi-bit ADC, float32 inputs, no statistics being collected, numba here."""
    return (x.dtype == torch.float32 and not engine.is_digital and not engine.collect_stats
            and engine.spec.input_encoding.bits > 1 and not engine.has_fixed_input_range()
            and engine.spec.analog_adc().bits > 1 and fastmm.int_read_applies(engine, x, min_macs=0) and available())


def read(engine: CrossbarEngine, x: torch.Tensor, steps_in: float,
         keep: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """:func:`cimflow.sim.single_read.single_read` fused: the DAC (one kernel), then per
    block of vectors (:func:`block_vectors`) the int8 products (one matmul per read group,
    both weight planes), the read-noise variances (one bfloat16 matmul per group) and the
    readout with the read noise drawn from the layer's counter-based stream (training's pool
    when one is on) in one kernel. Against one block of 1,024 vectors (Linear 512x512, one
    process, 15 interleaved rounds, 1 thread, 2-core Xeon): 0.80-0.91x the time on 512-row
    arrays, 0.79-0.85x on 256-row ones; a batch of 256 of an MLP 784-256-128-10 0.93-0.99x;
    the same bits. Returns
    the output (N, out) and what the training backward keeps (the DAC codes as float32, the
    input scale, the ADC's in-range mask (G, N, out) when a partial sum clipped)."""
    k = _kernels()
    x = x.contiguous()
    n = x.shape[0]
    plan = _plan(engine, n, steps_in)
    scale = torch.empty(n, 1) if keep else plan.scale
    xi = torch.empty(x.shape) if keep else None  # the codes as float32, for the backward
    k.quantize_rows(x.numpy(), steps_in, EPS, plan.codes_np, scale.view(-1).numpy(), plan.squares_np,
                    _NO_FLOATS if xi is None else xi.numpy())
    noisy = engine.read_var is not None
    given = noisy and keep and getattr(engine, "_read_noise_pool", None) is not None
    # training's pooled normals (else the readout draws the layer's stream itself)
    z_np = training_read_normal(engine, torch.empty(plan.var_shape)).reshape(-1).numpy() if given else _NO_Z
    draw = int(engine.read_counter)
    if noisy and not given:
        engine.read_counter.add_(1)
    y = torch.empty((n, plan.out), dtype=torch.float32)
    mask = torch.empty(plan.var_shape, dtype=torch.bool) if keep else _EMPTY_BOOL
    y_np, scale_np, mask_np = y.numpy(), scale.view(-1).numpy(), mask.view(-1, n, plan.out).numpy()
    readout = k.for_threads(k.int_readout, k.int_readout_threads, torch.get_num_threads())
    clipped = False
    for n0, products, variances, prod_np, var_np in plan.blocks:
        if plan.few:  # a few vectors: every group's products and variances in one kernel call
            k.few_products(plan.codes_np, plan.squares_np, plan.ops.planes, plan.ops.cells, plan.rows, prod_np, var_np)
        else:
            for codes, w, dest in products:  # one int8 matmul per read group, both planes
                torch._int_mm(codes, w, out=dest)
            for squares, cell, dest in variances:  # one bfloat16 matmul per read group
                torch.mm(squares, cell, out=dest)
        clipped |= readout(prod_np, var_np, z_np, plan.key, _u64(draw), given, plan.coef_np, plan.steps_adc, plan.lsb_np, scale_np,
                           y_np, mask_np, n0, n)
    kept: dict[str, torch.Tensor | None] = {"xi": xi, "scale_x": scale,
                                            "adc_inside": mask if keep and clipped else None, "dac_inside": None}
    return y, kept


#: Bytes of one block's products and variances (int32 planes, bfloat16 variances) in a read of
#: many vectors: a read runs block by block (products, then the readout) so that the readout
#: finds them in the core's cache (half of a 2 MiB L2), not in memory.
BLOCK_BYTES = 1 << 20


def block_vectors(n: int, groups: int, out: int) -> int:
    """Vectors per block of a read of ``n`` into ``out`` columns over ``groups`` read groups:
    as many as :data:`BLOCK_BYTES` holds (10 bytes a group and column: two int32 products and
    a bfloat16 variance), the blocks of equal size, a multiple of 16 (the matmuls' row
    tiles), all ``n`` where they fit."""
    blocks = -(-n * groups * out * 10 // BLOCK_BYTES)
    if blocks <= 1:
        return n
    per_block = -(-n // blocks)
    return min(n, -(-per_block // 16) * 16)


class _Plan:
    """One layer's fused read of ``n`` vectors, laid out once: the scratch tensors (DAC codes,
    their squares, a block's products and variances), per block of vectors
    (:func:`block_vectors`) the matmul calls writing into them, and NumPy views of what the
    kernels take (each view costs a call). A new instance of the same layer (hardware-aware
    training programs one per step) keeps the scratch and rebinds the calls to its operands
    (:meth:`bind`)."""

    def __init__(self, engine: CrossbarEngine, ops: Operands, n: int) -> None:
        g, out = ops.coef.shape
        rows = engine.grid.in_features
        noisy = engine.read_var is not None
        self.n, self.out = n, out
        self.layout = (g, out, rows, noisy, [(a, b) for a, b, _, _ in ops.groups])
        self.codes = torch.empty((n, rows), dtype=torch.int8)
        self.codes_np = self.codes.numpy()
        self.scale = torch.empty(n, 1)
        self.squares = torch.empty((n, rows), dtype=torch.bfloat16) if noisy else None
        self.squares_np = _NO_SQUARES if self.squares is None else self.squares.view(torch.int16).numpy()
        self.few, self.rows = few_vectors(n, out), rows
        size = n if self.few else block_vectors(n, g, out)
        self.prod = torch.empty((g, size, 2, out), dtype=torch.int32)
        self.var_shape = (g, n, out)
        self.var = torch.empty((g, size, out), dtype=torch.bfloat16) if noisy else _EMPTY_I16
        self.steps_adc = float((1 << (engine.spec.analog_adc().bits - 1)) - 1)
        # per block, the views of the scratch, made once (a view costs microseconds; bind pairs them with an instance's):
        # (first vector, per group (codes, products, squares, variances), the products and variances as NumPy)
        squares = self.squares
        self._block_views = []
        for n0 in range(0, n, size):
            b = min(size, n - n0)  # (a shorter last block: the scratch's first elements, contiguous too)
            prod = self.prod.view(-1)[:g * b * 2 * out].view(g, b, 2, out)
            var = self.var.view(-1)[:g * b * out].view(g, b, out) if noisy else self.var
            per_group = [(self.codes[n0:n0 + b, lo:hi], prod[j].view(b, 2 * out),
                          None if squares is None else squares[n0:n0 + b, lo:hi], var[j] if noisy else None)
                         for j, (lo, hi) in enumerate(self.layout[4])]
            self._block_views.append((n0, per_group, prod.numpy(), var.view(torch.int16).numpy()))
        self.bind(engine, ops)

    def fits(self, engine: CrossbarEngine, ops: Operands, n: int) -> bool:
        """Whether this scratch serves a read of ``n`` vectors with ``ops``."""
        return (self.n == n and self.layout[:4] == (*ops.coef.shape, engine.grid.in_features, engine.read_var is not None)
                and self.layout[4] == [(a, b) for a, b, _, _ in ops.groups])

    def bind(self, engine: CrossbarEngine, ops: Operands) -> None:
        """The matmul calls and views of ``ops`` (an instance's weights and scales), per block:
        ``(first vector, int8 products, bfloat16 variances, products and variances as NumPy)``."""
        self.ops = ops
        self.blocks = []
        for n0, views, prod_np, var_np in self._block_views:
            products = [(codes, w, dest) for (codes, dest, _, _), (_, _, w, _) in zip(views, ops.groups, strict=True)]
            variances = [(squares, cell, dest) for (_, _, squares, dest), (_, _, _, cell) in zip(views, ops.groups, strict=True)
                         if squares is not None and dest is not None and cell is not None]
            self.blocks.append((n0, products, variances, prod_np, var_np))
        self.key = _u64(engine._read_key)
        self.coef_np, self.lsb_np = ops.coef.numpy(), ops.lsb.numpy()


def _plan(engine: CrossbarEngine, n: int, steps_in: float) -> _Plan:
    ops = _operands(engine, steps_in)
    plan = engine.__dict__.get("_fused_plan")
    if plan is not None and plan.ops is ops and plan.n == n:  # (the key changes only with the operands)
        return plan
    if plan is None or not plan.fits(engine, ops, n):
        plan = engine.__dict__["_fused_plan"] = _Plan(engine, ops, n)
    else:
        plan.bind(engine, ops)
    return plan


__all__ = ["SMALL_BATCH", "Operands", "applies", "available", "dac", "dac_applies", "few_vectors", "normals", "read", "uniforms"]
