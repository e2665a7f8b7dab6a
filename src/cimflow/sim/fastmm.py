"""The products of one crossbar read, at the cost of the matmul.

A read of ``G`` contiguous read groups (every group full but perhaps the last) computes,
per group, the partial sums ``x_g @ W_g`` and, with read noise, their variances
``x_g^2 @ V_g`` (per-cell variances ``V``; the noise is then sampled on the column sums,
equal in distribution to per-cell noise). :func:`grouped_products` does each in at most
two matmuls - the full groups as one batched matmul, the last group on its true rows - so
a layer of 784 inputs on 512-row groups multiplies 784 rows, not 1,024.

The variance only scales the noise through its square root, so where the CPU has
bfloat16 matrix units (Intel AMX, or AVX-512 BF16 as on AMD Zen 4:
:func:`matrix_units_available`) it runs in bfloat16: the DAC codes (|code| <= 127 for inputs
of up to 8 bits) are exact there, their squares and the cell variances keep 8 significant
bits, products accumulate in float32 and the result is rounded to bfloat16 - each variance
within ~0.4 % (a sample needs ~10^6 reads per column to see it), at a fraction of a float32
matmul. ``tests/sim/test_fast_read.py`` pins the output noise's mean and variance per
column against the float32 (``exact``) read.

On such a CPU the partial sums themselves run on the integer matrix units
(:func:`int8_planes`, :func:`int_signal_products`): DAC codes of up to 8 bits are exact int8
values, and each read group's weights are split per column into two int8 planes,
``w = s (hi + lo / 254)`` with ``s`` the column's largest |w| over 127. Two int8 matmuls
accumulate exactly in int32, so the only error is the weights' representation: at most
``s / 508``, 1/64,516 of the column's largest weight (~16 bits; the float32 read keeps 24,
far below any programming noise or ADC step a chip has). A digital array's weights are
integer codes already: one int8 matmul is its exact integer product.
``tests/sim/test_fast_read.py`` pins the signal against the float32 read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from cimflow.sim.engine import CrossbarEngine

#: Multiply-accumulates below which a bfloat16 variance costs more than float32 (conversions
#: and small-matrix overheads dominate; measured on a 2-core AMX CPU).
BF16_MIN_MACS = 1 << 23

#: Smallest per-column scale of the int8 planes: its square stays a normal float32 (an all-zero
#: or vanishing column would otherwise divide its cell variances by zero).
MIN_SCALE = 2.0**-60

#: Levels of the int8 weight planes' low part (``lo`` in [-127, 127] covers hi's rounding error of +-1/2).
LO_LEVELS = 254.0

_AVAILABLE: bool | None = None


def matrix_units_available() -> bool:
    """Whether this CPU multiplies int8 and bfloat16 matrices in hardware where torch's CPU
    matmuls use it: Intel AMX (``amx_int8`` and ``amx_bf16``, enabled for the process by
    torch), or the AVX-512 dot-product instructions for both (``avx512_vnni`` and
    ``avx512_bf16``: AMD Zen 4 and later, Intel Cooper Lake). Either runs an int8 matmul
    several times faster than a float32 one (measured: 5-10x on a 2-core AMX CPU and on a
    2-core Zen 4 CPU, ``benchmarks/sim_overhead.py``). Set ``CIMFLOW_MATRIX_UNITS=0`` to
    force float32 (benchmarks compare both)."""
    global _AVAILABLE
    if _turned_off():
        return False
    if _AVAILABLE is None:
        _AVAILABLE = _has_matrix_units(_cpu_capability())
    return _AVAILABLE


def _turned_off() -> bool:
    """Whether ``CIMFLOW_MATRIX_UNITS=0`` turns the matrix units off."""
    return os.environ.get("CIMFLOW_MATRIX_UNITS", "1") == "0"


def _cpu_capability() -> dict[str, Any]:
    """The CPU's feature flags as torch reads them (empty where this torch cannot tell)."""
    try:
        return dict(torch._C._cpu._get_cpu_capability())
    except (AttributeError, RuntimeError):
        return {}


