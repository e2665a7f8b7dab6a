"""Tests of cimflow.compile.capture: PyTorch model -> typed operator Graph."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

from cimflow.compile.capture import CaptureFallbackWarning, capture, load_model_file
from cimflow.compile.graph import Graph, Op, OpKind
from cimflow.errors import CompileError


def only(graph: Graph, **fields: object) -> Op:
    """The single op whose fields equal ``fields``."""
    found = [op for op in graph.ops if all(getattr(op, k) == v for k, v in fields.items())]
    assert len(found) == 1, f"expected one op with {fields}, got {[op.name for op in found]}"
    return found[0]


def all_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- small models


class Projection(nn.Module):
    """Linear on a 3-D input plus matmuls with parameter operands on either side."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.right = nn.Parameter(torch.randn(5, 7))
        self.left = nn.Parameter(torch.randn(3, 4))  # (M=3, K=4)
        self.tied = nn.Parameter(torch.randn(9, 7))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.fc(x) @ self.right                 # (2, 4, 7)
        t = torch.matmul(y, self.tied.t())          # weight derived from a parameter
        u = torch.matmul(self.left, z)              # (3, 4) @ (2, 4, 8) -> (2, 3, 8)
        return t, u


def test_linear_and_parameter_matmuls_are_static_mvms() -> None:
    x, z = torch.randn(2, 4, 6), torch.randn(2, 4, 8)
    graph = capture(Projection(), (x, z))
    fc = graph.op("fc")
    assert fc.kind == OpKind.STATIC_MVM and fc.op_type == "Linear"
    assert fc.weight_shape == (6, 5)
    assert fc.mvm_count == 2 * 4  # leading dims
    assert fc.macs == 2 * 4 * 6 * 5
    assert fc.params == 6 * 5 + 5
    assert fc.output_shape == (2, 4, 5) and fc.output_dtype == "float32"
    right = only(graph, op_type="matmul", weight_shape=(5, 7))
    assert right.kind == OpKind.STATIC_MVM and right.inputs == ["fc"]
    assert right.mvm_count == 8 and right.macs == 8 * 5 * 7 and right.params == 35
    tied = only(graph, weight_shape=(7, 9))  # self.tied.t() folded into the op
    assert tied.kind == OpKind.STATIC_MVM and tied.attributes["weight"] == "tied"
    assert tied.params == 63
    left = only(graph, weight_shape=(4, 3))  # W @ z: columns of z are the input vectors
    assert left.attributes["weight_side"] == "left"
    assert left.mvm_count == 2 * 8 and left.macs == 2 * 3 * 8 * 4
    assert graph.total_params == all_params(Projection())
    assert not graph.by_kind("host")


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 5, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, bias=False)
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.c1(a), self.dw(self.c2(b))


def test_convolutions_are_im2col_mvms() -> None:
    a, b = torch.randn(2, 3, 20), torch.randn(3, 4, 9, 7)
    graph = capture(Convs(), (a, b))
    c1 = graph.op("c1")
    length = (20 + 2 - 5) // 2 + 1
    assert c1.op_type == "Conv1d" and c1.kind == OpKind.STATIC_MVM
    assert c1.weight_shape == (3 * 5, 8)
    assert c1.mvm_count == 2 * length
    assert c1.macs == 2 * length * 15 * 8
    assert c1.attributes["stride"] == [2] and c1.attributes["bias"] is True
    c2 = graph.op("c2")
    h, w = (9 + 2 - 3) // 2 + 1, (7 + 2 - 2) + 1
    assert c2.output_shape == (3, 6, h, w)
    assert c2.weight_shape == (4 * 3 * 2, 6) and c2.mvm_count == 3 * h * w
    assert c2.macs == 3 * h * w * 24 * 6 and c2.attributes["bias"] is False
    dw = graph.op("dw")
    assert dw.weight_shape == (2 * 9, 12)  # C_in/groups * kh * kw rows
    assert dw.attributes["groups"] == 3 and dw.attributes["group_weight_shape"] == [18, 4]
    assert dw.macs == 3 * h * w * 12 * 18
    assert dw.inputs == ["c2"]


