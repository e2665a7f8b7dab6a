"""HWA train step time as a ratio to a plain PyTorch train step, measured in one process.

Workload (issue 12): MLP 784-256-128-10 at batch 256, Adam, cross-entropy, on
``pcm-hermes-like`` (programming noise, read noise, drift, 8-bit DAC and ADC, 256-row
arrays: the 784 inputs take 4 read groups). The plain step is forward + backward +
optimizer step of the float model. The HWA steps do what :func:`cimflow.train.hwa_finetune`
does per step, each on its own converted copy of the model:

- ``fresh, cached draws`` (hwa_finetune's default): program a fresh chip instance from the
  cached per-cell draws (:mod:`cimflow.train.draws`), age it to a log-uniform random time
  up to ``--t-max`` (default one day), forward on it (read noise from a pool,
  :mod:`cimflow.sim.draw_pool`; DAC/ADC quantization, straight-through gradients),
  backward, optimizer step, clip the weights to 3 sigma;
- ``fresh, new generators`` (``cached_draws=False``): the same with every instance and every
  read's noise drawn from fresh generators, as ``cimflow.program`` and inference do;
- ``kept instance``: no re-programming (``keep_programmed``: the forward runs on the last
  instance; read noise, from the pool, is still drawn on every forward);
- ``fresh every K steps`` (``hwa_finetune(resample_every=K)``, ``--resample-every``, default
  4): a fresh instance from the cached draws on one step in K, the kept instance on the
  others; one sample is K consecutive steps, reported per step (the amortized cost).

The steps are interleaved repetition by repetition (every variant sees the same machine
state) at each thread count; the script prints min / median / max over the repeats, the
load average before and after, and each median's ratio to the plain step's median, with the
median process CPU time and its ratio beside them (a loaded machine's wall clock also
counts the waits for a core). After each table, the programming of a fresh instance alone
(``sample_instance`` from the cached draws), in ms and ns a cell.
``--profile`` adds torch.profiler's top operators of each variant (1 thread).

Run: .venv/bin/python benchmarks/hwa_train.py [--repeats 20] [--threads 1,2] [--resample-every 4] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
from machine import machine_line
from torch import nn

import cimflow
from cimflow.chip import Chip, chip_from_dict, load_preset
from cimflow.chip.spec import Device
from cimflow.sim.draw_pool import use_pooled_read_noise
from cimflow.train.clip import clip_weights
from cimflow.train.draws import InstanceDraws
from cimflow.train.noise import keep_programmed, sample_instance, step_seed
from cimflow.units import parse_duration


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def generic_law(name: str) -> Chip:
    """Preset ``name`` with every array's device on the generic law (``model: generic``): a
    technology plug-in's state-dependent drift-exponent curves flattened at mid-range
    (G/g_max = 0.5), its accumulated-noise law dropped. Separates the HWA machinery's cost
    from the plug-in's (whose curves are evaluated per cell on every programming)."""
    chip = load_preset(name)
    data = chip.model_dump(mode="json", exclude_none=True)
    for kind, array in chip.arrays.items():
        dev = array.device
        if getattr(dev, "model", "generic") == "generic":
            continue
        from cimflow.physics.devices import evaluate_curve  # the plug-ins exist once a preset names one

        plain = {k: v for k, v in data["arrays"][kind]["device"].items() if k in Device.model_fields}
        plain["model"] = "generic"
        mid = torch.tensor([0.5])
        for field, curve in (("nu_mean", "drift_nu_mean"), ("nu_std", "drift_nu_std")):
            if getattr(dev, curve, None) is not None:
                plain["drift"][field] = float(evaluate_curve(getattr(dev, curve), mid))
        data["arrays"][kind]["device"] = plain
    data["name"] = f"{name} (generic device law)"
    return chip_from_dict(data, origin=f"{name}, generic device law")


Steps = dict[str, tuple[Callable[[int], None], int]]  # variant: (function of a sample index, train steps per call)


