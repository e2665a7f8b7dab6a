"""torch.compile of converted models: no graph breaks caused by cimflow, compiled outputs
equal eager ones (read noise off) or match their moments (read noise on), programming
outside the compiled graph, and every tensor state of the engine a registered buffer."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch._dynamo
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.physics.hashing import counter_normal, stream_key
from cimflow.sim import CIMConv, CIMLinear, cim_layers, fused_read

_QUIET = {"arrays.pcm.device.read_noise": 0.0}


def _mlp(first: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(first, 32), nn.ReLU(), nn.Linear(32, 10))


def _lenet() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 10),
    )


def _breaks(model: nn.Module, x: torch.Tensor) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    return explained.graph_break_count, [str(b.reason).splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize(("build", "shape"), [(_mlp, (8, 64)), (lambda: _mlp(300), (8, 300)), (_lenet, (4, 1, 14, 14))],
                         ids=["mlp", "mlp-two-read-groups", "lenet"])
def test_converted_models_trace_without_graph_breaks(build, shape, grad):
    model = cimflow.program(cimflow.convert(build(), "pcm-hermes-like"), 0)
    x = torch.randn(shape)
    with torch.set_grad_enabled(grad):
        count, reasons = _breaks(model, x)
    assert count == 0, reasons


def _outputs(model: nn.Module, x: torch.Tensor, repeats: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(x) for _ in range(repeats)])


@pytest.mark.parametrize(("build", "shape"), [(lambda: _mlp(300), (16, 300)), (_lenet, (4, 1, 14, 14))], ids=["mlp", "lenet"])
def test_compiled_equals_eager_without_read_noise(build, shape):
    model = cimflow.program(cimflow.convert(build(), chip_with("pcm-hermes-like", **_QUIET)), 3)
    x = torch.randn(shape)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager, comp = _outputs(model, x, 1)[0], _outputs(compiled, x, 1)[0]
    assert torch.allclose(comp, eager, rtol=1e-5, atol=1e-5 * float(eager.abs().max()))


@pytest.mark.skipif(not fused_read.available(), reason="numba is not importable")
@pytest.mark.parametrize(("build", "shape"), [(lambda: _mlp(300), (16, 300)), (_lenet, (4, 1, 14, 14))], ids=["mlp", "lenet"])
def test_compiled_cpu_read_is_the_eager_read(build, shape):
    """On a CPU where the fused read runs, a compiled model reads through one opaque op per
    layer (cimflow::crossbar_read, a convolution's cimflow::conv_read): the eager forward's
    reads and draws, bit for bit, with the read noise on."""
    model = cimflow.program(cimflow.convert(build(), "pcm-hermes-like"), 3)
    x = torch.randn(shape)
    eager = _outputs(model, x, 2)
    cimflow.program(model, 3)  # the draw counters restart
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.equal(_outputs(compiled, x, 2), eager)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-op", "traced"])
def test_compiled_read_noise_matches_eager_moments_and_is_seeded(monkeypatch, fused):
    """The compiled read's noise, whether it runs the fused read as one op or traces the read
    (where the fused read does not run: then torch operations with the counter-based stream
    of physics.hashing), against the eager read's moments."""
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1" if fused else "0")
    torch._dynamo.reset()
    model = cimflow.program(cimflow.convert(nn.Sequential(nn.Linear(64, 8)), "pcm-hermes-like"), 7)
    x = torch.randn(4, 64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager = _outputs(model, x, 400)
    cimflow.program(model, 7)  # the draw counter restarts (eager's fused read advances it too)
    comp = _outputs(compiled, x, 400)
    spread = eager.std(dim=0)  # some outputs may sit inside one ADC step: spread 0, in both
    assert (comp.std(dim=0) > 0).float().mean() > 0.8  # noisy reads, not one value repeated
    # same mean per output (within 5 standard errors of the difference, plus one ADC rounding)
    step = float(eager.abs().max()) / 127
    assert ((comp.mean(dim=0) - eager.mean(dim=0)).abs() <= 5 * spread * (2 / 400) ** 0.5 + step / 10).all()
    # the same spread (the ADC's rounding makes single outputs' spreads coarse: compare the
    # mean over outputs and the median ratio)
    assert 0.9 < float(comp.std(dim=0).mean() / spread.mean()) < 1.1
    live = spread > 0.2 * spread.mean()
    assert 0.9 < float((comp.std(dim=0)[live] / spread[live]).median()) < 1.1
    # the compiled stream restarts with programming: same seed, same reads
    cimflow.program(model, 7)
    again = _outputs(compiled, x, 3)
    assert torch.equal(again, comp[:3])


def test_counter_normal_is_standard_normal_and_seeded():
    counter = torch.zeros((), dtype=torch.int32)
    key = stream_key(3, "layer", "read", "counter")
    a = counter_normal(counter, key, (200, 500))
    assert a.shape == (200, 500) and a.dtype == torch.float32
    assert abs(float(a.mean())) < 0.01 and abs(float(a.std()) - 1) < 0.01
    assert abs(float((a.abs() < 1).float().mean()) - 0.6827) < 0.005  # Gaussian, not just unit variance
    assert torch.equal(a, counter_normal(counter, key, (200, 500)))  # same (key, counter): same draw
    b = counter_normal(counter + 1, key, (200, 500))
    c = counter_normal(counter, stream_key(4, "layer", "read", "counter"), (200, 500))
    for other in (b, c):  # another draw number or seed: an independent draw
        assert abs(float(torch.corrcoef(torch.stack([a.flatten(), other.flatten()]))[0, 1])) < 0.01


def test_compiled_model_reprograms_only_when_asked():
    model = cimflow.program(cimflow.convert(_mlp(), chip_with("pcm-hermes-like", **_QUIET)), 0)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(8, 64)
    before = _outputs(compiled, x, 1)[0]
    with torch.no_grad():
        model[0].weight.mul_(-1.0)
    stale = _outputs(compiled, x, 1)[0]
    assert torch.equal(stale, before)  # programming is never part of the compiled graph
    assert all(layer.refresh() for layer in (model[0],)) and not model[2].refresh()
    fresh = _outputs(compiled, x, 1)[0]
    assert not torch.allclose(fresh, before)
    assert torch.allclose(fresh, _outputs(model, x, 1)[0], rtol=1e-5, atol=1e-6)


def test_eager_forward_still_reprograms_after_a_weight_change():
    model = cimflow.program(cimflow.convert(_mlp(), chip_with("pcm-hermes-like", **_QUIET)), 0)
    x = torch.randn(8, 64)
    before = _outputs(model, x, 1)[0]
    with torch.no_grad():
        model[0].weight.mul_(-1.0)
    after = _outputs(model, x, 1)[0]
    assert not torch.allclose(after, before)
    assert model[0].engine._weight_version == model[0].weight._version


def _tensor_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a module tree holds: buffers, parameters and plain attributes."""
    found: dict[str, torch.Tensor] = {}
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, torch.Tensor):
                found[f"{name}.{key}"] = value
        for key, value in list(sub._buffers.items()) + list(sub._parameters.items()):
            if value is not None:
                found[f"{name}.{key}"] = value
    return found


@pytest.mark.parametrize("chip", ["pcm-hermes-like", "rram-analog-generic", "sram-digital-22nm"])
def test_to_float64_leaves_no_float32_state(chip):
    model = cimflow.convert(_lenet(), chip)
    keys = set(model.state_dict())
    cimflow.program(model, 0)
    for _, layer in cim_layers(model):
        layer.engine.set_compensation("per_column") if not layer.engine.is_digital else None
    x = torch.randn(2, 1, 14, 14)
    with torch.no_grad():
        ref = model(x)
    dbl = model.to(torch.float64)
    state = _tensor_state(dbl)
    left = sorted(k for k, v in state.items() if v.dtype in (torch.float32, torch.float16))
    assert left == []
    if chip == "pcm-hermes-like":
        assert any(k.endswith("engine.significance") for k in state)  # the slice significances moved too
    with torch.no_grad():
        out = dbl(x.double())
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))
    assert set(dbl.state_dict()) == keys  # the user's weights keep their keys; engine state stays out
    assert all(isinstance(m, (CIMConv, CIMLinear)) for _, m in cim_layers(dbl))


@pytest.mark.slow
def test_inductor_compiles_the_mlp_and_matches_eager():
    model = cimflow.program(cimflow.convert(_mlp(), chip_with("pcm-hermes-like", **_QUIET)), 0)
    x = torch.randn(8, 64)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, fullgraph=True)
        out = _outputs(compiled, x, 2)
    except Exception as exc:  # noqa: BLE001 - no C++ compiler here: the graph itself still compiles without one
        warnings.warn(f"inductor could not build on this machine ({type(exc).__name__}); checked with aot_eager", stacklevel=1)
        torch._dynamo.reset()
        out = _outputs(torch.compile(model, backend="aot_eager", fullgraph=True), x, 2)
    eager = _outputs(model, x, 1)[0]
    assert torch.allclose(out[1], eager, rtol=1e-4, atol=1e-4 * float(eager.abs().max()))
