"""torch.compile of converted models (pcm-hermes-like, programmed, read noise on): an MLP
784-256-128-10 and a LeNet-5 on 1x28x28: graph breaks, compile time (the first call) and
compiled vs eager forward time, the two interleaved repetition by repetition,
min-median-max over repeats, with the load.

Run: .venv/bin/python benchmarks/compile_speed.py [--threads 1] [--repeats 9] [--batch 256] [--models mlp,lenet]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch._dynamo
from machine import machine_line
from torch import nn

import cimflow


def _timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    v = sorted(x * scale for x in values)
    return f"{v[0]:.3g}-{statistics.median(v):.3g}-{v[-1]:.3g}{unit}"


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)), (784,)),
    "lenet": (lenet5, (1, 28, 28)),
}


def measure(name: str, args: argparse.Namespace) -> None:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    plain = build().eval()
    model = cimflow.program(cimflow.convert(plain, "pcm-hermes-like"), 0)
    x = torch.randn(args.batch, *shape)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=args.backend)
        compile_s = _timed(lambda: compiled(x))
        for _ in range(2):  # warm both
            compiled(x)
            model(x)
        eager_t, comp_t, plain_t = [], [], []
        for _ in range(args.repeats):
            eager_t.append(_timed(lambda: model(x)))
            comp_t.append(_timed(lambda: compiled(x)))
            plain_t.append(_timed(lambda: plain(x)))
    ratios = [c / e for c, e in zip(comp_t, eager_t, strict=True)]
    load = os.getloadavg()
    print(f"\n{name}: torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, backend {args.backend}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"graph breaks: {explained.graph_break_count} ({explained.graph_count} graph(s))")
    print(f"compile (first call): {compile_s:.1f} s")
    print(f"eager forward    min-median-max {_spread(eager_t, 1e3, ' ms')}")
    print(f"compiled forward min-median-max {_spread(comp_t, 1e3, ' ms')}")
    print(f"plain PyTorch    min-median-max {_spread(plain_t, 1e3, ' ms')}")
    print(f"compiled / eager min-median-max {_spread(ratios)}; compiled / plain median "
          f"{statistics.median(comp_t) / statistics.median(plain_t):.2f}x, eager / plain "
          f"{statistics.median(eager_t) / statistics.median(plain_t):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--models", default="mlp,lenet", help=f"comma-separated, of {', '.join(MODELS)}")
    args = ap.parse_args()
    print(machine_line())
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    for name in names:
        measure(name, args)


if __name__ == "__main__":
    main()