def make_steps(chip: Chip | str, t_max_s: float, every: int = 4) -> Steps:
    """One function per variant, each on its own model and optimizer, with the number of
    train steps a call runs (``every`` for the variant that re-programs every ``every``
    steps, else 1)."""
    torch.manual_seed(0)
    x = torch.rand(256, 784)
    y = torch.randint(0, 10, (256,))
    loss_fn = nn.CrossEntropyLoss()
    base = mlp()
    plain = copy.deepcopy(base)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-4)

    def plain_step(_: int) -> None:
        loss = loss_fn(plain(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def hwa(mode: str) -> Callable[[int], None]:
        cim = cimflow.convert(copy.deepcopy(base), chip)
        cimflow.program(cim, 0)
        opt = torch.optim.Adam(cim.parameters(), lr=1e-4)
        times = torch.Generator().manual_seed(1)
        draws = None if mode == "exact" else InstanceDraws(0)
        if mode != "exact":  # hwa_finetune's default: the training reads' noise from a pool too
            for k, (_, layer) in enumerate(cimflow.sim.cim_layers(cim)):
                use_pooled_read_noise(layer.engine, k)

        def train(k: int, fresh: bool) -> None:
            if fresh:
                sample_instance(cim, step_seed(0, k), t_max_s, times, draws=draws)
            else:
                keep_programmed(cim)
            loss = loss_fn(cim(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clip_weights(cim, 3.0, count=False)

        def step(k: int) -> None:
            if mode == "every":  # hwa_finetune(resample_every=every): steps k*every .. k*every + every - 1
                for n in range(every):
                    train(k * every + n, n == 0)
            else:
                train(k, mode != "kept")

        return step

    return {"plain PyTorch": (plain_step, 1), "HWA fresh, cached draws": (hwa("cached"), 1),
            "HWA fresh, new generators": (hwa("exact"), 1), "HWA kept instance": (hwa("kept"), 1),
            f"HWA fresh every {every} steps": (hwa("every"), every)}


def measure(steps: Steps, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds per train step of each variant (a call's time over
    its steps), interleaved repetition by repetition."""
    for k in range(3):  # warm-up: allocations, caches, pools
        for step, _ in steps.values():
            step(k)
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for k in range(repeats):
        for name, (step, count) in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step(3 + k)
            wall[name].append((time.perf_counter() - start) / count)
            cpu[name].append((time.process_time() - start_cpu) / count)
    return wall, cpu


def report(times: tuple[dict[str, list[float]], dict[str, list[float]]], threads: int, chip: str, load: tuple[float, ...]) -> None:
    """Wall-clock min / median / max and ratio of medians; the process CPU time's median and
    ratio beside it (on a loaded machine the wall clock counts the waits for a core, the CPU
    time only the work)."""
    wall, cpu = times
    base, base_cpu = statistics.median(wall["plain PyTorch"]), statistics.median(cpu["plain PyTorch"])
    print(f"\nMLP 784-256-128-10, batch 256, chip {chip!r}, torch threads {threads}, {len(wall['plain PyTorch'])} repeats, "
          f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'step':28s} {'min ms':>8s} {'median':>8s} {'max':>8s} {'ratio':>7s} {'cpu ms':>8s} {'ratio':>7s}")
    for name, values in wall.items():
        med, med_cpu = statistics.median(values), statistics.median(cpu[name])
        print(f"{name:28s} {1e3 * min(values):8.2f} {1e3 * med:8.2f} {1e3 * max(values):8.2f} {med / base:6.2f}x "
              f"{1e3 * med_cpu:8.2f} {med_cpu / base_cpu:6.2f}x")
    print("target: HWA step <= 2x plain")


def programming(chip: Chip, t_max_s: float, repeats: int) -> None:
    """The part of a fresh-instance step that programs it: ``sample_instance`` from the cached
    draws alone, min / median / max over ``repeats`` instances, and per cell (both cells of
    every differential pair of every layer)."""
    cim = cimflow.convert(mlp(), chip)
    cimflow.program(cim, 0)
    draws, times = InstanceDraws(0), torch.Generator().manual_seed(1)
    cells = sum(layer.engine.g_pos.numel() + layer.engine.g_neg.numel() for _, layer in cimflow.sim.cim_layers(cim))
    seconds = []
    for k in range(3 + repeats):
        start = time.perf_counter()
        sample_instance(cim, step_seed(0, k), t_max_s, times, draws=draws)
        if k >= 3:  # (after the pools' and buffers' first use)
            seconds.append(time.perf_counter() - start)
    seconds.sort()
    med = statistics.median(seconds)
    print(f"programming a fresh instance from the cached draws: {1e3 * seconds[0]:.2f} / {1e3 * med:.2f} / "
          f"{1e3 * seconds[-1]:.2f} ms (min / median / max), {1e9 * med / cells:.1f} ns a cell ({cells:,} cells)")


def profile(steps: Steps, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, (step, count) in steps.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(-(-10 // count)):
                step(100 + k)
        print(f"\n--- {name}: top operators over {count * -(-10 // count)} steps (1 thread)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--chip", default="pcm-hermes-like")
    parser.add_argument("--law", choices=("preset", "generic", "both"), default="both",
                        help="the preset's own device model, its generic-law variant (generic_law), or both")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--t-max", default="1d", help="drift: log-uniform random time up to this (default 1d)")
    parser.add_argument("--resample-every", type=int, default=4,
                        help="the amortized variant re-programs every this many steps (hwa_finetune's resample_every)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators per variant")
    parser.add_argument("--rows", type=int, default=15, help="operators per profile table")
    args = parser.parse_args()
    if args.resample_every < 1:
        parser.error(f"--resample-every must be >= 1, got {args.resample_every}")
    print(machine_line())
    t_max_s = parse_duration(args.t_max)
    preset = load_preset(args.chip)
    plugin = any(getattr(a.device, "model", "generic") != "generic" for a in preset.arrays.values())
    chips: list[Chip] = []
    if args.law in ("preset", "both"):
        chips.append(preset)
    if args.law == "generic" or (args.law == "both" and plugin):  # a preset on the generic law already needs no variant
        chips.append(generic_law(args.chip))
    for chip in chips:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            load = os.getloadavg()
            steps = make_steps(chip, t_max_s, args.resample_every)
            report(measure(steps, args.repeats), threads, chip.name, load)
            programming(chip, t_max_s, args.repeats)
        if args.profile:
            torch.set_num_threads(1)
            print(f"\n=== profiles, chip {chip.name!r}")
            profile(make_steps(chip, t_max_s, args.resample_every), args.rows)


if __name__ == "__main__":
    main()
