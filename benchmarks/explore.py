"""cimflow explore: cost-only trials per second in one process and on 2 Ray workers, and the
plain cost evaluation (no Optuna, no storage, no records) for reference, min-median-max over
repeats, with the load average.

The space is examples/explore_hybrid_recsys.yaml with its accuracy constraint removed, so every
trial is a cost-only trial (compile + estimate + system model of the Criteo-Kaggle DLRM shape on
one design). Ray is started once (its start-up time is printed apart) and reused by every run.

Run: .venv/bin/python benchmarks/explore.py [--trials 24] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _spread(values: list[float], fmt: str = ".3g") -> str:
    v = sorted(values)
    return f"{v[0]:{fmt}}-{statistics.median(v):{fmt}}-{v[-1]:{fmt}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import torch

    from cimflow.jobs.explore import ExploreOptions, run_explore
    from cimflow.jobs.explore_design import evaluate_cost
    from cimflow.jobs.explore_space import load_space

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="cimflow-explore-bench-"))
    data = yaml.safe_load((REPO / "examples" / "explore_hybrid_recsys.yaml").read_text())
    data["constraints"] = [c for c in data["constraints"] if c["name"] != "auc_loss"]
    data["sampler"] = "random"
    space_path = work / "space.yaml"
    space_path.write_text(yaml.safe_dump(data))
    space = load_space(space_path)

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start_s = time.perf_counter() - started

    # plain evaluation of the same designs: what one trial costs without the search around it
    designs = [{p.key: (p.grid() or [p.low])[i % len(p.grid() or [p.low])] for p in space.parameters} for i in range(args.trials)]
    evaluate_cost(space, designs[0])  # warm (imports, presets)
    plain, one, many = [], [], []
    try:
        for r in range(args.repeats):
            t = time.perf_counter()
            for d in designs:
                evaluate_cost(space, d)
            plain.append(args.trials / (time.perf_counter() - t))
            for workers, store in ((1, one), (args.workers, many)):
                out = work / f"out-{workers}-{r}"
                data["seed"] = r
                space_path.write_text(yaml.safe_dump(data))
                summary = run_explore(space_path, ExploreOptions(trials=args.trials, workers=workers, out=out, quiet=True))
                store.append(summary["run"]["trials_done"] / summary["run"]["seconds"])
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    speedup = [m / o for m, o in zip(many, one, strict=True)]
    print(f"cimflow explore benchmark: {args.trials} cost-only trials (Criteo-Kaggle DLRM on hybrid-rram-sram-28nm designs), "
          f"{args.repeats} repeats, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"Ray start-up (once, not in the rates): {ray_start_s:.1f} s")
    print(f"plain evaluate_cost, no search        : {_spread(plain)} designs/s (min-median-max)")
    to_plain = [o / p for o, p in zip(one, plain, strict=True)]
    print(f"explore, 1 process (no Ray)           : {_spread(one)} trials/s; ratio to plain {_spread(to_plain, '.2f')}")
    print(f"explore, {args.workers} Ray workers              : {_spread(many)} trials/s")
    print(f"speed-up {args.workers} Ray workers / 1 process  : {_spread(speedup, '.2f')}x")


if __name__ == "__main__":
    main()
