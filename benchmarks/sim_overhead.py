"""CIM forward time as a ratio to plain PyTorch forward time, measured in one process.

Workloads (issue [1/5], [3/5]): Linear 512x512 at batch 1024; MLP 784-256-128-10 at batch
256; a LeNet-5-style CNN on 1x28x28 at batch 256. Chip: ``pcm-hermes-like`` with
programming and read noise, drift to 1 day, 8-bit ADC and 512-row tiles.
Targets: <= 1.3x, <= 2x, <= 3x.

Variants, timed interleaved round by round (plain, then each variant, every round):
``fast`` (the default read: int8/bfloat16 matrix units where the CPU has them, the readout
fused with the read noise's draw), ``unfused`` (the same matmuls, the readout as torch
passes with torch's generator: ``CIMFLOW_FUSED_READ=0``), ``fast-f32`` (the matrix units
turned off: what a CPU without them runs),
``exact`` (read-noise variance as a float32 matmul). Each ratio is per round (variant time /
plain time of the same round); the table prints min / median / max over the rounds, at
each thread count, with the load average before and after (a loaded machine stalls
oversubscribed threads: compare 1-thread figures).

Run: .venv/bin/python benchmarks/sim_overhead.py [--repeats 7] [--threads 1,2] [--variants fast,unfused,fast-f32,exact]
     [--clock wall|cpu]   (cpu: the thread's CPU time, 1 thread, steadier on a shared machine)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager

import torch
from machine import machine_line
from torch import nn

import cimflow
from cimflow.chip import chip_from_dict, load_preset
from cimflow.sim import cim_layers

# variant: (read-noise mode, environment while it runs)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "fast": ("fast", {}),
    "unfused": ("fast", {"CIMFLOW_FUSED_READ": "0"}),
    "fast-f32": ("fast", {"CIMFLOW_MATRIX_UNITS": "0"}),
    "exact": ("exact", {}),
    "column_mean": ("column_mean", {}),
}


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def bench_chip():
    data = load_preset("pcm-hermes-like").model_dump(mode="json", exclude_none=True)
    kind = data["roles"]["mvm"]
    arr = data["arrays"][kind]
    arr["rows"] = 512
    arr["adc"]["bits"] = 8
    return chip_from_dict(data, "pcm-hermes-like (512-row tiles)")


def workloads() -> list[tuple[str, nn.Module, torch.Tensor, float]]:
    torch.manual_seed(0)
    return [
        ("Linear 512x512, batch 1024", nn.Sequential(nn.Linear(512, 512)), torch.randn(1024, 512), 1.3),
        ("MLP 784-256-128-10, batch 256",
         nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)), torch.randn(256, 784), 2.0),
        ("LeNet-5, 1x28x28, batch 256", lenet5(), torch.randn(256, 1, 28, 28), 3.0),
    ]


@contextmanager
def environment(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter


def time_once(fn, x: torch.Tensor, iters: int) -> float:
    t = clock()
    for _ in range(iters):
        fn(x)
    return (clock() - t) / iters


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def bench_workload(label: str, model: nn.Module, x: torch.Tensor, chip, variants: list[str], repeats: int) -> dict[str, list[float]]:
    """Per-round times: {"plain": [...], variant: [...]} (seconds per forward)."""
    model.eval()
    sims = {}
    for name in variants:
        mode, _ = VARIANTS[name]
        cim = cimflow.convert(model, chip)
        for _, layer in cim_layers(cim):
            layer.engine.set_read_noise_mode(mode)
        sims[name] = cimflow.drift(cimflow.program(cim, seed=0), "1d")
    times: dict[str, list[float]] = {"plain": [], **{n: [] for n in variants}}
    with torch.no_grad():
        warm = time.perf_counter()
        for _ in range(2):
            model(x)
        iters = max(1, min(20, int(0.05 / max((time.perf_counter() - warm) / 2, 1e-6))))
        for name in variants:
            with environment(VARIANTS[name][1]):
                for _ in range(2):
                    sims[name](x)
        for _ in range(repeats):  # interleaved: every round times every variant once
            times["plain"].append(time_once(model, x, iters))
            for name in variants:
                with environment(VARIANTS[name][1]):
                    times[name].append(time_once(sims[name], x, iters))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (>= 5)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--clock", default="wall", choices=list(CLOCK),
                        help="wall: elapsed time; cpu: this thread's CPU time (1 thread only: robust to a loaded machine)")
    parser.add_argument("--variants", default="fast,unfused,fast-f32,exact", help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    print(machine_line())
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.repeats < 5:
        parser.error(f"variants must be among {', '.join(VARIANTS)} and --repeats >= 5 (got {unknown or args.repeats})")
    global clock
    clock = CLOCK[args.clock]
    threads_list = [int(t) for t in args.threads.split(",")]
    if args.clock == "cpu" and threads_list != [1]:
        parser.error("--clock cpu measures one thread: use --threads 1")
    chip = bench_chip()
    from cimflow.sim import fastmm

    print(f"chip: {chip.name}; matrix units (int8/bf16) on this CPU: {fastmm.matrix_units_available()}; "
          f"{args.repeats} interleaved rounds, {args.clock} clock; ratio = variant / plain per round, min-median-max")
    for threads in threads_list:
        torch.set_num_threads(threads)
        print(f"\ntorch threads {threads}")
        print(f"{'workload':32s} {'variant':9s} {'plain ms':>9s} {'cim ms':>9s} {'ratio min-med-max':>20s} {'target':>7s}  "
              "load before -> after")
        for label, model, x, target in workloads():
            before = load()
            times = bench_workload(label, model, x, chip, variants, args.repeats)
            after = load()
            plain = statistics.median(times["plain"])
            for name in variants:
                ratios = sorted(t / p for t, p in zip(times[name], times["plain"], strict=True))
                spread = f"{ratios[0]:.2f}-{statistics.median(ratios):.2f}-{ratios[-1]:.2f}x"
                print(f"{label:32s} {name:9s} {plain * 1e3:9.2f} {statistics.median(times[name]) * 1e3:9.2f} {spread:>20s} "
                      f"{target:6.1f}x  {before} -> {after}")


if __name__ == "__main__":
    main()