class Tables(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(50, 8, mode="sum")
        self.bag_max = nn.EmbeddingBag(40, 4, mode="max")
        self.emb = nn.Embedding(30, 6)

    def forward(self, idx: torch.Tensor, flat: torch.Tensor, offsets: torch.Tensor,
                tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.bag(idx), self.bag_max(flat, offsets), self.emb(tokens)


def test_embedding_tables_are_multi_hot_mvms() -> None:
    idx = torch.randint(0, 50, (5, 3))
    flat, offsets = torch.randint(0, 40, (9,)), torch.tensor([0, 2, 2, 6])
    tokens = torch.randint(0, 30, (2, 7))
    graph = capture(Tables(), (idx, flat, offsets, tokens))
    bag = graph.op("bag")
    assert bag.kind == OpKind.STATIC_MVM and bag.op_type == "EmbeddingBag"
    assert bag.weight_shape == (50, 8)
    assert bag.mvm_count == 5  # one multi-hot MVM per bag
    assert bag.macs == 15 * 8 and bag.attributes["mode"] == "sum"
    assert bag.attributes["pooling_factor"] == pytest.approx(3.0)
    bag_max = graph.op("bag_max")
    assert bag_max.inputs == ["flat", "offsets"] and bag_max.attributes["bags"] == 4
    assert bag_max.mvm_count == 9  # max pooling reads each row separately
    emb = graph.op("emb")
    assert emb.op_type == "Embedding" and emb.weight_shape == (30, 6)
    assert emb.mvm_count == 14 and emb.macs == 14 * 6 and emb.params == 180


class Attention(nn.Module):
    """Hand-written transformer block: Q, K, V Linear layers, SDPA with matmul/softmax, MLP."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))

    def split(self, t: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = t.shape
        return t.reshape(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        merged = context.transpose(1, 2).reshape(x.shape)
        x = x + self.o(merged)
        return x + self.mlp(self.norm2(x))


def test_transformer_block_classification() -> None:
    batch, tokens, dim, heads = 2, 5, 16, 4
    model = Attention(dim, heads)
    graph = capture(model, torch.randn(batch, tokens, dim))
    assert graph.capture_method == "fx"
    dynamic = graph.by_kind(OpKind.DYNAMIC_MATMUL)
    assert [op.op_type for op in dynamic] == ["matmul", "matmul"]
    head_dim = dim // heads
    for op in dynamic:
        assert op.macs == batch * heads * tokens * tokens * head_dim
        assert op.params == 0 and op.weight_shape is None
    assert dynamic[0].output_shape == (batch, heads, tokens, tokens)
    assert dynamic[0].mvm_count == batch * heads * tokens
    static = graph.by_kind(OpKind.STATIC_MVM)
    assert sorted(op.name for op in static) == ["k", "mlp.0", "mlp.2", "o", "q", "v"]
    vector_types = {op.op_type for op in graph.by_kind(OpKind.VECTOR)}
    assert {"softmax", "LayerNorm", "ReLU", "add", "div"} <= vector_types
    movement_types = {op.op_type for op in graph.by_kind(OpKind.DATA_MOVEMENT)}
    assert {"reshape", "transpose"} <= movement_types
    assert graph.total_params == all_params(model)
    # the softmax reads the scaled scores, which read the first dynamic matmul
    softmax = only(graph, op_type="softmax")
    scale = graph.op(softmax.inputs[0])
    assert scale.op_type == "div" and dynamic[0].name in scale.inputs
    assert softmax.source_location.startswith(f"{__file__}:")


def test_multihead_attention_expands_into_projections_and_dynamic_matmuls() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x)[0]

    model = Block()
    graph = capture(model, torch.randn(3, 6, 16))
    names = [op.name for op in graph.ops if op.name.startswith("attn.")]
    assert names == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.scores",
                     "attn.softmax", "attn.context", "attn.out_proj"]
    scores, context = graph.op("attn.scores"), graph.op("attn.context")
    assert scores.kind == context.kind == OpKind.DYNAMIC_MATMUL
    assert scores.inputs == ["attn.q_proj", "attn.k_proj"]
    assert context.inputs == ["attn.softmax", "attn.v_proj"]
    assert scores.macs == 3 * 4 * 6 * 6 * 4 and scores.output_shape == (3, 4, 6, 6)
    assert graph.op("attn.q_proj").weight_shape == (16, 16)
    assert graph.op("attn.q_proj").mvm_count == 18
    assert graph.op("attn.out_proj").output_shape == (3, 6, 16)
    assert graph.total_params == all_params(model)


# --------------------------------------------------------------------------- CNN, DLRM


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


def resnet18(classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def test_resnet18_counts_match_an_independent_hook_count() -> None:
    model = resnet18()
    x = torch.randn(2, 3, 64, 64)
    expected: dict[str, int] = {}

    def count(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                expected[name] = output.numel() * module.in_channels // module.groups * math.prod(
                    module.kernel_size)
            else:
                expected[name] = output.numel() * module.in_features
        return hook

    handles = [m.register_forward_hook(count(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    model.train()  # capture must not leave it in eval mode nor update BN statistics
    running_mean = model[1].running_mean.clone()
    graph = capture(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running_mean)
    static = graph.by_kind(OpKind.STATIC_MVM)
    assert len(static) == 21  # 1 stem + 16 block convs + 3 downsample convs + fc
    assert {op.name: op.macs for op in static} == expected
    assert graph.total_params == all_params(model)
    assert len([op for op in graph.by_kind(OpKind.VECTOR) if op.op_type == "add"]) == 8
    assert graph.op("14").op_type == "Linear" and graph.op("14").output_shape == (2, 10)
    assert graph.ops[-1].inputs == ["14"]


class DLRM(nn.Module):
    """Small DLRM: bottom MLP, sum-pooled EmbeddingBags, bmm dot interaction, top MLP."""

    def __init__(self, rows: list[int], dim: int = 8, dense: int = 13,
                 device: str | None = None) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(dense, 32), nn.ReLU(), nn.Linear(32, dim), nn.ReLU())
        with torch.device(device or "cpu"):
            self.tables = nn.ModuleList(nn.EmbeddingBag(n, dim, mode="sum") for n in rows)
        features = len(rows) + 1
        pairs = features * (features - 1) // 2
        self.register_buffer("li", torch.tril_indices(features, features, -1)[0], persistent=False)
        self.register_buffer("lj", torch.tril_indices(features, features, -1)[1], persistent=False)
        self.top = nn.Sequential(nn.Linear(dim + pairs, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.bottom(dense)
        pooled = [table(sparse[f"f{i}"]) for i, table in enumerate(self.tables)]
        stacked = torch.stack([x] + pooled, dim=1)              # (B, F, dim)
        gram = torch.bmm(stacked, stacked.transpose(1, 2))      # (B, F, F)
        interactions = gram[:, self.li, self.lj]
        return torch.sigmoid(self.top(torch.cat([x, interactions], dim=1)))


def dlrm_inputs(batch: int, rows: list[int], hot: int = 3) -> tuple[torch.Tensor, dict]:
    sparse = {f"f{i}": torch.randint(0, min(n, 1000), (batch, hot)) for i, n in enumerate(rows)}
    return torch.randn(batch, 13), sparse


def test_dlrm_dot_interaction_is_a_dynamic_matmul() -> None:
    rows = [100, 50, 20]
    model = DLRM(rows)
    graph = capture(model, dlrm_inputs(4, rows))
    bags = [op for op in graph.by_kind(OpKind.STATIC_MVM) if op.op_type == "EmbeddingBag"]
    assert [op.weight_shape for op in bags] == [(100, 8), (50, 8), (20, 8)]
    assert all(op.mvm_count == 4 and op.macs == 4 * 3 * 8 for op in bags)
    interaction = only(graph, op_type="bmm")
    assert interaction.kind == OpKind.DYNAMIC_MATMUL
    assert interaction.output_shape == (4, 4, 4) and interaction.macs == 4 * 4 * 4 * 8
    assert only(graph, op_type="stack").kind == OpKind.DATA_MOVEMENT
    assert only(graph, op_type="getitem", output_shape=(4, 6)).kind == OpKind.DATA_MOVEMENT
    assert graph.op("top.2").weight_shape == (16, 1)
    assert graph.total_params == all_params(model)
    assert graph.inputs == ["dense", "sparse"]


def test_dlrm_with_meta_tables_captures_without_allocating() -> None:
    rows = [200_000_000, 40_000_000, 1000]  # ~125 GB of fp32 weights on the meta device
    model = DLRM(rows, dim=128, device="meta")
    assert model.tables[0].weight.is_meta and not model.top[0].weight.is_meta
    graph = capture(model, dlrm_inputs(8, rows, hot=5))
    table = graph.op("tables.0")
    assert table.weight_shape == (200_000_000, 128) and table.params == 200_000_000 * 128
    assert table.mvm_count == 8 and table.macs == 8 * 5 * 128
    assert graph.op("top.2").output_shape == (8, 1)
    assert any("meta" in note for note in graph.warnings)
    assert graph.capture_method == "fx"


# --------------------------------------------------------------------------- unknown ops


@torch.fx.wrap
def custom_scale(t: torch.Tensor) -> torch.Tensor:
    """A Python function fx keeps as an opaque call."""
    return t * 3


class WithUnknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft(self.fc(x))  # LINE_FFT
        return custom_scale(spectrum.real)  # LINE_CUSTOM


def line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if marker in line and "line_of" not in line)


def test_unknown_operators_are_host_ops_with_source_locations() -> None:
    graph = capture(WithUnknown(), torch.randn(2, 8))
    unknown = graph.unknown_ops()
    assert [op.op_type for op in unknown] == ["fft_fft", "custom_scale"]
    assert unknown[0].target == "torch.fft.fft"
    assert unknown[0].source_location == f"{__file__}:{line_of('# LINE_FFT')}"
    assert unknown[1].source_location == f"{__file__}:{line_of('# LINE_CUSTOM')}"
    assert unknown[1].inputs == [only(graph, op_type="real").name]
    assert any("fft_fft" in note and "custom_scale" in note and "host" in note
               for note in graph.warnings)


# --------------------------------------------------------------------------- fallback, errors


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if h.sum() > -1e9:  # data-dependent branch: fx cannot trace it
            h = h @ self.scale
        return self.fc2(h) + 1


def test_fx_failure_falls_back_to_module_traversal() -> None:
    with pytest.warns(CaptureFallbackWarning, match="symbolically traced variables"):
        graph = capture(DataDependent(), torch.randn(2, 4))
    assert graph.capture_method == "module_traversal"
    assert any("module traversal" in note for note in graph.warnings)
    fc1, fc2 = graph.op("fc1"), graph.op("fc2")
    assert fc1.kind == fc2.kind == OpKind.STATIC_MVM and fc1.mvm_count == 2
    scaled = only(graph, op_type="matmul")
    assert scaled.kind == OpKind.STATIC_MVM and scaled.weight_shape == (8, 8)
    assert scaled.inputs == [only(graph, op_type="relu").name]
    assert fc2.inputs == [scaled.name]
    add = graph.op(graph.ops[-1].inputs[0])
    assert add.op_type == "add" and add.inputs == ["fc2"]
    assert graph.total_params == all_params(DataDependent())


class ListInputs(nn.Module):
    """Sparse features as a Python list: fx cannot iterate over it, so capture falls back."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__()
        self.bottom = nn.Linear(13, 16)
        with torch.device("meta"):
            self.tables = nn.ModuleList(nn.EmbeddingBag(n, 16, mode="sum") for n in rows)
        self.top = nn.Linear(16 * (len(rows) + 1), 1)

    def forward(self, dense: torch.Tensor, sparse: list[torch.Tensor]) -> torch.Tensor:
        pooled = [table(indices) for table, indices in zip(self.tables, sparse, strict=True)]
        return self.top(torch.cat([self.bottom(dense)] + pooled, dim=1))


def test_module_traversal_runs_meta_models_on_meta() -> None:
    rows = [300_000_000, 20]
    sparse = [torch.randint(0, 20, (4, 6)), torch.randint(0, 20, (4, 2))]
    with pytest.warns(CaptureFallbackWarning, match="iterated"):
        graph = capture(ListInputs(rows), (torch.randn(4, 13), sparse))
    assert graph.capture_method == "module_traversal"
    assert any("meta" in note for note in graph.warnings)
    big = graph.op("tables.0")
    assert big.weight_shape == (300_000_000, 16) and big.mvm_count == 4 and big.macs == 24 * 16
    assert big.inputs == ["sparse"] and graph.op("tables.1").attributes["lookups"] == 8
    cat = only(graph, op_type="cat")
    assert cat.inputs == ["bottom", "tables.0", "tables.1"] and cat.output_shape == (4, 48)
    assert graph.op("top").inputs == [cat.name]


def test_unmodeled_torch_layers_become_host_ops() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    graph = capture(Recurrent(), torch.randn(3, 5, 4))
    (lstm,) = graph.unknown_ops()
    assert lstm.name == "lstm" and lstm.op_type == "LSTM"
    assert lstm.attributes["output_shapes"][0] == [3, 5, 8]
    assert lstm.source_location.startswith(f"{__file__}:")
    assert graph.op("head").kind == OpKind.STATIC_MVM


def test_wrong_example_input_shape_names_the_input() -> None:
    with pytest.raises(CompileError) as info:
        capture(Attention(), torch.randn(2, 5, 12))
    message = str(info.value)
    assert "do not fit" in message and "x: float32[2, 5, 12]" in message
    assert "reads model input(s): x" in message


def test_failing_eager_and_untraceable_model_is_a_compile_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptureFallbackWarning)
        with pytest.raises(CompileError) as info:
            capture(DataDependent(), torch.randn(2, 5))
    message = str(info.value)
    assert "could not trace" in message and "fc1" in message and "float32[2, 5]" in message


def test_not_a_module_and_bad_inputs_are_compile_errors() -> None:
    with pytest.raises(CompileError, match="nn.Module"):
        capture(lambda t: t, torch.randn(2))  # type: ignore[arg-type]
    with pytest.raises(CompileError, match="does not take"):
        capture(Attention(), {"y": torch.randn(2, 5, 16)})
    with pytest.raises(CompileError, match="example_inputs must be"):
        capture(Attention(), 3)


def test_meta_propagation_matches_device_propagation() -> None:
    class Sparse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Attention()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.block(x)
            return y, torch.nonzero(y > 0)  # data-dependent shape: cannot run on meta

    model, x = Attention(), torch.randn(2, 5, 16)
    assert capture(model, x, propagate_on="meta") == capture(model, x, propagate_on="device")
    sparse = Sparse()
    graph = capture(sparse, x, propagate_on="meta")  # falls back to the device for nonzero
    expected_rows = int((sparse.block(x) > 0).sum())
    assert only(graph, op_type="nonzero").output_shape == (expected_rows, 3)
    with pytest.raises(CompileError, match="propagate_on"):
        capture(model, x, propagate_on="gpu")


def test_dict_inputs_and_repeated_module_calls() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(a) * b)

    graph = capture(Twice(), {"b": torch.randn(3, 4), "a": torch.randn(3, 4)})
    calls = [op for op in graph.by_kind(OpKind.STATIC_MVM)]
    assert [op.name for op in calls] == ["fc", "fc_1"]
    assert calls[1].inputs == [only(graph, op_type="mul").name]
    assert graph.inputs == ["a", "b"]


