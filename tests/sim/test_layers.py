"""CIM layers against PyTorch: exact on the ideal chip, bounded error with ADC only,
encodings, active-row limits, seeds, and ordinary-parameter behaviour."""

from __future__ import annotations

import io
import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.errors import MappingError, SimulationError
from cimflow.sim import CIMConv, CIMLinear, cim_layers


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 300), nn.ReLU(), nn.Linear(300, 10),
    )


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Linear(300, 70), (9, 300)),
        (lambda: nn.Linear(20, 600, bias=False), (4, 3, 20)),
        (lambda: nn.Conv2d(3, 5, 3, padding=1), (2, 3, 9, 9)),
        (lambda: nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), padding="valid"), (2, 4, 11, 10)),
        (lambda: nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect"), (2, 2, 7, 7)),
        (lambda: nn.Conv1d(4, 7, 5, stride=2, padding=2), (3, 4, 30)),
        (lambda: nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 10)), (16, 64)),
        (_small_cnn, (4, 3, 16, 16)),
    ],
)
def test_ideal_chip_matches_pytorch(make, shape):
    torch.manual_seed(0)
    model = make()
    model = nn.Sequential(model) if isinstance(model, (nn.Linear, nn.Conv1d, nn.Conv2d)) else model
    x = torch.randn(shape)
    ref = model(x)
    cim = cimflow.program(cimflow.convert(model, "ideal"), seed=0)
    assert len(cim_layers(cim)) >= 1
    assert _rel_err(cim(x), ref) < 2e-5


def test_digital_cim_is_exact_integer_arithmetic():
    torch.manual_seed(1)
    lin = nn.Linear(50, 20)
    chip = chip_with("ideal", **{"arrays.digital.weight_bits": 4, "arrays.digital.input_encoding.bits": 4})
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip, overrides={nn.Linear: "digital"}), 0)
    x = torch.randn(8, 50)
    # hand computation: symmetric 4-bit weights per column, 4-bit inputs per vector
    w = lin.weight.detach().t()
    sw = w.abs().amax(0)
    wq = torch.round(w / sw * 7) / 7
    sx = x.abs().amax(1, keepdim=True)
    xq = torch.round(x / sx * 7) / 7
    expect = (xq @ wq) * sx * sw + lin.bias.detach()
    assert torch.allclose(cim(x), expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [3, 5, 8])
@pytest.mark.parametrize("rows", [64, 256])
def test_adc_error_within_analytic_bound(bits, rows):
    torch.manual_seed(bits)
    chip = chip_with("ideal", **{"arrays.analog.adc.bits": bits, "arrays.analog.rows": rows})
    lin = nn.Linear(300, 40)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip), 0)
    x = torch.randn(32, 300)
    err = (cim(x) - lin(x)).abs()
    eng = cim[0].engine
    # bound per output: sum over read groups of half an ADC step, scaled back to weight/input units
    half_step = eng.adc_range[0, :, 0, :] / (2 * ((1 << (bits - 1)) - 1))  # (G, out)
    bound = half_step.sum(0) * eng.w_scale * x.abs().amax(1, keepdim=True)
    assert eng.grid.read_groups == math.ceil(300 / rows)
    assert bool((err <= bound * (1 + 1e-4) + 1e-5).all())
    # and the bound is not vacuous: the error uses a good part of it
    assert float((err / bound).max()) > 0.2


@pytest.mark.parametrize(
    "changes",
    [
        {"arrays.analog.weight_encoding": {"scheme": "offset"}, "arrays.analog.device.levels": 16777215},
        {"arrays.analog.weight_encoding": {"scheme": "bit_sliced", "slices": 3}, "arrays.analog.device.levels": 256},
        {"arrays.analog.input_encoding": {"scheme": "bit_serial", "bits": 13, "bits_per_pulse": 4}},
        {"arrays.analog.input_encoding": {"scheme": "bit_serial", "bits": 9, "bits_per_pulse": 1}},
        {"arrays.analog.max_active_rows": 16},
        {"arrays.analog.max_active_rows": 48, "arrays.analog.rows": 100},
        {"arrays.analog.weight_scaling": "per_layer"},
    ],
)
def test_encodings_and_read_groups_are_exact_without_noise(changes):
    """Every encoding / input scheme / row-group layout computes the matmul when the
    converters and cells are precise enough; the quantization they imply is the only error."""
    torch.manual_seed(2)
    chip = chip_with("ideal", **changes)
    lin = nn.Linear(230, 33)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip), 0)
    x = torch.randn(10, 230)
    spec = chip.arrays["analog"]
    in_bits = spec.input_encoding.bits
    w_levels = spec.device.n_levels ** spec.weight_encoding.slices
    # tolerance from the implied input and weight quantization (relative half steps), summed over 230 terms
    tol = 230 * (0.5 / ((1 << (in_bits - 1)) - 1) + 1.0 / (w_levels - 1)) + 1e-4
    y, ref = cim(x), lin(x)
    scale = (x.abs().amax(1, keepdim=True) * lin.weight.abs().amax(1)).max()
    assert float((y - ref).abs().max() / scale) < tol
    if spec.max_active_rows:
        eng = cim[0].engine
        assert eng.grid.group_rows == spec.max_active_rows
        assert sum(eng.grid.group_sizes()) == 230
        assert max(eng.grid.group_sizes()) <= spec.max_active_rows


