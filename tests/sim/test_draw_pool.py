"""DrawPool renewal: slice by slice, small slices drawn ahead in batches, every entry within refresh_steps renewals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.sim import draw_pool
from cimflow.sim.draw_pool import DrawPool


def _counting_pool(n: int, refresh_steps: int) -> tuple[DrawPool, list[int]]:
    """A pool whose draws are the running count of draw calls (entry values say which call drew them)."""
    calls = [0]

    def sample(count: int, _: torch.Generator) -> torch.Tensor:
        calls[0] += 1
        return torch.full((count,), float(calls[0]))

    return DrawPool(n, sample, torch.Generator().manual_seed(0), refresh_steps), calls


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), refresh_steps=st.integers(1, 70), min_slice=st.sampled_from([1, 7, 64, 1 << 15]))
def test_a_cycle_of_renewals_redraws_every_entry_once(n: int, refresh_steps: int, min_slice: int) -> None:
    old = draw_pool.MIN_SLICE
    draw_pool.MIN_SLICE = min_slice
    try:
        pool, calls = _counting_pool(n, refresh_steps)
    finally:
        draw_pool.MIN_SLICE = old
    slices = -(-2 * n // pool.chunk)  # the renewals of one cycle
    assert slices <= refresh_steps
    drawn = torch.zeros(2 * n, dtype=torch.int64)
    for _ in range(slices):
        start, end = pool.renew()
        drawn[start:end] += 1
        if end > start:  # a batch: at least MIN_SLICE entries unless the pool's end stops it
            assert end - start >= min(min_slice, pool.chunk * pool.batch) or end == 2 * n
    assert torch.equal(drawn, torch.ones(2 * n, dtype=torch.int64))  # each entry exactly once a cycle
    assert pool.cursor == 0 and calls[0] - 1 <= slices  # one draw call per batch, not per renewal
    assert bool((pool.data > 1).all())


def test_small_slices_are_drawn_ahead_a_batch_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(draw_pool, "MIN_SLICE", 10)
    pool, calls = _counting_pool(10, 4)  # chunk 5: batches of 2 slices
    assert (pool.chunk, pool.batch) == (5, 2)
    assert [pool.renew() for _ in range(4)] == [(0, 10), (10, 10), (10, 20), (0, 0)]
    assert calls[0] == 3  # the pool's first draw and two batches
    monkeypatch.setattr(draw_pool, "MIN_SLICE", 1)
    pool, calls = _counting_pool(10, 4)
    assert [pool.renew() for _ in range(4)] == [(0, 5), (5, 10), (10, 15), (15, 20)]
