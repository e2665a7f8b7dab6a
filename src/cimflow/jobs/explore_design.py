"""One design of ``cimflow explore``: a parameter set applied to the base chip, its cost
(system model) and its accuracy (functional simulation over chip instances and times).

- :func:`apply_design` turns ``{parameter key: value}`` into a validated chip and the mapping
  choices (placement rules, replication, hot-tier share);
- :func:`evaluate_cost` is the cheap analytic half: compile + estimate + system model
  (RecSys: :func:`cimflow.jobs.recsys_config.run_recsys_config` on the workload's shape);
- :func:`evaluate_accuracy` is the expensive half: the workload's model simulated on
  ``accuracy.instances`` chip instances at each of ``accuracy.times`` after programming.
  RecSys accuracy is the MovieLens-100k DLRM's AUC (the job of ``cimflow run``); digits is
  the small CNN's top-1; a model file uses its ``evaluate(model)``, else the relative
  output error on its example inputs (as ``cimflow simulate``).

Both halves take plain data (the space as a dict, the parameters) so Ray workers can run
them; heavy inputs (trained models, data) are cached once per process.
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from cimflow.chip.io import chip_from_dict, preset_names, resolve_chip
from cimflow.chip.spec import Chip
from cimflow.errors import CimflowError
from cimflow.jobs.explore_space import Space

#: the value an accuracy objective gets when a design is not simulated (its constraints failed
#: on cost): the worst the metric can be, so samplers never prefer it
UNSIMULATED = {"accuracy": 0.0, "auc": 0.0, "top1": 0.0, "accuracy_loss": 1.0, "auc_loss": 1.0, "top1_loss": 1.0}


@dataclass
class Mapping:
    """How the workload is compiled onto a design's chip."""

    rules: dict[str, str] = field(default_factory=dict)
    replicate: bool = True
    hot_tier_fraction: float = 1.0


def _kind(chip: Chip, array: str | None, name: str) -> str:
    ref = array or "embedding"
    if ref in chip.arrays:
        return ref
    if ref == "embedding":
        return chip.embedding_kind
    if ref == "mvm":
        return chip.roles.mvm
    if ref == "digital":
        if chip.roles.digital is None:
            raise CimflowError(f"{name}: chip {chip.name!r} has no digital array kind (roles.digital)")
        return chip.roles.digital
    raise CimflowError(f"{name}: chip {chip.name!r} has no array kind or role {ref!r}; it has {', '.join(sorted(chip.arrays))} "
                       "(roles: embedding, mvm, digital)")


@functools.lru_cache(maxsize=16)
def _device_of(technology: str) -> dict[str, Any]:
    """The device block of the first shipped preset (by name) with an array of ``technology``."""
    for preset in preset_names():
        chip = resolve_chip(preset)
        for arr in chip.arrays.values():
            if arr.device.technology == technology:
                return arr.device.model_dump(mode="json", exclude_none=True)
    raise CimflowError(f"technology {technology!r}: no shipped preset has an array of it; "
                       f"technologies in presets: {', '.join(sorted(_preset_technologies()))}")


def _preset_technologies() -> set[str]:
    return {a.device.technology for p in preset_names() for a in resolve_chip(p).arrays.values()}