def _has_matrix_units(flags: dict[str, Any]) -> bool:
    """:func:`matrix_units_available` for the feature ``flags``."""
    return _matrix_unit_kind(flags) is not None


def _matrix_unit_kind(flags: dict[str, Any]) -> str | None:
    """The matrix units the feature ``flags`` offer: ``"AMX"`` (which the process must also be
    granted: torch's ``_init_amx``), else ``"AVX-512 VNNI + BF16"``, else None."""
    if flags.get("amx_int8") and flags.get("amx_bf16"):
        try:
            if torch._C._cpu._init_amx():
                return "AMX"
        except (AttributeError, RuntimeError):
            pass
    return "AVX-512 VNNI + BF16" if flags.get("avx512_vnni") and flags.get("avx512_bf16") else None


def matrix_units_name() -> str:
    """What the reads run on here, for a benchmark's header: the matrix units
    (:func:`matrix_units_available`), or why the reads are float32."""
    if _turned_off():
        return "off (CIMFLOW_MATRIX_UNITS=0): float32 reads"
    return _matrix_unit_kind(_cpu_capability()) or "none: float32 reads"


def grouped_products(x: torch.Tensor, w: torch.Tensor, rows: int, res: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (N, rows) against per-group matrices ``w`` (G, gr, out) whose groups hold
    consecutive inputs, ``gr`` each but the last (``rows - (G-1) gr``): (G, N, out), group
    g's product over its own rows only (written into ``res`` when given). The full groups
    are one batched matmul, the last group one matmul on its true rows; nothing is padded."""
    g, gr, out = w.shape
    n = x.shape[0]
    last = rows - (g - 1) * gr
    if res is None:
        res = x.new_empty((g, n, out))
    if g == 1:
        torch.mm(x, w[0, :last] if last < gr else w[0], out=res[0])
        return res
    full = (g - 1) * gr
    if g == 2:  # a plain matmul beats a batch of one (markedly so in bfloat16)
        torch.mm(x[:, :full], w[0], out=res[0])
    else:
        torch.matmul(x[:, :full].reshape(n, g - 1, gr).transpose(0, 1), w[: g - 1], out=res[: g - 1])
    torch.mm(x[:, full:], w[g - 1, :last], out=res[g - 1])
    return res


class SignalPlanes(NamedTuple):
    """Weights (G, gr, out) as ``scale * (hi + lo / LO_LEVELS)``: int8 planes, float ``scale`` (G, 1, out)."""

    hi: torch.Tensor
    lo: torch.Tensor
    scale: torch.Tensor


def int8_planes(w: torch.Tensor) -> SignalPlanes:
    """Split float weights (G, gr, out) into two int8 planes per column (module docstring)."""
    scale = w.abs().amax(dim=-2, keepdim=True).div_(127.0).clamp_min_(MIN_SCALE)
    r = w / scale
    hi = r.round()
    lo = r.sub_(hi).mul_(LO_LEVELS).round_()
    return SignalPlanes(hi.to(torch.int8), lo.to(torch.int8), scale)


def int_products(codes: torch.Tensor, w: torch.Tensor, rows: int, res: torch.Tensor | None = None) -> torch.Tensor:
    """Integer codes ``codes`` (N, rows) int8 against int8 groups ``w`` (G, gr, out) laid out as
    in :func:`grouped_products`: (G, N, out) int32, exact, written into ``res`` when given.
    One int8 matmul per group (the matrix units take no batch)."""
    g, gr, out = w.shape
    last = rows - (g - 1) * gr
    if res is None:
        res = codes.new_empty((g, codes.shape[0], out), dtype=torch.int32)
    if g == 1:
        torch._int_mm(codes, w[0, :last] if last < gr else w[0], out=res[0])
        return res
    for k in range(g):
        end = min((k + 1) * gr, rows)
        torch._int_mm(codes[:, k * gr:end].contiguous(), w[k, :end - k * gr], out=res[k])
    return res


def int_signal_products(codes: torch.Tensor, planes: SignalPlanes, rows: int) -> torch.Tensor:
    """Partial sums (G, N, out) float32 of int8 DAC codes (N, rows) against ``planes``, in
    units of ``planes.scale`` (the caller folds the scale into what follows)."""
    acc = int_products(codes, planes.hi, rows).to(torch.float32)
    return acc.add_(int_products(codes, planes.lo, rows), alpha=1.0 / LO_LEVELS)


def variance_products(codes: torch.Tensor, cell_var: torch.Tensor, rows: int, keep_dtype: bool = False,
                      space: Workspace | None = None) -> torch.Tensor:
    """Read-noise variances (G, N, out) float32 of the column sums for DAC codes ``codes``
    (N, rows): ``codes^2 @ cell_var`` per group, in ``cell_var``'s dtype (bfloat16 on the
    fast path, float32 for the exact one); ``keep_dtype``: returned in that dtype, in
    ``space`` (its squares too) when given."""
    if codes.dtype == cell_var.dtype:
        sq = codes.square()
    elif space is not None:
        sq = space.get("squares", codes.shape, cell_var.dtype)
        sq.copy_(codes).square_()
    else:
        sq = codes.to(cell_var.dtype).square_()
    res = None if space is None else space.get("variance", (cell_var.shape[0], codes.shape[0], cell_var.shape[-1]), cell_var.dtype)
    var = grouped_products(sq, cell_var, rows, res)
    return var if keep_dtype or var.dtype == torch.float32 else var.to(torch.float32)


class Workspace:
    """A layer's scratch tensors for its reads, kept from read to read: a large tensor made
    afresh per read costs page faults (the allocator hands big blocks back to the system),
    several times its arithmetic. Only what does not outlive the read goes here; one tensor
    per name, remade when the shape or dtype changes."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        t = self._tensors.get(name)
        if t is None or t.shape != tuple(shape) or t.dtype != dtype:
            t = self._tensors[name] = torch.empty(tuple(shape), dtype=dtype)
        return t


