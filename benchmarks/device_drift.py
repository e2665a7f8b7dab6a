"""Fidelity of the PCM device model: weight error after drift and global compensation.

Programs one 256x256 weight matrix (differential, G+ / G- = |w| / w_max x g_max) on the
``pcm-hermes-like`` preset's device, once with its PCM plug-in (conductance-dependent drift
exponent and accumulated 1/f noise, HERMES 2-device fits) and once with the flat generic
device it replaced (one exponent N(0.056, 0.009), no accumulated 1/f noise), ages it
t_inference after t0 (the aihwkit convention t = t_inference + t0), applies global drift
compensation (the reference read: sum of all cell currents at t0 over now) and prints the
error of the read-back weights as % of w_max: robust sigma (1.4826 x median |err|) over all
cells, and the mean |err| and mean signed error (err x sign(w): > 0 is over-compensated) of the
high-conductance cells (|w| >= 0.8 w_max). Run:
``.venv/bin/python benchmarks/device_drift.py``. No timing: a fidelity check.
"""

from __future__ import annotations

import os

import torch

from cimflow.chip import load_preset
from cimflow.chip.spec import Device
from cimflow.sim.array_state import drifted, program_cells

DAY, YEAR = 86_400.0, 3.15e7


def readback_errors(device: Device, weights: torch.Tensor, t_inference: float, seed: int) -> tuple[float, float, float]:
    w_max = float(weights.abs().max())
    x = weights / w_max
    pos, neg = (x.clamp_min(0) * device.g_max), ((-x).clamp_min(0) * device.g_max)
    gp, sp, _, _ = program_cells(pos, device, seed, "bench", "pos")
    gn, sn, _, _ = program_cells(neg, device, seed, "bench", "neg")
    t0 = device.drift.t0_s
    t = t0 + t_inference
    gp_t, gn_t = drifted(gp, sp, t, device), drifted(gn, sn, t, device)
    factor = float((gp + gn).sum() / (gp_t + gn_t).sum())
    w_hat = (gp_t - gn_t) * factor / device.g_max
    err = (w_hat - x) * 100.0
    robust = 1.4826 * float(err.abs().median())
    high = x.abs() >= 0.8
    return robust, float(err[high].abs().mean()), float((err * x.sign())[high].mean())


def main() -> None:
    pcm = load_preset("pcm-hermes-like").arrays["pcm"].device
    flat = Device.model_validate({**{k: v for k, v in pcm.model_dump().items() if k in Device.model_fields},
                                  "model": "generic", "drift": {"nu_mean": 0.056, "nu_std": 0.009, "t0_s": 300.0}})
    print(f"load average: {os.getloadavg()}")
    for name, weights in (("normal", torch.randn(256, 256, generator=torch.Generator().manual_seed(0))),
                          ("uniform", torch.rand(256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1)):
        for label, t in (("t0", 0.0), ("1 day", DAY), ("1 year", YEAR)):
            for device_name, device in (("pcm plug-in", pcm), ("flat generic", flat)):
                robust, high_abs, high_mean = readback_errors(device, weights, t, seed=1)
                print(f"{name:8s} {label:7s} {device_name:13s} robust sigma {robust:5.2f} %  "
                      f"high-G cells mean|err| {high_abs:5.2f} %  mean of err x sign(w) {high_mean:+6.2f} % of w_max")


if __name__ == "__main__":
    main()
