"""Model files are data: crafted .pt2 archives that would run code are refused (and their code
never runs), readers are bounded, and .pt2/ONNX models work in compile, estimate and simulate."""

from __future__ import annotations

import builtins
import io
import json
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from cimflow.api import compile as compile_model
from cimflow.api import simulate
from cimflow.compile.capture import CaptureFallbackWarning, capture, load_model_file
from cimflow.compile.pt2_archive import UnsafeModelFileError
from cimflow.cost import estimate
from cimflow.errors import CimflowError, CompileError
from cimflow.sim import gather_stats
from cimflow.train.over_time import accuracy_over_time

CHIP = "hybrid-rram-sram-28nm"


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Marker:
    """Unpickling this opens (creates) the marker file: the stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (builtins.open, (self.path, "w"))


def pickled_marker(path: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Marker(path), buffer)
    return buffer.getvalue()


def export_small(path: Path, dynamic: bool = False) -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = Small().eval()
    example = (torch.randn(2, 3, 6, 6),)
    shapes = ({0: torch.export.Dim("batch", min=2, max=64)},) if dynamic else None
    torch.export.save(torch.export.export(model, example, dynamic_shapes=shapes), str(path))
    return model, example


def rewrite(source: Path, target: Path, edit: Callable[[str, bytes], bytes | None],
            extra: dict[str, bytes] | None = None, compression: int = zipfile.ZIP_STORED) -> None:
    """Copy a zip entry by entry; ``edit(relative name, data)`` returns new bytes (None drops it)."""
    with zipfile.ZipFile(source) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(target, "w", compression=compression) as out:
        for name, data in entries:
            changed = edit(name.split("/", 1)[1], data)
            if changed is not None:
                out.writestr(name, changed)
        for relative, data in (extra or {}).items():
            out.writestr(f"{root}/{relative}", data)


@pytest.fixture()
def small_pt2(tmp_path: Path) -> Path:
    path = tmp_path / "small.pt2"
    export_small(path)
    return path


def pickled_weight(marker: Path) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            config["config"]["fc.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/" + json_path_of("fc.weight"):
            return pickled_marker(marker)
        return data
    return edit


_PATHS: dict[str, str] = {}


def json_path_of(fqn: str) -> str:
    return _PATHS[fqn]


def remember_paths(pt2: Path) -> None:
    with zipfile.ZipFile(pt2) as archive:
        name = next(n for n in archive.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(archive.read(name))["config"]
    _PATHS.update({fqn: payload["path_name"] for fqn, payload in config.items()})


# ------------------------------------------------------------------------------ refusals


def test_pickled_weight_is_refused_and_its_code_never_runs(small_pt2: Path, tmp_path: Path) -> None:
    remember_paths(small_pt2)
    marker = tmp_path / "pwned_weight"
    evil = tmp_path / "evil.pt2"
    rewrite(small_pt2, evil, pickled_weight(marker))
    with pytest.raises(UnsafeModelFileError, match="pickled object") as refused:
        load_model_file(evil)
    assert "--trust-model-file" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()
    # The payload is real: trusting the file lets torch unpickle it, which runs the code.
    with pytest.raises(CompileError):
        load_model_file(evil, trust=True)
    assert marker.exists()


def test_example_inputs_needing_full_unpickling_are_refused(small_pt2: Path, tmp_path: Path) -> None:
    """torch reads stored example inputs with weights_only=True and falls back to full unpickling."""
    marker = tmp_path / "pwned_inputs"
    evil = tmp_path / "evil_inputs.pt2"
    rewrite(small_pt2, evil, lambda name, data: pickled_marker(marker)
            if name.startswith("data/sample_inputs/") else data)
    with pytest.raises(UnsafeModelFileError, match="weights_only=True"):
        load_model_file(evil)
    assert not marker.exists()
    with pytest.raises(CompileError):
        load_model_file(evil, trust=True)
    assert marker.exists()


@pytest.mark.parametrize("relative, why", [
    ("data/constants/opaque_obj_0", "pickled Python"),
    ("data/constants/custom_obj_0", "pickled Python"),
    ("data/aotinductor/model/model.so", "AOTInductor"),
    ("data/weights/model.pt", "legacy pickled"),
    ("payload.py", "not part of a plain torch.export archive"),
])
def test_entries_torch_would_unpickle_or_load_as_code_are_refused(
        small_pt2: Path, tmp_path: Path, relative: str, why: str) -> None:
    evil = tmp_path / "extra_entry.pt2"
    rewrite(small_pt2, evil, lambda name, data: data, extra={relative: b"\x80\x04N."})
    with pytest.raises(UnsafeModelFileError, match=why):
        load_model_file(evil)


def test_shape_expressions_that_sympy_would_eval_are_refused(tmp_path: Path) -> None:
    dynamic = tmp_path / "dynamic.pt2"
    model, example = export_small(dynamic, dynamic=True)
    loaded, _ = load_model_file(dynamic)  # a real symbolic expression passes the check
    assert torch.allclose(loaded(*example), model(*example), atol=1e-6)
    marker = tmp_path / "pwned_sympy"
    payload = f"__import__('os').system('touch {marker}')"

    def edit(name: str, data: bytes) -> bytes:
        if name.startswith("models/"):
            text = data.decode()
            start = text.index('"expr_str": "') + len('"expr_str": "')
            end = text.index('"', start)
            return (text[:start] + payload.replace("'", "\\u0027") + text[end:]).encode()
        return data

    evil = tmp_path / "evil_sympy.pt2"
    rewrite(dynamic, evil, edit)
    with pytest.raises(UnsafeModelFileError, match="shape expression"):
        load_model_file(evil)
    assert not marker.exists()


def test_graph_calls_outside_aten_are_refused(small_pt2: Path, tmp_path: Path) -> None:
    def edit(name: str, data: bytes) -> bytes:
        if name.startswith("models/"):
            return data.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"')
        return data

    evil = tmp_path / "evil_target.pt2"
    rewrite(small_pt2, evil, edit)
    with pytest.raises(UnsafeModelFileError, match="torch.os.system"):
        load_model_file(evil)


def test_compressed_entries_are_refused_before_inflating(small_pt2: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt2"
    rewrite(small_pt2, bomb, lambda name, data: data, extra={"extra/zeros": bytes(200 * 2**20)},
            compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2 * 2**20  # 200 MiB of zeros deflate to a few hundred KiB
    start = time.perf_counter()
    with pytest.raises(UnsafeModelFileError, match="compressed"):
        load_model_file(bomb)
    assert time.perf_counter() - start < 5.0


def test_files_over_the_size_limit_are_refused_unread(small_pt2: Path, tmp_path: Path) -> None:
    size = small_pt2.stat().st_size
    with pytest.raises(CompileError, match="at most"):
        load_model_file(small_pt2, max_bytes=size - 1)
    load_model_file(small_pt2, max_bytes=size)
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(CompileError, match="torch.export archive"):
        load_model_file(junk)


# ------------------------------------------------------------------------------ .pt2 in every verb


def test_pt2_compiles_estimates_and_simulates_like_its_source_model(small_pt2: Path) -> None:
    torch.manual_seed(0)
    source = Small().eval()
    module, inputs = load_model_file(small_pt2)
    assert dict(module.named_parameters()).keys() == dict(source.named_parameters()).keys()
    assert torch.allclose(module(*inputs), source(*inputs), atol=1e-6)
    plan = compile_model(module, CHIP, inputs)
    reference = compile_model(source, CHIP, inputs)
    assert plan.graph.capture_method == "export"
    assert plan.module_targets() == reference.module_targets() and set(plan.module_targets()) == {"conv", "fc"}
    assert plan.totals()["array_macs"] == reference.totals()["array_macs"] > 0
    chip_model = simulate(plan, module, seed=0)
    from cimflow.sim.convert import CIMConv, CIMLinear

    assert isinstance(chip_model.conv, CIMConv) and isinstance(chip_model.fc, CIMLinear)
    out = chip_model(*inputs)
    assert torch.isfinite(out).all() and out.shape == source(*inputs).shape
    stats = gather_stats(chip_model, [inputs])
    cost = estimate(plan, stats=stats)
    assert cost.energy_j > 0
    over = accuracy_over_time(module, CHIP, "1s", instances=1, example_inputs=inputs)
    assert 0.0 <= over.series[0]["points"][0]["mean"] < 1.0


def test_onnx_reader_is_bounded(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.5] * 12)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [weight])
    good = tmp_path / "good.onnx"
    onnx.save(helper.make_model(graph), str(good))
    module, inputs = load_model_file(good)
    assert tuple(module(*inputs).shape) == (2, 3)
    plan = compile_model(module, CHIP, inputs)  # ONNX works in every verb too
    assert len(plan.module_targets()) == 1
    chip_model = simulate(plan, module, seed=0)
    assert torch.isfinite(chip_model(torch.randn(2, 4))).all()
    assert estimate(plan, stats=gather_stats(chip_model, [inputs])).energy_j > 0
    with pytest.raises(CompileError, match="at most"):
        load_model_file(good, max_bytes=good.stat().st_size - 1)
    external = helper.make_model(graph)
    external.graph.initializer[0].data_location = TensorProto.EXTERNAL
    external.graph.initializer[0].ClearField("float_data")
    external.graph.initializer[0].external_data.add(key="location", value="../../etc/passwd")
    path = tmp_path / "external.onnx"
    path.write_bytes(external.SerializeToString())
    with pytest.raises(CompileError, match="external data"):
        load_model_file(path)
    huge = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**20, 2**20, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight]))
    path = tmp_path / "huge.onnx"
    onnx.save(huge, str(path))
    with pytest.raises(CompileError, match="elements"):
        load_model_file(path)


# ------------------------------------------------------------------------------ models users have


def test_a_bare_linear_compiles_estimates_and_simulates() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureFallbackWarning)  # traced by fx, no fallback
        plan = compile_model(layer, CHIP, (x,))
    assert set(plan.module_targets()) == {"linear"} and plan.model_name == "Linear"
    assert plan.graph.capture_method == "fx" and plan.op("linear").macs == 4 * 16 * 8
    chip_model = simulate(plan, layer, seed=0)
    out = chip_model(x)
    reference = layer(x)
    error = float(((out - reference).norm() / reference.norm()).detach())
    assert 0.0 < error < 0.5  # on the chip: close to, but not exactly, the float layer
    cost = estimate(plan, stats=gather_stats(chip_model, [(x,)]))
    assert cost.energy_j > 0
    over = accuracy_over_time(layer, CHIP, "1s,1d", instances=2, example_inputs=(x,))
    assert all(0.0 < p["mean"] < 1.0 for p in over.series[0]["points"])


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.j = nn.Linear(32, 8)
        self.k = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.k(h)
        return self.j(h)


def test_data_dependent_control_flow_falls_back_and_runs_every_verb() -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    positive = torch.rand(4, 16) + 0.1
    with pytest.warns(UserWarning, match="torch.fx could not trace the model .*control flow"):
        plan = compile_model(model, CHIP, (positive,))
    assert plan.graph.capture_method == "module_traversal"
    assert set(plan.module_targets()) == {"a", "j", "k"}  # j is not on this path, but placed
    assert plan.op("j").mvm_count == 0 and plan.op("k").mvm_count == 4
    assert any("not run on the example inputs' path" in w and "j" in w for w in plan.graph.warnings)
    chip_model = simulate(plan, model, seed=0)
    for x in (positive, -positive):  # both branches run on the chip
        out, reference = chip_model(x), model(x)
        assert float((out - reference).norm() / reference.norm()) < 0.5
    cost = estimate(plan, stats=gather_stats(chip_model, [(positive,)]))
    assert cost.energy_j > 0
    over = accuracy_over_time(model, CHIP, "1s", instances=1, example_inputs=(positive,))
    assert 0.0 < over.series[0]["points"][0]["mean"] < 1.0


def test_non_finite_inputs_and_outputs_are_refused_everywhere() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    bad = torch.randn(4, 16)
    bad[1, 3] = float("nan")
    for run in (lambda: capture(model, (bad,)), lambda: compile_model(model, CHIP, (bad,)),
                lambda: accuracy_over_time(model, CHIP, "1s", instances=1, example_inputs=(bad,))):
        with pytest.raises(CompileError, match="holds 1 NaN or infinite"):
            run()
    with pytest.raises(CompileError, match="shapes and dtypes"):
        accuracy_over_time(model, CHIP, "1s", instances=1, example_inputs=(torch.randn(4, 15),))
    broken = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    with torch.no_grad():
        broken[0].weight[0, 0] = float("inf")
    with pytest.raises(CompileError, match="output .* NaN or infinite"):
        accuracy_over_time(broken, CHIP, "1s", instances=1, example_inputs=(torch.randn(4, 16),))
    with pytest.raises(CimflowError, match="not finite"):
        accuracy_over_time(model, CHIP, "1s", instances=1, evaluate=lambda m: float("nan"))
