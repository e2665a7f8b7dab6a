"""Tests of cimflow.compile.onnx_import: ONNX file -> torch GraphModule -> Graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from cimflow.compile.capture import capture, load_model_file  # noqa: E402
from cimflow.compile.graph import OpKind  # noqa: E402
from cimflow.compile.onnx_import import SUPPORTED_ONNX_OPS  # noqa: E402
from cimflow.errors import CompileError  # noqa: E402

RNG = np.random.default_rng(7)


def floats(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def save(tmp_path: Path, nodes: list, inputs: list, outputs: list, inits: list,
         opset: int = 17, name: str = "model.onnx") -> Path:
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def reference(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ReferenceEvaluator(str(path)).run(None, feeds)


def cnn_and_embedding_file(tmp_path: Path) -> Path:
    """Conv/BN/ReLU/pools/Gemm on an image plus Gather/Reshape/Concat/MatMul/Softmax."""
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv1", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "dw"], ["c2"], name="conv2", kernel_shape=[3, 3],
                         pads=[0, 0, 1, 1], strides=[2, 2], group=2),  # asymmetric pads
        helper.make_node("BatchNormalization", ["c2", "s", "b", "m", "v"], ["bn"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="maxpool", kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("AveragePool", ["p"], ["ap"], name="avgpool", kernel_shape=[2, 2]),
        helper.make_node("GlobalAveragePool", ["ap"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Sigmoid", ["y"], ["ys"], name="sigmoid"),
        helper.make_node("Gather", ["table", "idx"], ["e"], name="lookup"),
        helper.make_node("Reshape", ["e", "shape"], ["er"], name="reshape"),
        helper.make_node("Tanh", ["er"], ["et"], name="tanh"),
        helper.make_node("Concat", ["ys", "et"], ["cat"], name="concat", axis=1),
        helper.make_node("MatMul", ["cat", "mw"], ["mm"], name="proj"),
        helper.make_node("Add", ["mm", "bias"], ["ab"], name="add"),
        helper.make_node("Mul", ["ab", "ab"], ["sq"], name="mul"),
        helper.make_node("Transpose", ["sq"], ["tr"], name="transpose", perm=[1, 0]),
        helper.make_node("Transpose", ["tr"], ["back"], name="transpose_back"),
        helper.make_node("Softmax", ["back"], ["out"], name="softmax", axis=-1),
    ]
    inits = [
        initializer("cw", 0.2 * floats(4, 3, 3, 3)), initializer("cb", floats(4)),
        initializer("dw", 0.2 * floats(6, 2, 3, 3)),
        initializer("s", floats(6) + 2), initializer("b", floats(6)),
        initializer("m", floats(6)), initializer("v", np.abs(floats(6)) + 0.5),
        initializer("gw", floats(5, 6)), initializer("gb", floats(5)),
        initializer("table", floats(10, 3)), initializer("shape", np.array([0, -1], np.int64)),
        initializer("mw", floats(11, 4)), initializer("bias", floats(4)),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10]),
              helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 2])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])]
    return save(tmp_path, nodes, inputs, outputs, inits)


def test_onnx_model_converts_to_an_equivalent_module(tmp_path: Path) -> None:
    path = cnn_and_embedding_file(tmp_path)
    module, example = load_model_file(path)
    assert [tuple(t.shape) for t in example] == [(1, 3, 10, 10), (1, 2)]
    x = RNG.normal(size=(3, 3, 10, 10)).astype(np.float32)
    idx = RNG.integers(0, 10, size=(3, 2)).astype(np.int64)
    expected = reference(path, {"x": x, "idx": idx})[0]
    with torch.no_grad():
        got = module(torch.from_numpy(x), torch.from_numpy(idx)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_onnx_graph_classification_and_sources(tmp_path: Path) -> None:
    path = cnn_and_embedding_file(tmp_path)
    module, example = load_model_file(path)
    graph = capture(module, example)
    assert graph.capture_method == "onnx"
    static = {op.name: op for op in graph.by_kind(OpKind.STATIC_MVM)}
    assert set(static) == {"conv1", "conv2", "fc", "lookup", "proj"}
    assert static["conv1"].weight_shape == (27, 4) and static["conv1"].mvm_count == 100
    assert static["conv2"].weight_shape == (18, 6)
    assert static["conv2"].attributes["group_weight_shape"] == [18, 3]
    assert static["fc"].weight_shape == (6, 5) and static["fc"].op_type == "Linear"
    assert static["lookup"].op_type == "Embedding" and static["lookup"].weight_shape == (10, 3)
    assert static["proj"].weight_shape == (11, 4)
    assert {"bn", "relu", "maxpool", "avgpool", "gap", "sigmoid", "tanh", "softmax"} <= {
        op.name for op in graph.by_kind(OpKind.VECTOR)}
    assert only_type(graph, "add").kind == only_type(graph, "mul").kind == OpKind.VECTOR
    assert only_type(graph, "cat").kind == OpKind.DATA_MOVEMENT
    assert static["conv1"].source_location == "model.onnx: node 0 'conv1' (Conv)"
    assert not graph.unknown_ops()


def only_type(graph, op_type):  # noqa: ANN001, ANN201 - tiny helper
    found = [op for op in graph.ops if op.op_type == op_type]
    assert len(found) == 1, found
    return found[0]


def test_gemm_with_activation_operands_and_old_softmax(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Gemm", ["a", "b", "c"], ["g"], name="gemm", transA=1, alpha=2.0),
        helper.make_node("Reshape", ["g", "shape"], ["g3"], name="to3d"),
        helper.make_node("Softmax", ["g3"], ["out"], name="softmax", axis=1),  # opset 11: 2-D
    ]
    inits = [initializer("shape", np.array([2, 2, 3], np.int64))]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [5, 4]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [5, 3]),
              helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 2, 3])]
    path = save(tmp_path, nodes, inputs, outputs, inits, opset=11)
    module, example = load_model_file(path)
    feeds = {"a": floats(5, 4), "b": floats(5, 3), "c": floats(3)}
    # Softmax-11 coerces the input to 2-D at axis (the reference evaluator implements only the
    # opset-13 per-axis form), so compute the expected value from the spec directly.
    gemm = 2.0 * feeds["a"].T @ feeds["b"] + feeds["c"]
    flat = np.exp(gemm.reshape(2, 6) - gemm.reshape(2, 6).max(axis=1, keepdims=True))
    expected = (flat / flat.sum(axis=1, keepdims=True)).reshape(2, 2, 3)
    with torch.no_grad():
        got = module(*(torch.from_numpy(feeds[k]) for k in ("a", "b", "c"))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    graph = capture(module, example)
    matmul = only_type(graph, "matmul")
    assert matmul.kind == OpKind.DYNAMIC_MATMUL and matmul.macs == 4 * 3 * 5


def test_unsupported_operators_are_all_listed(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Erf", ["x"], ["e"], name="erf1"),
        helper.make_node("Erf", ["e"], ["e2"], name="erf2"),
        helper.make_node("Relu", ["e2"], ["out"], name="relu"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3]),
               helper.make_tensor_value_info("s", TensorProto.INT64, [2])]
    path = save(tmp_path, nodes, inputs, outputs, [])
    with pytest.raises(CompileError) as info:
        load_model_file(path)
    message = str(info.value)
    assert "Erf (x2)" in message and "Shape (x1)" in message and "Relu (" not in message
    assert all(op in message for op in SUPPORTED_ONNX_OPS)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is plain text, not a protobuf\n" * 4)
    with pytest.raises(CompileError, match="not an ONNX model"):
        load_model_file(path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(CompileError, match="not an ONNX model"):
        load_model_file(empty)