def test_einsum_static_and_dynamic() -> None:
    class Mix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.einsum("btd,de->bte", x, self.w)
            return torch.einsum("bte,bse->bts", y, y)

    graph = capture(Mix(), torch.randn(2, 3, 6))
    static, dynamic = graph.by_kind(OpKind.STATIC_MVM), graph.by_kind(OpKind.DYNAMIC_MATMUL)
    assert len(static) == len(dynamic) == 1
    assert static[0].weight_shape == (6, 5) and static[0].macs == 2 * 3 * 6 * 5
    assert static[0].mvm_count == 6
    assert dynamic[0].macs == 2 * 3 * 3 * 5 and dynamic[0].output_shape == (2, 3, 3)


# --------------------------------------------------------------------------- serialization


def test_json_round_trip_is_exact() -> None:
    rows = [100, 50]
    graph = capture(DLRM(rows), dlrm_inputs(2, rows))
    text = graph.to_json()
    data = json.loads(text)
    assert data["format"] == "cimflow.graph/1" and len(data["ops"]) == len(graph.ops)
    again = Graph.from_json(text)
    assert again == graph
    assert Graph.from_dict(graph.to_dict()) == graph
    assert again.ops[3].output_shape == graph.ops[3].output_shape
    assert isinstance(again.op("bottom.0").weight_shape, tuple)
    assert again.op("bottom.0").kind is OpKind.STATIC_MVM