def int_read_applies(engine: CrossbarEngine, x: torch.Tensor, min_macs: int | None = None) -> bool:
    """Whether a read of ``x`` (N, in) runs on the integer matrix units (:mod:`cimflow.sim.fastmm`):
    a CPU that has them, the ``fast`` read, DAC codes of at most 8 bits, a read of at least
    ``min_macs`` multiply-adds (default :data:`BF16_MIN_MACS`: where the unfused read gains),
    not inside ``torch.compile``."""
    return (x.device.type == "cpu" and engine.spec.input_encoding.bits <= 8 and not torch.compiler.is_compiling()
            and (engine.is_digital or engine.read_noise_mode == "fast")
            and x.shape[0] * engine.grid.in_features * engine.w_eff.shape[-1] >= (BF16_MIN_MACS if min_macs is None else min_macs)
            and (not engine.is_digital or (engine.spec.weight_bits or 8) <= 8)
            and matrix_units_available())


def cached(engine: CrossbarEngine, key: str, make: Callable[[], Any]) -> Any:
    """``make()`` cached on ``engine`` for the state a read depends on: its weights, read-noise
    variances, ADC ranges, drift compensation gains and weight scales (the same tensors, not
    written in place since: hardware-aware training re-programs in place)."""
    held = engine._buffers  # (the registered buffers themselves: no Module.__getattr__ per read)
    parts = (held["w_eff"], held["read_var"], held["adc_range"], held["output_gain"], held["w_scale"])
    stamp = tuple((id(t), -1 if t is None else t._version) for t in parts)
    got = engine.__dict__.get(key)
    if got is None or got[0] != stamp or got[1] is not parts[0]:
        got = (stamp, parts[0], make())
        engine.__dict__[key] = got
    return got[2]


def workspace(engine: CrossbarEngine) -> Workspace:
    """``engine``'s :class:`Workspace` (made on first use)."""
    space = engine.__dict__.get("_workspace")
    if space is None:
        space = engine.__dict__["_workspace"] = Workspace()
    return space


__all__ = ["BF16_MIN_MACS", "LO_LEVELS", "MIN_SCALE", "SignalPlanes", "Workspace", "cached", "grouped_products", "int8_planes",
           "int_products", "int_read_applies", "int_signal_products", "matrix_units_available", "matrix_units_name", "variance_products",
           "workspace"]
