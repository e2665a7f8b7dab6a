"""``compile_model``: capture -> partition -> map/tile -> replicate -> place -> schedule -> Plan."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip
from cimflow.compile.graph import Graph, Op, OpKind
from cimflow.compile.partition import assign_substrates, check_capacity, replicate_bottlenecks
from cimflow.compile.plan import HOST, Plan
from cimflow.compile.schedule import place, schedule, time_ops
from cimflow.errors import CompileError

MODES = ("pipelined", "layer_by_layer")

#: Parameterized modules that are vector operations, not weight matrices.
_VECTOR_MODULES = (
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "PReLU", "RMSNorm",
)


class SingleLayer(nn.Module):
    """A model that is one layer (a bare ``nn.Linear``), held at a name so that the plan,
    the CIM conversion and the reports can name it; calls go straight to the layer."""

    def __init__(self, name: str, layer: nn.Module) -> None:
        super().__init__()
        self.layer_name = name
        self.add_module(name, layer)

    def forward(self, input: Any) -> Any:  # noqa: A002, D102 - torch.fx traces this signature
        return getattr(self, self.layer_name)(input)


class SingleBag(SingleLayer):
    """:class:`SingleLayer` for a bare ``nn.EmbeddingBag`` (indices, offsets, weights)."""

    def forward(self, input: Any, offsets: Any = None, per_sample_weights: Any = None) -> Any:  # noqa: A002, D102
        return getattr(self, self.layer_name)(input, offsets, per_sample_weights)


#: Layers that hold a weight matrix cimflow maps; a model that is one of them gets wrapped.
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.EmbeddingBag)


def wrap_single_layer(model: nn.Module) -> nn.Module:
    """``model`` itself, or a :class:`SingleLayer` around it when the whole model is one
    weight layer (its op and CIM layer are then named after its type: ``linear``)."""
    if isinstance(model, nn.EmbeddingBag):
        return SingleBag("embeddingbag", model)
    if isinstance(model, _WEIGHT_LAYERS):
        return SingleLayer(type(model).__name__.lower(), model)
    return model


def graph_from_modules(model: nn.Module) -> Graph:
    """A shape-free graph of the model's leaf modules in definition order (no example
    inputs needed): enough to decide where each weight matrix lives. Counts that need
    activations (``mvm_count``, ``macs``) are zero."""
    ops: list[Op] = [Op(name="input", kind=OpKind.INPUT, target="input", op_type="input")]
    prev = "input"
    for name, module in model.named_modules():
        if name == "" or any(True for _ in module.children()):
            continue
        type_names = [c.__name__ for c in type(module).__mro__ if c.__module__.startswith("torch.nn")]
        params = sum(p.numel() for p in module.parameters(recurse=False))
        attributes: dict[str, Any] = {"module": name, "type_names": type_names}
        op_type = type(module).__name__
        if isinstance(module, nn.Linear):
            kind, weight_shape = OpKind.STATIC_MVM, (module.in_features, module.out_features)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            kind = OpKind.STATIC_MVM
            weight_shape = (module.weight[0].numel(), module.out_channels)
            attributes["groups"] = module.groups
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            kind, weight_shape = OpKind.STATIC_MVM, (module.num_embeddings, module.embedding_dim)
        elif any(p.dim() >= 2 for p in module.parameters(recurse=False)) and op_type not in _VECTOR_MODULES:
            kind, weight_shape = OpKind.HOST, None
        else:
            kind, weight_shape = OpKind.VECTOR, None
        ops.append(Op(name=name, kind=kind, target=name, op_type=op_type, inputs=[prev], weight_shape=weight_shape,
                      params=params, source_location=name, attributes=attributes))
        prev = name
    ops.append(Op(name="output", kind=OpKind.OUTPUT, target="output", op_type="output", inputs=[prev]))
    return Graph(ops=ops, inputs=["input"], outputs=["output"], capture_method="module_traversal",
                 warnings=["graph built from the module list without example inputs: no shapes, counts or timing"])


def compile_graph(graph: Graph, chip: Chip | str | Path, rules: Mapping[Any, Any] | None = None, mode: str = "pipelined",
                  replicate: bool = True, model_name: str = "", table_rows: Mapping[str, int] | None = None,
                  reserved: Mapping[str, int] | None = None) -> Plan:
    """Partition, map, place and schedule a captured graph on ``chip``. ``table_rows``: rows of
    each embedding table that live in arrays (hot/cold tiers hold the rest). ``reserved``:
    arrays per kind the plan must leave alone (one capacity ledger: e.g. the SRAM macros
    that hold hot embedding rows are neither used nor replicated into)."""
    if mode not in MODES:
        raise CompileError(f"schedule mode {mode!r} is not one of {MODES}")
    chip = resolve_chip(chip)
    plans = assign_substrates(graph, chip, rules, table_rows)
    need = check_capacity(plans, chip, reserved)
    time_ops(plans, graph, chip)
    if replicate and mode == "pipelined":
        replicate_bottlenecks(plans, chip, need, reserved=reserved)
    placement = place(plans, graph, chip)
    sched = schedule(plans, graph, mode)
    warnings = list(graph.warnings)
    host_ops = [p for p in plans if p.substrate == HOST and p.kind == OpKind.HOST.value]
    if host_ops:
        unknown = ", ".join(f"{p.name} ({p.op_type} at {p.source_location})" for p in host_ops)
        warnings.append("on the host (unknown to cimflow): " + unknown)
    return Plan(chip=chip, graph=graph, ops=plans, schedule=sched, placement=placement, model_name=model_name, warnings=warnings)


def compile_model(model: nn.Module, chip: Chip | str | Path, example_inputs: Any = None, rules: Mapping[Any, Any] | None = None,
                  mode: str = "pipelined", replicate: bool = True) -> Plan:
    """Compile ``model`` for ``chip``. With ``example_inputs`` the model is captured with
    torch.fx (module traversal as a fallback) and every count and cycle is filled in;
    without, the plan covers placement only (see :func:`graph_from_modules`). A model that is
    one weight layer (a bare ``nn.Linear``) is compiled as :func:`wrap_single_layer` names it."""
    if not isinstance(model, nn.Module):
        raise CompileError(f"compile needs a torch.nn.Module, got {type(model).__name__}")
    model_name = type(model).__name__
    model = wrap_single_layer(model)
    if example_inputs is None:
        graph = graph_from_modules(model)
    else:
        from cimflow.compile.capture import capture

        graph = capture(model, example_inputs)
    return compile_graph(graph, chip, rules, mode=mode, replicate=replicate, model_name=model_name)


def arrays_needed(plan: Plan) -> int:
    return sum(o.arrays * o.replication for o in plan.array_ops())


__all__ = ["MODES", "SingleBag", "SingleLayer", "arrays_needed", "compile_graph", "compile_model", "graph_from_modules",
           "wrap_single_layer"]
