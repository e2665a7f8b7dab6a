"""RecSys simulation speed and memory, measured in one run.

1. Simulated DLRM inference throughput (hybrid-rram-sram-28nm: tables pooled in RRAM
   arrays, MLPs on SRAM CIM) as a fraction of plain PyTorch DLRM on the same batch
   (target >= 0.5x). Model: the MovieLens-shaped DLRM and a Criteo-like DLRM with
   26 tables of 100k rows, pooling factor 4, Zipf-skewed indices.
2. Lookup throughput on a 10^8-row synthetic table described by shape only (values and
   programming noise derived from a hash; nothing allocated).
3. Peak resident memory of the process after each part.

Run: .venv/bin/python benchmarks/recsys.py
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

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


def dlrm_ratio(label: str, cfg: DLRMConfig, batch: int) -> None:
    torch.manual_seed(0)
    model = DLRM(cfg).eval()
    data = SyntheticCriteo(table_sizes=cfg.table_sizes, pooling_factors=cfg.pooling_factors or None, alpha=1.05,
                           dense_features=cfg.dense_features, seed=0)
    dense, sparse, _ = data.batch(batch, 0)
    pairs = sparse.per_feature()
    cim = cimflow.program(cimflow.convert(model, "hybrid-rram-sram-28nm"), seed=0)
    base = timed(lambda: model(dense, pairs))
    sim = timed(lambda: cim(dense, pairs))
    print(f"{label:44s} batch {batch:5d}: torch {batch / base:10,.0f} samples/s, simulated {batch / sim:10,.0f} samples/s, "
          f"fraction {base / sim:5.2f}x (target >= 0.5x); peak RSS {peak_mb():,.0f} MB")


def main() -> None:
    torch.set_num_threads(2)
    movielens = DLRMConfig(dense_features=4, table_sizes=(943, 1682, 19, 21, 7, 2, 11), embedding_dim=16,
                           bottom_mlp=(64, 16), top_mlp=(64, 32, 1))
    dlrm_ratio("DLRM, MovieLens shape", movielens, 1024)
    criteo_like = DLRMConfig(dense_features=13, table_sizes=(100_000,) * 26, embedding_dim=16, bottom_mlp=(512, 256, 64, 16),
                             top_mlp=(512, 256, 1), pooling_factors=(4,) * 26)
    dlrm_ratio("DLRM, 26 x 100k rows, pooling 4", criteo_like, 1024)

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
