"""Draws in bulk: a pool of i.i.d. draws read through windows at random offsets.

A :class:`DrawPool` holds ``2 n`` i.i.d. draws of one law; a window is ``count <= n``
consecutive entries from an offset, so the values of one window are i.i.d. draws of that
law, and :meth:`DrawPool.renew` re-draws the pool slice by slice (all of it every
``refresh_steps`` renewals; a small pool's slices in batches of at least :data:`MIN_SLICE`
entries, drawn ahead: a draw call's fixed cost, tens of microseconds inside a training step,
is then paid once per batch). Hardware-aware training takes its fresh chip instances'
per-cell draws from such pools (:mod:`cimflow.train.draws`) and, opted in per layer with
:func:`use_pooled_read_noise`, the read noise of its training forwards: on a CPU, drawing
a normal costs more than the arithmetic it feeds.

What a window shares with earlier ones is only which pool entries it is made of: each
window's values have exactly the law's distribution and are independent of each other; a
value one window gave at some position may come back at another position of a later window
until it is renewed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from cimflow.errors import SimulationError
from cimflow.physics import derive_seed, generator_for
from cimflow.sim import fused_read

if TYPE_CHECKING:
    from cimflow.sim.engine import CrossbarEngine

#: Renewals after which every pool entry has been re-drawn once (a slice of 1/64 per renewal).
REFRESH_STEPS = 64
#: Fewest entries one draw call of :meth:`DrawPool.renew` re-draws: smaller slices are re-drawn
#: a batch at a time, every few renewals (measured in an HWA step on a 2-core Xeon: a renewal of
#: 80 normals took ~70 us, one of 12,544 ~125 us).
MIN_SLICE = 1 << 15


def _stream_key(generator: torch.Generator) -> int | None:
    """A counter stream's key drawn from ``generator`` where pools draw from the compiled
    stream (a CPU generator, the compiled kernels running here), else None."""
    if generator.device.type != "cpu" or not fused_read.available():
        return None
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator))


def pool_normals(count: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count`` standard normals for a pool: in float32 on a CPU those of a counter stream
    (:func:`cimflow.sim.fused_read.normals`, Box-Muller on hashed bits, ~6x cheaper than
    ``torch.randn``) under a key drawn from ``generator``, so the same generator state gives
    the same values; elsewhere ``torch.randn`` with ``generator``."""
    key = _stream_key(generator) if torch.device(device).type == "cpu" and dtype == torch.float32 else None
    if key is None:
        return torch.randn(count, generator=generator, device=device, dtype=dtype)
    return fused_read.normals(key, 0, (count,))


def pool_uniforms(count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` float32 uniforms on [0, 1) for a pool, as :func:`pool_normals` (the stream's
    :func:`cimflow.sim.fused_read.uniforms` on a CPU, else ``torch.rand``)."""
    key = _stream_key(generator) if torch.device(device).type == "cpu" else None
    if key is None:
        return torch.rand(count, generator=generator, device=device)
    return fused_read.uniforms(key, 0, (count,))


class DrawPool:
    """``2 n`` i.i.d. draws from ``sample(count, generator)``; :meth:`window` gives up to ``n``
    consecutive ones from an offset and :meth:`renew` re-draws the next slice."""

    def __init__(self, n: int, sample: Callable[[int, torch.Generator], torch.Tensor], generator: torch.Generator,
                 refresh_steps: int = REFRESH_STEPS) -> None:
        self.n = n
        self.sample = sample
        self.generator = generator
        self.data = sample(2 * n, generator)
        self.chunk = max(1, math.ceil(2 * n / refresh_steps))
        self.batch = min(math.ceil(2 * n / self.chunk), math.ceil(MIN_SLICE / self.chunk))  # slices per draw call
        self.cursor = 0
        self._ahead = 0  # renewals already drawn by the last batch

    def renew(self) -> tuple[int, int]:
        """Renew the next slice of the pool (round robin): re-draw it, or it was re-drawn ahead
        by the last batch (:data:`MIN_SLICE`). Returns the [start, end) re-drawn now (empty
        when none)."""
        start = self.cursor
        if self._ahead:
            self._ahead -= 1
            return start, start
        end = min(start + self.batch * self.chunk, 2 * self.n)  # a batch stops at the pool's end
        self.data[start:end] = self.sample(end - start, self.generator)
        self.cursor = end % (2 * self.n)
        self._ahead = math.ceil((end - start) / self.chunk) - 1
        return start, end

    def window(self, offset: int, count: int | None = None) -> torch.Tensor:
        """``count`` (default ``n``) entries from ``offset`` (a view: valid until the pool is
        renewed again); ``offset`` in ``[0, 2 n - count]``."""
        count = self.n if count is None else count
        if not 0 < count <= self.n or not 0 <= offset <= 2 * self.n - count:
            raise SimulationError(f"a window of {count} draws from offset {offset} does not fit a pool of {2 * self.n}")
        return self.data[offset:offset + count]


class _ReadNoisePool:
    """Standard normals for one engine's training reads: a pool sized to the largest read,
    one renewed slice and a window at a random offset per read."""

    def __init__(self, engine: CrossbarEngine, seed: int) -> None:
        self.seed, self.name = seed, engine.name
        self.offsets = random.Random(derive_seed(seed, engine.name, "read-pool", "offsets"))
        self.pool: DrawPool | None = None

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        count = like.numel()
        pool = self.pool
        if pool is None or count > pool.n or pool.data.device != like.device or pool.data.dtype != like.dtype:
            device, dtype = like.device, like.dtype

            def sample(k: int, gen: torch.Generator) -> torch.Tensor:
                return pool_normals(k, gen, device, dtype)

            pool = self.pool = DrawPool(count, sample, generator_for(self.seed, self.name, "read-pool", device=device))
        pool.renew()
        return pool.window(self.offsets.randrange(2 * pool.n - count + 1), count).view(like.shape)


def use_pooled_read_noise(engine: CrossbarEngine, seed: int | None) -> None:
    """Draw the read noise of ``engine``'s training forwards (reads whose gradient autograd
    needs, :class:`cimflow.sim.single_read.SingleReadStraightThrough`) from a pool seeded by
    ``seed`` (see the module docstring); None: from the layer's own read noise again
    (``CrossbarEngine._read_normal``). Inference reads always draw the layer's own."""
    engine._read_noise_pool = None if seed is None else _ReadNoisePool(engine, int(seed))  # type: ignore[assignment]


def training_read_normal(engine: CrossbarEngine, like: torch.Tensor) -> torch.Tensor:
    """Standard normals shaped like ``like`` for a training read: from the engine's pool when
    :func:`use_pooled_read_noise` turned it on, else its own read noise (``CrossbarEngine._read_normal``)."""
    pool = getattr(engine, "_read_noise_pool", None)
    if pool is None or torch.compiler.is_compiling():
        return engine._read_normal(like)
    return pool.normal(like)


__all__ = ["MIN_SLICE", "REFRESH_STEPS", "DrawPool", "pool_normals", "pool_uniforms", "training_read_normal", "use_pooled_read_noise"]
