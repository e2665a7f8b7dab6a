"""Embedding pooling speed: a converted ``nn.EmbeddingBag`` against the plain one, in one run.

1. Table only: one ``nn.EmbeddingBag(rows, 64, mode="sum")`` converted with
   ``cimflow.convert`` onto ``hybrid-rram-sram-28nm`` (pooled in RRAM arrays: programming
   noise, stuck cells, drift spread, read noise, 7-bit ADC per read of at most 32 rows),
   batch 1024 bags of 20 uniform random lookups, rows 10^4 / 10^5 / 10^6. Two lines per
   table: one batch read again and again (its rows stay in the CPU's caches for both), and
   a stream of ``--stream`` distinct batches read in turn, as a server sees them (the rows
   come from memory; a lazy table's rows of the whole stream are built before the timing,
   as a serving table's are after its first batches).
2. Whole model: the MovieLens-shaped DLRM (7 tables, dim 16) at batch 1024, one batch and a
   stream as above.

Throughput ratio = simulated / plain (target >= 0.5x). Plain and simulated calls are
interleaved repeat by repeat; each line gives min-median-max of the ratio over the
repeats, at 1 and 2 torch threads, with the load average before the line (on a shared
2-core machine, 2-thread figures swing with the load).

Run: .venv/bin/python benchmarks/embedding_pooling.py [--repeats 7] [--rows 10000 100000 1000000] [--stream 8]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import torch
from machine import machine_line
from torch import nn

import cimflow
from cimflow.recsys.models import DLRM, DLRMConfig
from cimflow.recsys.synthetic import SyntheticCriteo
from cimflow.sim import embedding

CHIP = "hybrid-rram-sram-28nm"


class OneTable(nn.Module):
    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.table = nn.EmbeddingBag(rows, dim, mode="sum")

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.table(values, offsets)


def cycling(fn, inputs: list[tuple]):
    """A call of ``fn`` on the next of ``inputs`` at each call, round and round: a stream of
    distinct batches (each closure keeps its own place, so plain and simulated calls read
    the same batches in the same order)."""
    stream = itertools.cycle(inputs)
    return lambda: fn(*next(stream))


def _seconds(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved_ratios(plain, simulated, repeats: int) -> tuple[list[float], float, float]:
    """Ratios plain-time / simulated-time (= simulated / plain throughput), one per repeat,
    and the median seconds of each. Each repeat times both back to back."""
    with torch.no_grad():
        plain(), simulated()  # warm-up
        t_plain, t_sim = _seconds(plain, 1), _seconds(simulated, 1)
        # ~50 ms of plain calls per repeat, at most ~0.5 s of simulated ones
        calls = max(1, min(50, int(0.05 / max(t_plain, 1e-6)), int(0.5 / max(t_sim, 1e-6))))
        ratios, tp, ts = [], [], []
        for _ in range(repeats):
            a = _seconds(plain, calls)
            b = _seconds(simulated, calls)
            ratios.append(a / b)
            tp.append(a)
            ts.append(b)
    return ratios, statistics.median(tp), statistics.median(ts)


def line(label: str, threads: int, ratios: list[float], t_plain: float, t_sim: float, load: float) -> None:
    print(f"{label:38s} {threads:2d} thr  load {load:4.1f}  plain {t_plain * 1e3:8.2f} ms  sim {t_sim * 1e3:9.2f} ms  "
          f"ratio {min(ratios):.4f} - {statistics.median(ratios):.4f} - {max(ratios):.4f}x  (target >= 0.5x)")


def table_only(rows: int, repeats: int, threads: int, stream: int, batch: int = 1024, pooling: int = 20,
               dim: int = 64) -> None:
    torch.manual_seed(0)
    model = OneTable(rows, dim).eval()
    start = time.perf_counter()
    cim = cimflow.program(cimflow.convert(model, CHIP), seed=0)
    programmed = time.perf_counter() - start
    gen = torch.Generator().manual_seed(1)
    offsets = torch.arange(0, batch * pooling, pooling)
    batches = [(torch.randint(0, rows, (batch * pooling,), generator=gen), offsets) for _ in range(max(1, stream))]
    values = batches[0][0]
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cim.table.collect_stats = True
    with torch.no_grad():
        cim(values, offsets)  # builds the outcome table of lone reads (the rows read, for a lazy table)
    first = time.perf_counter() - start
    cim.table.collect_stats = False
    reads = cim.table.stats["reads"]
    load = os.getloadavg()[0]
    ratios, tp, ts = interleaved_ratios(lambda: model(values, offsets), lambda: cim(values, offsets), repeats)
    line(f"EmbeddingBag {rows:>9,d} x {dim}, 1 batch", threads, ratios, tp, ts, load)
    print(f"{'':38s} convert + program {programmed:.1f} s, first forward {first:.1f} s, "
          f"{'cached' if cim.table.pool_cache is not None else 'lazy (hashed rows)'}; {reads:,} array reads per batch "
          f"of {values.numel():,} lookups")
    if stream > 1:
        start = time.perf_counter()
        with torch.no_grad():
            for values_k, _ in batches[1:]:
                cim(values_k, offsets)  # (a lazy table builds the stream's rows)
        built = time.perf_counter() - start
        load = os.getloadavg()[0]
        ratios, tp, ts = interleaved_ratios(cycling(model, batches), cycling(cim, batches), repeats)
        line(f"EmbeddingBag {rows:>9,d} x {dim}, {stream} batches", threads, ratios, tp, ts, load)
        print(f"{'':38s} the stream's other {stream - 1} batches first read in {built:.1f} s")


def whole_model(repeats: int, threads: int, stream: int, batch: int = 1024) -> None:
    torch.manual_seed(0)
    cfg = DLRMConfig(dense_features=4, table_sizes=(943, 1682, 19, 21, 7, 2, 11), embedding_dim=16, bottom_mlp=(64, 16),
                     top_mlp=(64, 32, 1))
    model = DLRM(cfg).eval()
    data = SyntheticCriteo(table_sizes=cfg.table_sizes, pooling_factors=None, alpha=1.05, dense_features=cfg.dense_features, seed=0)
    batches = dlrm_batches(data, batch, stream)
    cim = cimflow.program(cimflow.convert(model, CHIP), seed=0)
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    ratios, tp, ts = interleaved_ratios(lambda: model(*batches[0]), lambda: cim(*batches[0]), repeats)
    line("DLRM, MovieLens shape, 1 batch", threads, ratios, tp, ts, load)
    if stream > 1:
        load = os.getloadavg()[0]
        ratios, tp, ts = interleaved_ratios(cycling(model, batches), cycling(cim, batches), repeats)
        line(f"DLRM, MovieLens shape, {stream} batches", threads, ratios, tp, ts, load)


def dlrm_batches(data: SyntheticCriteo, batch: int, count: int) -> list[tuple]:
    """``count`` distinct batches of ``data`` as a DLRM's forward takes them: (dense, per-table (indices, offsets))."""
    out = []
    for k in range(count):
        dense, sparse, _ = data.batch(batch, k)
        out.append((dense, sparse.per_feature()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--stream", type=int, default=8,
                        help="distinct batches read in turn for each table's second line (1: that line left out)")
    parser.add_argument("--cache-cells", type=int, default=None,
                        help=f"programme and cache tables of up to this many cells (default {embedding.CACHE_CELLS:,}; "
                             "larger tables are read lazily through the hash)")
    args = parser.parse_args()
    print(machine_line())
    if args.cache_cells is not None:
        embedding.CACHE_CELLS = args.cache_cells
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (the spread needs them)")
    if args.stream < 1:
        parser.error("--stream must be at least 1")
    print(f"chip {CHIP}; batch 1024, pooling 20, dim 64; {args.repeats} interleaved repeats; ratio = simulated / plain throughput; "
          f"tables of up to {embedding.CACHE_CELLS:,} cells cached")
    for threads in args.threads:
        for rows in args.rows:
            table_only(rows, args.repeats, threads, args.stream)
        whole_model(args.repeats, threads, args.stream)


if __name__ == "__main__":
    main()
