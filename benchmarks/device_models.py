"""Cost of the device plug-ins: programming and ageing one 1024 x 1024 weight side per model.

Times ``array_state.program_cells`` (program + state draws) and ``drifted`` (conductances at
one day) for each device model on the same targets, and, as the plain-PyTorch reference
measured in the same run, one ``torch.randn`` of the same shape plus an add (what the simplest
noisy programming costs). Prints min / median / max over repeats, the ratio of the medians to
the reference and the load average. Run: ``.venv/bin/python benchmarks/device_models.py``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from cimflow.chip.devices import parse_device
from cimflow.sim.array_state import drifted, program_cells

SHAPE = (1, 1024, 1024)
G_MAX = 1e-5
REPEATS = 7
DEVICES = {
    "generic": {"technology": "rram", "g_min": 0.0, "g_max": G_MAX, "levels": 16,
                "programming_noise": {"coefficients": [0.01, 0.02]}, "drift": {"nu_mean": 0.05, "nu_std": 0.01}},
    "pcm": {"model": "pcm", "technology": "pcm", "g_min": 0.0, "g_max": G_MAX, "levels": 256,
            "programming_noise": {"coefficients": [0.01, 0.02]}},
    "rram": {"model": "rram", "technology": "rram", "g_min": 0.0, "g_max": G_MAX, "levels": 16,
             "programming_noise": {"coefficients": [0.01, 0.02]}},
    "nor_flash": {"model": "nor_flash", "technology": "nor_flash", "g_min": 0.0, "g_max": G_MAX, "levels": 16},
    "mram": {"model": "mram", "technology": "mram", "g_min": 0.0, "g_max": G_MAX, "levels": 2},
    "fefet": {"model": "fefet", "technology": "fefet", "g_min": 0.0, "g_max": G_MAX, "levels": 8,
              "programming_noise": {"coefficients": [0.01]}},
    "charge_sram": {"model": "charge_sram", "technology": "sram", "g_min": 0.0, "g_max": G_MAX, "levels": 2},
}


def timed(fn: Callable[[], object]) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    torch.set_num_threads(1)
    target = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) * G_MAX
    gen = torch.Generator().manual_seed(1)
    plain = timed(lambda: target + 0.01 * G_MAX * torch.randn(SHAPE, generator=gen))
    ref = statistics.median(plain)
    print(f"load average {os.getloadavg()}; 1 thread; {REPEATS} repeats; shape {SHAPE}")
    print(f"{'plain torch randn+add':24s} {min(plain) * 1e3:7.2f} {ref * 1e3:7.2f} {max(plain) * 1e3:7.2f} ms  x1.0")
    for name, fields in DEVICES.items():
        device = parse_device(fields)
        if isinstance(device, dict):  # the generic form comes back as a mapping for the field to validate
            from cimflow.chip.spec import Device

            device = Device.model_validate(device)
        prog = timed(lambda d=device: program_cells(target, d, 0, "bench", "pos"))
        g, state, _, _ = program_cells(target, device, 0, "bench", "pos")
        age = timed(lambda g=g, state=state, d=device: drifted(g, state, 86_400.0, d))
        for what, times in (("program", prog), ("age to 1 day", age)):
            med = statistics.median(times)
            print(f"{name + ' ' + what:24s} {min(times) * 1e3:7.2f} {med * 1e3:7.2f} {max(times) * 1e3:7.2f} ms  x{med / ref:.1f}")


if __name__ == "__main__":
    main()
