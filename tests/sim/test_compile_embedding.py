"""torch.compile of a model with tables in arrays (embedding bags + MLP, DLRM-style): no graph
breaks (a table's pooling is one opaque op), compiled outputs equal eager ones on the ideal
chip, the straight-through gradient reaches the table, and bad indices are one DataError."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
from cimflow.errors import DataError

ROWS, DIM, BATCH = 500, 8, 16


class Recsys(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.users = nn.EmbeddingBag(ROWS, DIM, mode="sum", include_last_offset=True)
        self.items = nn.EmbeddingBag(ROWS, DIM, mode="mean")
        self.top = nn.Sequential(nn.Linear(2 * DIM + 4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense, users, user_offsets, items):  # noqa: ANN001, ANN201
        return self.top(torch.cat([self.users(users, user_offsets), self.items(items), dense], dim=1))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, ROWS, (BATCH * 3,), generator=g)
    return (torch.randn(BATCH, 4, generator=g), users, torch.arange(0, BATCH * 3 + 1, 3),
            torch.randint(0, ROWS, (BATCH, 5), generator=g))


def _model(chip: str) -> nn.Module:
    torch.manual_seed(0)
    return cimflow.program(cimflow.convert(Recsys(), chip), seed=1)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_recsys_model_traces_without_graph_breaks(grad):
    model = _model("hybrid-rram-sram-28nm")
    model.train(grad)
    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        explained = torch._dynamo.explain(model)(*_inputs())
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]


def test_compiled_equals_eager_and_gradient_reaches_the_tables():
    model = _model("ideal")
    x = _inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        eager = model(*x)
        assert torch.allclose(compiled(*x), eager, rtol=1e-5, atol=1e-5)
    compiled(*x).sum().backward()
    grad = model.users.weight.grad
    assert grad is not None
    # the exact pooling's gradient: d(out)/d(row) = (top layer's weights on that table's columns) x (its lookups)
    plain = copy.deepcopy(model)  # the same weights; the exact nn.EmbeddingBag gradient for comparison
    ref = Recsys()
    ref.load_state_dict({k: v for k, v in plain.state_dict().items() if k in ref.state_dict()}, strict=False)
    ref(*x).sum().backward()
    assert ref.users.weight.grad is not None
    assert torch.allclose(grad, ref.users.weight.grad, atol=1e-5)


def test_compiled_model_names_a_bad_index():
    model = _model("hybrid-rram-sram-28nm")
    dense, users, offsets, items = _inputs()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        compiled(dense, users, offsets, items)
        items = items.clone()
        items[2, 1] = ROWS
        with pytest.raises(DataError, match=rf"index {ROWS} is out of range; the table has {ROWS} rows"):
            compiled(dense, users, offsets, items)


def test_a_copied_model_compiles_to_its_own_tables():
    model = _model("ideal")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.users.weight.mul_(2.0)
    cimflow.program(twin, seed=1)
    x = _inputs()
    torch._dynamo.reset()
    with torch.no_grad():
        a = torch.compile(model, backend="aot_eager", fullgraph=True)(*x)
        b = torch.compile(twin, backend="aot_eager", fullgraph=True)(*x)
        assert torch.allclose(a, model(*x), atol=1e-5) and torch.allclose(b, twin(*x), atol=1e-5)
        assert not torch.allclose(a, b, atol=1e-3)


_SHAPES: dict[tuple[str, bool], nn.Module] = {}


def _table(kind: str, last: bool) -> nn.Module:
    if (kind, last) not in _SHAPES:
        torch.manual_seed(2)
        source = nn.Embedding(40, 3) if kind == "embedding" else nn.EmbeddingBag(40, 3, mode=kind, include_last_offset=last)
        _SHAPES[kind, last] = cimflow.program(cimflow.convert(nn.Sequential(source), "ideal"), seed=0)[0]
    return _SHAPES[kind, last]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["embedding", "sum", "mean"]), st.booleans(), st.booleans(),
       st.lists(st.integers(1, 5), min_size=0, max_size=3), st.lists(st.integers(0, 4), min_size=1, max_size=6))
def test_shape_from_input_shapes_matches_the_pooling(kind, last, two_d, dims, sizes):
    """The compiled op's output shape (from the shapes of the input and offsets alone) is the
    shape the pooling gives, for plain embeddings of any input rank, 2-D bags and offset bags
    (empty ones too, with or without the closing offset)."""
    table = _table(kind, last)
    g = torch.Generator().manual_seed(len(dims) + 7 * sum(sizes))
    if kind == "embedding":
        values, offsets = torch.randint(0, 40, tuple(dims), generator=g), None
    elif two_d:
        values, offsets = torch.randint(0, 40, (len(sizes), max(sizes[0], 1)), generator=g), None
    else:
        ends = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(sizes).cumsum(0)])
        values, offsets = torch.randint(0, 40, (int(ends[-1]),), generator=g), ends if last else ends[:-1]
    assert tuple(table.pooled(values, offsets).shape) == table.output_shape(values, offsets)
