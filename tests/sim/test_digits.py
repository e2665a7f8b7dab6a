"""Real data: a small CNN trained here on scikit-learn's digits, simulated on chips."""

from __future__ import annotations

import itertools
import statistics

import pytest
import torch
from cimtest import chip_with

import cimflow
from cimflow.vision import accuracy, load_digits_data, small_cnn, train_classifier


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    data = load_digits_data(seed=0)
    model = train_classifier(small_cnn(channels=8, hidden=32), data, epochs=8, batch=64, seed=0)
    return model, data


def _mean_accuracy(model, chip, data, seeds=(0, 1, 2), t=None):
    cim = cimflow.convert(model, chip)
    accs = []
    for seed in seeds:
        cimflow.program(cim, seed)
        if t is not None:
            cimflow.drift(cim, t)
        accs.append(accuracy(cim, data.x_test, data.y_test))
    return statistics.fmean(accs)


def test_fp32_model_learns(trained):
    model, data = trained
    assert accuracy(model, data.x_test, data.y_test) > 0.9


def test_accuracy_falls_monotonically_as_programming_noise_grows(trained):
    model, data = trained
    sigmas = [0.0, 0.05, 0.1, 0.2, 0.4]
    accs = [
        _mean_accuracy(model, chip_with("ideal", **{"arrays.analog.device.programming_noise": {"coefficients": [s]},
                                                     "arrays.analog.adc.bits": 8}), data)
        for s in sigmas
    ]
    # 449 test images x 3 instances: one image is 0.07 %; allow a 1 % bump from instance sampling
    for hi, lo in itertools.pairwise(accs):
        assert lo <= hi + 0.01, accs
    assert accs[-1] < accs[0] - 0.2, accs


def test_pcm_hermes_like_keeps_90_percent_at_one_second(trained):
    model, data = trained
    fp32 = accuracy(model, data.x_test, data.y_test)
    on_chip = _mean_accuracy(model, "pcm-hermes-like", data, t="1s")
    print(f"digits CNN: fp32 {fp32:.4f}, pcm-hermes-like @1s {on_chip:.4f} ({100 * on_chip / fp32:.1f} %)")
    assert on_chip >= 0.9 * fp32


def test_calibration_sets_percentile_ranges_and_input_range(trained):
    model, data = trained
    chip = chip_with("ideal", **{"arrays.analog.adc": {"bits": 6, "range": "percentile", "percentile": 99.0},
                                 "arrays.analog.input_encoding": {"scheme": "dac", "bits": 8, "range": "calibrated"}})
    cim = cimflow.program(cimflow.convert(model, chip), 0)
    first = cim[0].engine
    before = first.adc_range.clone()
    cimflow.calibrate(cim, [data.x_train[:128], data.x_train[128:256]])
    assert first.input_range == pytest.approx(float(data.x_train[:256].abs().max()), rel=1e-6)
    # the 99th percentile of real partial sums is below the worst case the array could produce
    assert bool((first.adc_range <= before + 1e-6).all()) and bool((first.adc_range < before).any())
    assert accuracy(cim, data.x_test, data.y_test) > 0.85