def apply_design(space: Space, params: dict[str, Any], name: str | None = None) -> tuple[Chip, Mapping]:
    """The chip and mapping of one design. A design the chip description refuses (e.g. an ADC
    shared by more columns than the array has) raises a one-line :class:`CimflowError`."""
    by_key = {p.key: p for p in space.parameters}
    unknown = set(params) - set(by_key)
    if unknown:
        raise CimflowError(f"design parameters {sorted(unknown)} are not in the space (it has {sorted(by_key)})")
    base = resolve_chip(params.get("preset", space.base))
    data = base.model_dump(mode="json", exclude_none=True)
    mapping = Mapping()
    order = sorted(params, key=lambda k: (by_key[k].name != "technology", k))  # device swaps before cell bits
    for key in order:
        p, value = by_key[key], params[key]
        if p.name == "preset":
            continue
        if p.name == "rules":
            mapping.rules = dict(space.rule_sets[value])
            continue
        if p.name == "replicate":
            mapping.replicate = bool(value)
            continue
        if p.name == "hot_tier_fraction":
            mapping.hot_tier_fraction = float(value)
            continue
        if p.name == "cores":
            data["cores"]["count"] = int(value)
            continue
        if p.name == "sram_arrays":
            data["cores"]["arrays"][_kind(base, "digital", key)] = int(value)
            continue
        if p.name == "dram_gib":
            if "dram" not in data:
                raise CimflowError(f"{key}: chip {base.name!r} has no DRAM tier to size")
            data["dram"]["capacity_bytes"] = int(float(value) * (1 << 30))
            continue
        kind = _kind(base, p.array, key)
        arr = data["arrays"][kind]
        analog = arr.get("kind", "analog") == "analog"
        if p.name in ("cell_bits", "adc_bits", "adc_sharing", "max_active_rows") and not analog:
            raise CimflowError(f"{key}: array kind {kind!r} is digital (no cells of several levels, no ADC); "
                               "give an analog array kind or role")
        if p.name == "technology":
            arr["device"] = copy.deepcopy(_device_of(str(value)))
        elif p.name == "cell_bits":
            arr["device"]["levels"] = 2 ** int(value)
            arr["device"].pop("bits_per_cell", None)
        elif p.name == "array_rows":
            arr["rows"] = int(value)
            if arr.get("max_active_rows", 0) > int(value):
                arr["max_active_rows"] = int(value)
        elif p.name == "array_cols":
            arr["cols"] = int(value)
        elif p.name == "adc_bits":
            adc = arr["adc"]
            adc.setdefault("energy_quoted_at_bits", adc["bits"])  # the quoted energy moves along the converter law
            adc["bits"] = int(value)
        elif p.name == "adc_sharing":
            arr["adc"]["columns_per_adc"] = int(value)
        elif p.name == "dac_bits":
            enc = arr.setdefault("input_encoding", {})
            enc["bits"] = int(value)
            enc["bits_per_pulse"] = min(int(enc.get("bits_per_pulse", 1)), max(int(value) - 1, 1))
        elif p.name == "max_active_rows":
            arr["max_active_rows"] = int(value)
        elif p.name == "arrays":
            data["cores"]["arrays"][kind] = int(value)
    data["name"] = name or f"{base.name}-design"
    data["description"] = (f"design explored from {base.name} ({', '.join(f'{k}={v}' for k, v in sorted(params.items()))}); "
                           + base.description)[:2000]
    data.setdefault("assumptions", []).append(
        "cimflow explore: this design changes the base chip's parameters listed in description; every other number is the base chip's")
    chip = chip_from_dict(data, origin=f"design {data['name']}")
    return chip, mapping


# ------------------------------------------------------------------------------------------- cost