def test_graph_validation_rejects_bad_graphs() -> None:
    source = Op("x", OpKind.INPUT, "x", "input")
    consumer = Op("y", "vector", "relu", "relu", inputs=["x"])
    with pytest.raises(CompileError, match="topological"):
        Graph([consumer, source], ["x"], [], "fx")
    with pytest.raises(CompileError, match="unique"):
        Graph([source, source], ["x"], [], "fx")
    with pytest.raises(CompileError, match="kind"):
        Op("z", "analog", "t", "t")
    with pytest.raises(CompileError, match="capture_method"):
        Graph([source], ["x"], [], "magic")
    with pytest.raises(CompileError, match="not a cimflow graph"):
        Graph.from_json("{}")


# --------------------------------------------------------------------------- loaders


MODEL_FILE = '''
import torch
from torch import nn

def model():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))

def example_inputs():
    return (torch.randn(3, 4),)
'''


def test_python_file_loader(tmp_path: Path) -> None:
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    model, inputs = load_model_file(path)
    graph = capture(model, inputs)
    assert [op.weight_shape for op in graph.by_kind(OpKind.STATIC_MVM)] == [(4, 6), (6, 2)]
    broken = tmp_path / "broken.py"
    broken.write_text("def model():\n    return None\n")
    with pytest.raises(CompileError, match=r"missing: example_inputs\(\)"):
        load_model_file(broken)
    with pytest.raises(CompileError, match="does not exist"):
        load_model_file(tmp_path / "absent.py")
    (tmp_path / "weights.pth").write_bytes(b"\0")
    with pytest.raises(CompileError, match="unknown model file type"):
        load_model_file(tmp_path / "weights.pth")


def test_exported_program_loader(tmp_path: Path) -> None:
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    example = (torch.randn(2, 3, 6, 6),)
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(Small(), example), str(path))
    model, inputs = load_model_file(path)
    assert [tuple(t.shape) for t in inputs] == [(2, 3, 6, 6)]
    graph = capture(model, inputs)
    assert graph.capture_method == "export"
    conv, fc = graph.op("conv"), graph.op("fc")
    assert conv.kind == fc.kind == OpKind.STATIC_MVM
    assert conv.weight_shape == (27, 4) and conv.mvm_count == 2 * 16 and conv.params == 112
    assert fc.weight_shape == (4, 2) and fc.inputs == [only(graph, op_type="mean").name]
    assert graph.total_params == all_params(Small())
    assert capture(torch.export.load(str(path)), inputs) == graph  # an ExportedProgram works too
    not_pt2 = tmp_path / "junk.pt2"
    not_pt2.write_text("not an archive")
    with pytest.raises(CompileError, match="torch.export archive"):
        load_model_file(not_pt2)
