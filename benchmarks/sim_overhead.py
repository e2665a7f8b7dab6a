"""CIM forward time as a ratio to plain PyTorch forward time, measured in one process.

Workloads (issue [1/5]): Linear 512x512 at batch 1024; MLP 784-256-128-10 at batch 256;
a LeNet-5-style CNN on 1x28x28 at batch 256. Chip: ``pcm-hermes-like`` with programming
and read noise, drift to 1 day, 8-bit ADC and 512-row tiles; torch threads = 2.
Targets: <= 1.3x, <= 2x, <= 3x.

Run: .venv/bin/python benchmarks/sim_overhead.py [--read-noise-mode exact|column_mean]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import cimflow
from cimflow.chip import chip_from_dict, load_preset
from cimflow.sim import cim_layers


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


def timeit(fn, x, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read-noise-mode", default="exact", choices=["exact", "column_mean"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    chip = bench_chip()
    workloads = [
        ("Linear 512x512, batch 1024", nn.Linear(512, 512), torch.randn(1024, 512), 1.3),
        ("MLP 784-256-128-10, batch 256", nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)), torch.randn(256, 784), 2.0),
        ("LeNet-5, 1x28x28, batch 256", lenet5(), torch.randn(256, 1, 28, 28), 3.0),
    ]
    print(f"chip: {chip.name}; read-noise mode {args.read_noise_mode}; torch threads {torch.get_num_threads()}")
    print(f"{'workload':34s} {'torch ms':>9s} {'cim ms':>9s} {'ratio':>7s} {'target':>7s}")
    for label, model, x, target in workloads:
        model.eval()
        wrapped = model if isinstance(model, nn.Sequential) else nn.Sequential(model)
        cim = cimflow.program(cimflow.convert(wrapped, chip), seed=0)
        cimflow.drift(cim, "1d")
        for _, layer in cim_layers(cim):
            layer.engine.set_read_noise_mode(args.read_noise_mode)
        base = timeit(wrapped, x, args.repeats)
        sim = timeit(cim, x, args.repeats)
        print(f"{label:34s} {base * 1e3:9.2f} {sim * 1e3:9.2f} {sim / base:6.2f}x {target:6.1f}x")


if __name__ == "__main__":
    main()