def evaluate_cost(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """The cheap half: ``{"metrics": {qps, qps_per_w, energy_per_inference_j, area_mm2, chips, bound_by},
    "detail": {...}}`` of one design (the system model of :mod:`cimflow.cost.system`)."""
    chip, mapping = apply_design(space, params)
    if space.workload.kind == "recsys":
        return _recsys_cost(space, chip, mapping)
    return _model_cost(space, chip, mapping)


def _recsys_cost(space: Space, chip: Chip, mapping: Mapping) -> dict[str, Any]:
    from cimflow.jobs.recsys_config import RecsysConfig, run_recsys_config

    w = space.workload
    cfg = RecsysConfig(shape=w.shape, tables=tuple(w.tables), dim=w.dim, pooling=w.pooling, skew=w.skew, chip=chip, batch=w.batch,
                       sample_queries=w.sample_queries, seed=space.seed, quiet=True)
    for name, value, default in (("rules", dict(mapping.rules), {}), ("replicate", mapping.replicate, True),
                                 ("hot_tier_fraction", mapping.hot_tier_fraction, 1.0)):
        if hasattr(cfg, name):
            setattr(cfg, name, value)
        elif value != default:
            raise CimflowError(f"mapping parameter {name!r} is not supported by this version of the RecSys configuration")
    result = run_recsys_config(cfg)
    system = result["system"]
    metrics = {"qps": float(result["qps"]), "qps_per_w": float(result["qps_per_w"]),
               "energy_per_inference_j": float(system["energy_per_query_j"]),
               "area_mm2": float(system["area_mm2_per_chip"]) * int(result["chips"]), "chips": int(result["chips"]),
               "bound_by": str(result["bound_by"])}
    detail = {"system": system, "tiers": result["tiers"], "sharding": result["sharding"],
              "plan": [{k: op.get(k) for k in ("name", "op_type", "substrate", "array_kind", "latency_s", "total_energy_j") if k in op}
                       for op in result["cost"]["per_op"] if op.get("total_energy_j") or op.get("latency_s")],
              "energy_by_component_j": result["cost"]["by_component_j"], "area_by_component_m2": result["cost"]["area_by_component_m2"],
              "notes": result["notes"]}
    return {"metrics": metrics, "detail": detail}


@dataclass
class _ModelWorkload:
    module: Any
    example_inputs: Any
    score: Any  # score(model) -> float, higher is better
    fp32: float
    metric: str


@functools.lru_cache(maxsize=4)
def _digits_workload(seed: int) -> _ModelWorkload:
    import torch

    from cimflow.vision import accuracy, load_digits_data, small_cnn, train_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same trained weights in every process (driver and Ray workers)
    try:
        torch.manual_seed(seed)
        data = load_digits_data(seed=seed)
        model = train_classifier(small_cnn(), data, seed=seed).eval()
    finally:
        torch.set_num_threads(threads)

    def score(m: Any) -> float:
        return accuracy(m, data.x_test, data.y_test)

    return _ModelWorkload(model, data.x_test[:64], score, score(model), "top-1 accuracy (digits test split)")


@functools.lru_cache(maxsize=4)
def _file_workload(path: str) -> _ModelWorkload:
    import sys
    from pathlib import Path

    import torch

    from cimflow.compile.model_files import load_model_file
    from cimflow.train.over_time import _call, relative_output_error

    module, example_inputs = load_model_file(path)
    module.eval()
    resolved = Path(path).resolve()
    evaluate = None
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve() == resolved and callable(getattr(mod, "evaluate", None)):
            evaluate = mod.evaluate
    if evaluate is not None:
        fn = evaluate

        def score(m: Any) -> float:
            return float(fn(m))

        return _ModelWorkload(module, example_inputs, score, score(module), "evaluate(model)")
    with torch.no_grad():
        reference = _call(module, example_inputs)

    def neg_error(m: Any) -> float:
        with torch.no_grad():
            return -relative_output_error(reference, _call(m, example_inputs))

    return _ModelWorkload(module, example_inputs, neg_error, 0.0, "minus the relative output error on example_inputs()")


def _model_workload(space: Space) -> _ModelWorkload:
    if space.workload.kind == "digits":
        return _digits_workload(space.seed)
    assert space.workload.file is not None
    return _file_workload(space.workload.file)


def _model_cost(space: Space, chip: Chip, mapping: Mapping) -> dict[str, Any]:
    import torch

    import cimflow
    from cimflow.cost import estimate
    from cimflow.cost.system import ChipTraffic, system_model

    wl = _model_workload(space)
    plan = cimflow.compile(wl.module, chip, wl.example_inputs, rules=mapping.rules, replicate=mapping.replicate)
    batch = wl.example_inputs if isinstance(wl.example_inputs, tuple) else (wl.example_inputs,)
    stats = cimflow.gather_stats(cimflow.simulate(plan, wl.module, seed=space.seed, allow_host=True), [batch])
    cost = estimate(plan, stats=stats)
    from cimflow.train.over_time import _call, _tensors

    with torch.no_grad():
        out = _call(wl.module, wl.example_inputs)
    ex = wl.example_inputs  # one tensor, a tuple or a dict of them
    raw = [t for t in (ex.values() if isinstance(ex, dict) else ex if isinstance(ex, (tuple, list)) else [ex])
           if isinstance(t, torch.Tensor)]
    n = int(raw[0].shape[0]) if raw and raw[0].dim() > 0 else 1  # queries: the first input's batch size
    in_bytes = sum(t.numel() * t.element_size() for t in raw) / n
    out_bytes = sum(t.numel() * 4 for t in _tensors(out)) / n  # results back as fp32
    system = system_model(cost, plan, [ChipTraffic(host_in_bytes=in_bytes, host_out_bytes=out_bytes)], chip=chip)
    metrics = {"qps": float(system.qps), "qps_per_w": float(system.qps_per_w), "energy_per_inference_j": float(system.energy_per_query_j),
               "area_mm2": float(system.area_mm2_per_chip), "chips": 1, "bound_by": system.bound_by}
    detail = {"system": system.to_dict(), "plan": [{"name": o.name, "op_type": o.op_type, "substrate": o.substrate,
                                                     "array_kind": o.array_kind, "arrays": o.arrays, "replication": o.replication}
                                                    for o in plan.ops]}
    return {"metrics": metrics, "detail": detail}


# --------------------------------------------------------------------------------------- accuracy

def _over_instances(cim: Any, score: Any, space: Space) -> dict[str, dict[str, Any]]:
    """``score`` of ``cim`` on each chip instance at each time: ``{time: {mean, std, values}}``."""
    import cimflow
    from cimflow.units import parse_duration

    acc = space.accuracy
    times = [(t, parse_duration(t)) for t in acc.times]
    values: dict[str, list[float]] = {t: [] for t, _ in times}
    for k in range(acc.instances):
        cimflow.program(cim, seed=acc.seed + k)
        for label, t in times:
            cimflow.drift(cim, t)
            values[label].append(float(score(cim)))
    return {t: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "values": v} for t, v in values.items()}


