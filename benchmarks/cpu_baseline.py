"""The measured CPU baseline of issue 10, item 4: plain-PyTorch DLRM at the Criteo-Kaggle
shape, measured three times back to back, so its run-to-run spread is visible.

Each call of :func:`cimflow.recsys.baseline.measure_dlrm_cpu` allocates the 26 tables
(33.8 M rows, dim 16, fp32: 2.16 GB, under the 3 GiB budget, so not scaled), draws
Zipf(1.05) lookups, warms up and times batches 256 and 2048 at 2 threads in 3 rounds
(torch.utils.benchmark, 0.5 s each). Printed per call and batch: QPS min-median-max over
the rounds and their spread, wall-clock and per CPU-second of the process (the figure that
stays put when other work shares the CPUs); then the spread of the medians over the three
calls, and the load average (os.getloadavg) before and after.

OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, unless you set it): on CPUs
shared with other work, spinning threads of a 2-thread team lose their time slices at
every barrier and the run slows by up to ~8x with a huge spread; on an idle server
ACTIVE may be a few % faster (export OMP_WAIT_POLICY=ACTIVE to measure it).

Run: .venv/bin/python benchmarks/cpu_baseline.py [--calls 3] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

from cimflow.fileio import check_output_path, write_json  # noqa: E402
from cimflow.recsys.baseline import measure_dlrm_cpu  # noqa: E402
from cimflow.recsys.models import criteo_kaggle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skew", type=float, default=1.05)
    parser.add_argument("--budget-gib", type=float, default=3.0)
    parser.add_argument("--json", default=None, help="also write every call's result here")
    args = parser.parse_args()
    if args.json:
        check_output_path(args.json)
    load_before = os.getloadavg()
    results = []
    for call in range(args.calls):
        started = time.perf_counter()
        result = measure_dlrm_cpu(
            criteo_kaggle(), skew=args.skew, batch_sizes=(256, 2048), threads=args.threads,
            memory_budget_bytes=int(args.budget_gib * (1 << 30)), rounds=3, min_run_time_s=0.5, seed=call,
        )  # fmt: skip
        results.append(result)
        print(f"call {call + 1} ({time.perf_counter() - started:.1f} s): {result.describe()}")
        for batch, m in result.per_batch.items():
            cpu = m.cpu_qps_rounds
            print(
                f"  batch {batch:5d}: QPS {m.qps_min:10,.0f} - {m.qps_median:10,.0f} - {m.qps_max:10,.0f} "
                f"(min-median-max of {result.rounds} rounds), spread {100 * m.spread:5.1f} %; per CPU-second "
                f"{min(cpu):10,.0f} - {m.cpu_qps_median:10,.0f} - {max(cpu):10,.0f}, spread {100 * m.cpu_spread:5.1f} %"
            )
    load_after = os.getloadavg()
    print(f"over {args.calls} back-to-back calls (each call's median QPS):")
    for batch in results[0].batch_sizes:
        for label, field in (("wall-clock QPS", "qps_median"), ("per CPU-second", "cpu_qps_median")):
            medians = [getattr(r.per_batch[batch], field) for r in results]
            middle = statistics.median(medians)
            print(
                f"  batch {batch:5d}, {label:14s}: {min(medians):10,.0f} - {middle:10,.0f} - {max(medians):10,.0f}, "
                f"spread {100 * (max(medians) - min(medians)) / middle:5.1f} %"
            )
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, after "
          f"{tuple(round(x, 2) for x in load_after)}; {os.cpu_count()} CPUs; "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")  # fmt: skip
    if args.json:
        write_json(args.json, {"calls": [r.to_dict() for r in results], "load_before": load_before,
                               "load_after": load_after})  # fmt: skip


if __name__ == "__main__":
    main()
