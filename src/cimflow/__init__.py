"""cimflow: compile PyTorch models onto compute-in-memory chips, simulate their accuracy
with the chip's non-idealities and estimate their cost, from one hardware description."""

from cimflow.api import calibrate, compensate, compile, convert, drift, load_chip, partition_by_sensitivity, program, simulate
from cimflow.compile.plan import Plan
from cimflow.errors import CimflowError

__version__ = "0.1.0"

from cimflow import train  # noqa: E402  (hardware-aware training: cimflow.train.hwa_finetune)

__all__ = [
    "CimflowError", "Plan", "__version__", "calibrate", "compensate", "compile", "convert", "drift", "load_chip",
    "partition_by_sensitivity", "program", "simulate", "train",
]