def test_active_row_limit_splits_reads():
    chip = chip_with("ideal", **{"arrays.analog.rows": 100, "arrays.analog.max_active_rows": 48})
    cim = cimflow.convert(nn.Sequential(nn.Linear(230, 5)), chip)
    grid = cim[0].engine.grid
    # tiles of 100 rows: 100 -> 48 + 48 + 4, 100 -> 48 + 48 + 4, 30 -> 30
    assert grid.group_sizes() == [48, 48, 4, 48, 48, 4, 30]
    assert grid.row_tiles == 3


def test_same_seed_bit_identical_other_seed_differs():
    chip = chip_with("ideal", **{
        "arrays.analog.device.programming_noise": {"coefficients": [0.03]},
        "arrays.analog.device.read_noise": 0.02,
        "arrays.analog.adc.bits": 8,
    })
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    x = torch.randn(6, 40)
    outs = []
    for seed in (7, 7, 8):
        cim = cimflow.program(cimflow.convert(model, chip), seed=seed)
        outs.append(torch.stack([cim(x), cim(x)]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    assert not torch.equal(outs[0][0], outs[0][1])  # read noise differs between reads


def test_parameters_stay_ordinary(tmp_path):
    torch.manual_seed(4)
    model = _small_cnn()
    cim = cimflow.program(cimflow.convert(model, "ideal"), 0)
    assert list(cim.state_dict()) == list(model.state_dict())
    assert all(isinstance(p, nn.Parameter) for p in cim.parameters())
    buf = io.BytesIO()
    torch.save(cim.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = cimflow.convert(_small_cnn(), "ideal")
    fresh.load_state_dict(state)
    cimflow.program(fresh, 0)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(fresh(x), model(x), rtol=1e-4, atol=1e-5)
    # .to(dtype/device) moves the programmed state along
    dbl = cim.to(torch.float64)
    assert dbl(x.double()).dtype == torch.float64
    assert torch.allclose(dbl(x.double()).float(), model(x), rtol=1e-4, atol=1e-5)


def test_optimizer_step_reaches_weights_and_reprograms():
    torch.manual_seed(5)
    chip = chip_with("ideal", **{"arrays.analog.adc.bits": 6, "arrays.analog.input_encoding.bits": 6})
    cim = cimflow.program(cimflow.convert(nn.Sequential(nn.Linear(20, 4)), chip), 0)
    x, target = torch.randn(16, 20), torch.randn(16, 4)
    before = cim(x).detach()
    opt = torch.optim.SGD(cim.parameters(), lr=0.5)
    loss = nn.functional.mse_loss(cim(x), target)
    loss.backward()
    grad = cim[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    opt.step()
    after = cim(x).detach()
    assert not torch.allclose(before, after)
    assert nn.functional.mse_loss(after, target) < loss


def test_unsupported_layers_are_refused_or_listed():
    model = nn.Sequential(nn.Linear(8, 8), nn.Conv3d(1, 2, 3), nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(MappingError, match=r"1 \(Conv3d.*2 \(grouped convolution"):
        cimflow.convert(model, "ideal")
    with pytest.warns(UserWarning, match="host"):
        cim = cimflow.convert(model, "ideal", allow_host=True)
    assert set(cim._cimflow_report.host) == {"1", "2"}
    assert isinstance(cim[0], CIMLinear) and isinstance(cim[1], nn.Conv3d)


def test_overrides_by_name_type_glob_and_chip():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    cim = cimflow.convert(model, "ideal", overrides={nn.Linear: "digital", "3": "host", "re:0": "analog"})
    assert isinstance(cim[0], CIMConv) and cim[0].array_kind == "analog"
    assert isinstance(cim[2], CIMLinear) and cim[2].array_kind == "digital"
    assert type(cim[3]) is nn.Linear
    with pytest.raises(MappingError, match="not 'host', 'digital'"):
        cimflow.convert(model, "ideal", overrides={"2": "no-such-thing"})


def test_forward_before_program_is_a_clear_error():
    cim = cimflow.convert(nn.Sequential(nn.Linear(3, 3)), "ideal")
    with pytest.raises(SimulationError, match="program"):
        cim(torch.randn(1, 3))
    with pytest.raises(SimulationError, match="convert"):
        cimflow.program(nn.Sequential(nn.Linear(3, 3)))


@pytest.mark.parametrize("rows", [64, 512])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_inference_fast_path_equals_general_path(rows, mode):
    """The no-grad fast path (integer DAC codes, batched read groups) gives the general
    path's outputs: same noise draws, same ADC codes (a rare code may flip at a rounding
    boundary because the two paths round in different units). In ``fast`` mode on a CPU
    with matrix units the noise's standard deviation differs by up to ~0.2 % (bfloat16
    variance), so a few more codes flip; a flip is one ADC step of one layer, which the
    next layer can carry: the bound on the largest difference is wider there."""
    chip = chip_with("pcm-hermes-like", **{"arrays.pcm.rows": rows})
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(300, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(128, 300)
    cim = cimflow.convert(model, chip)
    for _, layer in cim_layers(cim):
        layer.engine.set_read_noise_mode(mode)
    cim = cimflow.drift(cimflow.program(cim, 0), "1d")
    general = cim(x).detach()  # parameters require grad: the general path
    cimflow.drift(cimflow.program(cim, 0), "1d")
    with torch.no_grad():
        fast = cim(x)
    assert cim[0].engine.grid.read_groups == math.ceil(300 / rows)
    scale = float(general.abs().max())
    differ = (fast - general).abs() > 1e-4 * scale
    assert float(differ.float().mean()) < 0.01
    assert float((fast - general).abs().max()) < (0.05 if mode == "exact" else 0.1) * scale


def test_convolution_column_path_equals_general_path():
    """Inference convolutions read im2col columns channel-first with each patch's range from
    a max-pool; outputs match the general path up to noise-sample order: the noiseless part
    exactly, the noise in distribution."""
    chip = chip_with("pcm-hermes-like", **{"arrays.pcm.device.read_noise": 0.0})
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(4, 3, 17, 17)
    cim = cimflow.program(cimflow.convert(model, chip), 0)
    general = cim(x).detach()
    with torch.no_grad():
        fast = cim(x)
    scale = float(general.abs().max())
    assert float(((fast - general).abs() > 1e-4 * scale).float().mean()) < 0.01
    assert float((fast - general).abs().max()) < 0.05 * scale


def test_convolution_read_in_batch_chunks_equals_one_read(monkeypatch):
    """An inference convolution reads its batch in chunks of columns (layers.COLUMN_CHUNK_BYTES):
    without read noise every output equals the one-read output; with it, the noise keeps its
    mean and variance (the chunks draw in turn from the same generator)."""
    from cimflow.sim import layers

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1))
    x = torch.randn(37, 2, 12, 12)  # 37 images: chunks of 5 and a ragged last chunk of 2
    per_image = 2 * 3 * 3 * 12 * 12 * 4
    quiet = cimflow.program(cimflow.convert(model, chip_with("pcm-hermes-like", **{"arrays.pcm.device.read_noise": 0.0})), 0)
    noisy = cimflow.program(cimflow.convert(model, "pcm-hermes-like"), 0)
    outs = {}
    for chunk in (1 << 40, 5 * per_image):
        monkeypatch.setattr(layers, "COLUMN_CHUNK_BYTES", chunk)
        with torch.no_grad():
            outs[chunk] = (quiet(x), torch.stack([noisy(x) for _ in range(6)]))
    (q_one, n_one), (q_chunk, n_chunk) = outs[1 << 40], outs[5 * per_image]
    assert torch.equal(q_one, q_chunk)
    d_one, d_chunk = n_one - q_one, n_chunk - q_chunk  # read noise (through the ADC) per output
    count = d_one.numel()
    var = float(d_one.var())
    assert var > 0
    assert abs(float(d_chunk.mean()) - float(d_one.mean())) < 5 * math.sqrt(2 * var / count)
    assert abs(float(d_chunk.var()) / var - 1) < 5 * math.sqrt(4 / count)
