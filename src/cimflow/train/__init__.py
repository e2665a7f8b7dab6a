"""Hardware-aware training, calibration and drift compensation.

- :func:`hwa_finetune`: fine-tune a model with the chip's own noise in the loop (a fresh
  chip instance per step, random time after programming, weight clipping, optional learned
  DAC input ranges); :func:`plain_finetune` is the same loop without the chip.
- :func:`eapu_train`: on-chip learning with error-aware probabilistic updates (EaPU):
  weight updates applied as stochastic programming pulses, with their write energy.
- :func:`accuracy_over_time`: a model's metric over chip instances and times after
  programming, with and without drift compensation (``cimflow simulate``).

The calibration and compensation verbs are in :mod:`cimflow.api`: ``cimflow.calibrate``
(input and percentile ADC ranges, embedding tables included), ``cimflow.compensate``
(drift compensation from a reference read) and ``cimflow.program(..., verify_iterations=N)``
(program-and-verify, with write pulses counted per layer).
"""

from cimflow.train.clip import clip_bounds, clip_weights
from cimflow.train.data import TrainData, as_batches
from cimflow.train.eapu import EaPUResult, eapu_train
from cimflow.train.hwa import (
    HWAResult,
    enable_learned_input_ranges,
    hwa_finetune,
    initial_input_ranges,
    learned_input_ranges,
    plain_finetune,
)
from cimflow.train.noise import keep_programmed, sample_instance, step_seed, time_at
from cimflow.train.over_time import OverTimeResult, accuracy_over_time

__all__ = [
    "EaPUResult", "HWAResult", "OverTimeResult", "TrainData", "accuracy_over_time", "as_batches", "clip_bounds", "clip_weights",
    "eapu_train", "enable_learned_input_ranges", "hwa_finetune", "initial_input_ranges", "keep_programmed", "learned_input_ranges",
    "plain_finetune", "sample_instance", "step_seed", "time_at",
]