@functools.lru_cache(maxsize=2)
def _movielens(seed: int) -> tuple[Any, Any, Any, float]:
    from cimflow.recsys.data import load_movielens_100k
    from cimflow.recsys.train import evaluate_auc, train_movielens_dlrm

    model, _ = train_movielens_dlrm(seed=seed, cache=True)
    model.eval()
    splits = load_movielens_100k(seed=seed)
    return model, splits, splits.test, evaluate_auc(model, splits.test)


def evaluate_accuracy(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """The expensive half: ``{"metrics": {accuracy, accuracy_loss (and auc/top1 aliases)}, "detail": ...}``.
    The reported value is the worst over ``accuracy.times`` of the mean over chip instances."""
    chip, mapping = apply_design(space, params)
    if space.workload.kind == "recsys":
        per_time, fp32, metric = _recsys_accuracy(space, chip, mapping)
    else:
        import cimflow
        from cimflow.sim.convert import convert_model

        wl = _model_workload(space)
        plan = cimflow.compile(wl.module, chip, wl.example_inputs, rules=mapping.rules, replicate=mapping.replicate)
        cim, _ = convert_model(wl.module, chip, plan=plan, allow_host=True)
        cim.eval()
        per_time, fp32, metric = _over_instances(cim, wl.score, space), wl.fp32, wl.metric
    worst = min(v["mean"] for v in per_time.values())
    metrics = {"accuracy": worst, "accuracy_loss": fp32 - worst}
    alias = {"recsys": ("auc", "auc_loss"), "digits": ("top1", "top1_loss")}.get(space.workload.kind)
    if alias:
        metrics[alias[0]], metrics[alias[1]] = metrics["accuracy"], metrics["accuracy_loss"]
    if not all(math.isfinite(v) for v in metrics.values()):
        raise CimflowError(f"the simulated metric is not finite ({metrics}); the design cannot be scored")
    return {"metrics": metrics, "detail": {"metric": metric, "fp32": fp32, "per_time": per_time,
                                           "instances": space.accuracy.instances}}


def _recsys_accuracy(space: Space, chip: Chip, mapping: Mapping) -> tuple[dict[str, dict[str, Any]], float, str]:
    import torch

    import cimflow
    from cimflow.compile.tiers import SRAM, count_accesses, place_tables, tier_capacities_rows
    from cimflow.recsys.train import evaluate_auc
    from cimflow.sim.convert import convert_model

    model, splits, test, fp32 = _movielens(space.accuracy.seed)
    pairs = splits.train.sparse.per_feature()
    dim = model.config.embedding_dim
    accesses = [count_accesses(f"embeddings.{k}", size, dim, [values])
                for k, (size, (values, _)) in enumerate(zip(splits.train.table_sizes, pairs, strict=True))]
    ex_dense, ex_sparse, _ = test.take(torch.arange(min(64, len(test.labels))))
    plan = cimflow.compile(model, chip, (ex_dense, ex_sparse.per_feature()), rules=mapping.rules, replicate=mapping.replicate)
    caps = tier_capacities_rows(chip, dim, plan)
    caps[SRAM] = int(caps.get(SRAM, 0) * mapping.hot_tier_fraction)
    placements = place_tables(accesses, chip, plan, capacities=caps)
    hot = {p.table: p.hot_rows for p in placements}
    cim, _ = convert_model(model, chip, plan=plan, hot_rows=hot)
    cim.eval()
    return _over_instances(cim, lambda m: evaluate_auc(m, test), space), fp32, "AUC (MovieLens-100k DLRM, held-out test split)"


__all__ = ["UNSIMULATED", "Mapping", "apply_design", "evaluate_accuracy", "evaluate_cost"]
