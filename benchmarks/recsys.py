"""RecSys simulation speed and memory, measured in one run.

1. Simulated DLRM inference throughput (hybrid-rram-sram-28nm: tables pooled in RRAM
   arrays, MLPs on SRAM CIM) as a fraction of plain PyTorch DLRM on the same batch
   (target >= 0.5x), and the same for the model's embedding tables alone. Models: the
   MovieLens-shaped DLRM and a Criteo-like DLRM with 26 tables of 100k rows, pooling
   factor 4, Zipf-skewed indices ("Criteo-like"). Plain and simulated calls interleaved repeat by repeat;
   min - median - max of the ratio over the repeats at 1 and 2 torch threads, with the load
   average (benchmarks/embedding_pooling.py's timing), for one batch read again and again and
   for a stream of ``--stream`` distinct batches read in turn (what a server sees).
2. Lookup throughput on a 10^8-row synthetic table described by shape only (values and
   programming noise derived from a hash; nothing allocated).
3. Peak resident memory of the process after each part.

Run: .venv/bin/python benchmarks/recsys.py [--repeats 7] [--threads 1 2] [--stream 8]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch
from embedding_pooling import cycling, dlrm_batches, interleaved_ratios, line  # same directory: benchmarks/ is sys.path[0]
from machine import machine_line

import cimflow
from cimflow.recsys.models import DLRM, DLRMConfig
from cimflow.recsys.synthetic import SyntheticCriteo
from cimflow.sim import CIMEmbeddingBag, HashedTable


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int = 10) -> float:
    with torch.no_grad():
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def dlrm_ratio(label: str, cfg: DLRMConfig, batch: int, repeats: int, threads: list[int], stream: int) -> None:
    torch.manual_seed(0)
    model = DLRM(cfg).eval()
    data = SyntheticCriteo(table_sizes=cfg.table_sizes, pooling_factors=cfg.pooling_factors or None, alpha=1.05,
                           dense_features=cfg.dense_features, seed=0)
    batches = dlrm_batches(data, batch, stream)
    cim = cimflow.program(cimflow.convert(model, "hybrid-rram-sram-28nm"), seed=0)

    def tables(m: DLRM, dense: torch.Tensor, pairs: list) -> None:
        for table, (values, offsets) in zip(m.embeddings, pairs, strict=True):
            table(values, offsets)

    with torch.no_grad():
        for b in batches:  # (a lazy table builds the rows of every batch)
            cim(*b)
    runs = [("1 batch", lambda fn: (lambda: fn(*batches[0])))]
    if stream > 1:
        runs.append((f"{stream} batches", lambda fn: cycling(fn, batches)))
    for n in threads:
        torch.set_num_threads(n)
        for which, feed in runs:
            load = os.getloadavg()[0]
            ratios, tp, ts = interleaved_ratios(feed(model), feed(cim), repeats)
            line(f"{label}, {which}", n, ratios, tp, ts, load)
            load = os.getloadavg()[0]
            ratios, tp, ts = interleaved_ratios(feed(lambda *b: tables(model, *b)), feed(lambda *b: tables(cim, *b)), repeats)
            line(f"{label}, {which}, tables", n, ratios, tp, ts, load)
    print(f"{'':38s} batch {batch}; peak RSS {peak_mb():,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--stream", type=int, default=8, help="distinct batches read in turn (1: the stream's lines left out)")
    args = parser.parse_args()
    print(machine_line())
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (the spread needs them)")
    if args.stream < 1:
        parser.error("--stream must be at least 1")
    movielens = DLRMConfig(dense_features=4, table_sizes=(943, 1682, 19, 21, 7, 2, 11), embedding_dim=16,
                           bottom_mlp=(64, 16), top_mlp=(64, 32, 1))
    dlrm_ratio("MovieLens DLRM", movielens, 1024, args.repeats, args.threads, args.stream)
    criteo_like = DLRMConfig(dense_features=13, table_sizes=(100_000,) * 26, embedding_dim=16, bottom_mlp=(512, 256, 64, 16),
                             top_mlp=(512, 256, 1), pooling_factors=(4,) * 26)
    dlrm_ratio("Criteo-like DLRM", criteo_like, 1024, args.repeats, args.threads, args.stream)

    torch.set_num_threads(max(args.threads))
    chip = cimflow.load_chip("hybrid-rram-sram-28nm")
    table = HashedTable(100_000_000, 64, seed=0, scale=0.05, name="huge")
    layer = CIMEmbeddingBag(table, chip.array(chip.embedding_kind), chip.embedding_kind, name="huge")
    layer.program(0)
    gen = torch.Generator().manual_seed(0)
    lookups, bag = 65536, 32
    v = torch.randint(0, 100_000_000, (lookups,), generator=gen)
    o = torch.arange(0, lookups + 1, bag)
    seconds = timed(lambda: layer(v, o), repeats=5)
    print(f"10^8-row table (by shape, dim 64, bags of {bag}): {lookups / seconds:,.0f} lookups/s in arrays "
          f"({lookups // bag / seconds:,.0f} bags/s); peak RSS {peak_mb():,.0f} MB "
          f"(the table itself would be {100_000_000 * 64 * 4 / 2**30:.1f} GiB in fp32)")


if __name__ == "__main__":
    main()
