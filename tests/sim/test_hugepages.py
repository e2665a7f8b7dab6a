"""Large tables on 2 MiB pages (cimflow.sim.hugepages): the advice reaches the kernel for a
large CPU tensor, not for a small one or when turned off, and a converted table's per-row state
read at random (the cached rows, the outcome table) is allocated with it."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

import cimflow
from cimflow.sim import hugepages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not hugepages.enabled()
                                or not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
                                reason="madvise(MADV_HUGEPAGE) needs Linux built with transparent huge pages")


def _advised(t: torch.Tensor) -> bool:
    """Whether the mapping holding ``t``'s memory carries the huge-page advice (VmFlags ``hg``
    in /proc/self/smaps)."""
    addr = t.untyped_storage().data_ptr() + t.untyped_storage().nbytes() // 2  # inside the advised, 2 MiB-aligned part
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return "hg" in line.split()[1:]
    return False


def test_a_large_tensor_is_advised_and_keeps_torch_empty_semantics(monkeypatch):
    calls = []
    real = hugepages._libc_madvise()
    monkeypatch.setattr(hugepages, "_madvise", lambda *args: calls.append(args) or real(*args))
    t = hugepages.empty(3 << 20, dtype=torch.float32)  # 12 MiB
    assert t.shape == (3 << 20,) and t.dtype == torch.float32 and t.is_contiguous()
    start = t.untyped_storage().data_ptr()
    assert len(calls) == 1 and start <= calls[0][0] < start + (2 << 20)  # from the first 2 MiB boundary on
    assert _advised(t)  # the kernel took it
    t.fill_(2.5)
    assert float(t.sum()) == 2.5 * (3 << 20)


def test_small_tensors_and_the_switch_get_no_advice(monkeypatch):
    calls = []
    real = hugepages._libc_madvise()
    monkeypatch.setattr(hugepages, "_madvise", lambda *args: calls.append(args) or real(*args))
    assert not hugepages.advise(hugepages.empty(1000)) and calls == []  # under MIN_BYTES
    assert hugepages.advise(torch.empty(3 << 20)) and len(calls) == 1
    start, length, _ = calls[0]
    assert start % (2 << 20) == 0 and length % (2 << 20) == 0 and length >= 4 << 20  # the 2 MiB-aligned extents
    monkeypatch.setenv("CIMFLOW_HUGE_PAGES", "0")
    assert not hugepages.enabled()
    assert not hugepages.advise(hugepages.empty(3 << 20)) and len(calls) == 1


def test_a_converted_tables_random_read_state_is_advised():
    rows, dim = 40_000, 64  # the cached rows and the outcome table's values: over hugepages.MIN_BYTES
    cim = cimflow.program(cimflow.convert(nn.EmbeddingBag(rows, dim, mode="sum"), "hybrid-rram-sram-28nm"), seed=0)
    table = cim.embeddingbag
    with torch.no_grad():
        cim(torch.randint(0, rows, (64,)), torch.arange(0, 64, 4))
    assert table.pool_cache is not None and _advised(table.pool_cache)
    singles = table._single_reads()
    assert singles is not None and _advised(singles.base)
