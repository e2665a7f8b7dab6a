"""Host baselines: CPU/GPU presets, a roofline estimate of a model's ops, and a measured mode.

**Roofline** (:func:`roofline`): every operator of a captured graph runs on a
:class:`HostSpec` one after another; an op takes ``max(flops / peak_flops, bytes /
memory_bandwidth)`` (plus ``op_overhead_s`` when it does any work). Energy is the host's
power (its TDP: an upper bound for the package) times that time, plus the memory traffic
that leaves the package: ``dram_bits * memory_energy_per_bit_j + row activations *
row_activation_j``. What an op moves and computes is :func:`op_work`.

**Measured** (:func:`measure_host`): the same PyTorch model is timed on this machine (median
of ``repeats`` calls after warm-up, ``torch.inference_mode``, an explicit thread count).
Energy per inference comes from, in this order:

1. ``power_w`` given by the caller (``power_source = "user"``), times the median latency;
2. Linux RAPL package counters under ``/sys/class/powercap/intel-rapl:N/energy_uj``, read
   before and after the timed calls, counter wrap corrected (``"rapl"``); RAPL measures
   the whole package, not only this process;
3. the preset's power (``"preset"``): for a CPU, the share of its TDP of the threads used
   (``power_w * threads / cores``, an assumption), for a GPU its whole TDP.

The result always carries ``power_source`` and a ``power_note`` that says which number
was used. Energies in joules, times in seconds, bandwidths in bytes per second.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from cimflow.chip.spec import Chip, Host
from cimflow.compile.graph import Graph, Op, OpKind
from cimflow.errors import CimflowError
from cimflow.fileio import json_safe
from cimflow.power import RaplMeter, cpu_name

PowerSource = Literal["user", "rapl", "preset"]

#: Operator types that read rows of a table (one random DRAM access per looked-up row).
EMBEDDING_TYPES = ("Embedding", "EmbeddingBag")
#: Smallest DRAM transfer of a random row read: one 64-byte cache line.
CACHE_LINE_BYTES = 64


#: Ranges of a HostSpec's numbers, the chip schema's ``host:`` bounds in SI units: 1 MFLOP/s to
#: 1 EFLOP/s, 1 kB/s to 1 PB/s, 1 mW to 1 MW, 1 to 1e7 cores, at most 1 uJ per bit or activation,
#: at most 1 s of dispatch per op.
HOST_BOUNDS: dict[str, tuple[float, float]] = {
    "peak_flops": (1e6, 1e18), "memory_bandwidth_bytes_per_s": (1e3, 1e15), "power_w": (1e-3, 1e6),
    "cores": (1, 1e7), "memory_energy_per_bit_j": (0.0, 1e-6), "row_activation_j": (0.0, 1e-6), "op_overhead_s": (0.0, 1.0),
}


@dataclass(frozen=True)
class HostSpec:
    """A host processor for baselines and for the operators a plan leaves on the host.

    Attributes:
        name: preset key.
        kind: ``"cpu"`` or ``"gpu"``.
        description: what it is.
        peak_flops: FP32 peak, FLOP/s (no tensor cores: PyTorch matmuls run in FP32 by default).
        memory_bandwidth_bytes_per_s: peak DRAM/HBM bandwidth, bytes/s.
        power_w: thermal design power, watts (used as the active power).
        cores: CPU cores (or GPU SMs), for the share of power a measured run uses.
        memory_energy_per_bit_j: DRAM/HBM access energy per bit, joules.
        row_activation_j: energy of one random DRAM row activation, joules.
        op_overhead_s: fixed time added to every op that does work (dispatch/launch), s.
        source: where the numbers come from.
    """

    name: str
    kind: Literal["cpu", "gpu"]
    description: str
    peak_flops: float
    memory_bandwidth_bytes_per_s: float
    power_w: float
    cores: int
    memory_energy_per_bit_j: float
    row_activation_j: float
    op_overhead_s: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        for name, (low, high) in HOST_BOUNDS.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high):
                raise CimflowError(f"host {self.name!r}: {name} must be a number within [{low:g}, {high:g}], got {value!r}")
        if not isinstance(self.cores, int) or isinstance(self.cores, bool):
            raise CimflowError(f"host {self.name!r}: cores must be an integer, got {self.cores!r}")
        if self.kind not in ("cpu", "gpu"):
            raise CimflowError(f"host {self.name!r}: kind must be 'cpu' or 'gpu', got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: DDR4 access energy: 20 pJ/bit, the low end of Horowitz's 20-40 pJ/bit (ISSCC 2014).
DDR_ENERGY_PER_BIT_J = 20e-12
#: HBM2 access energy: ~3.9 pJ/bit (O'Connor et al., "Fine-Grained DRAM", MICRO 2017).
HBM_ENERGY_PER_BIT_J = 3.9e-12
#: One random row activation (ACT + PRE): ~1 nJ, an assumption (as in hybrid-rram-sram-28nm.yaml).
ROW_ACTIVATION_J = 1e-9

HOST_PRESETS: dict[str, HostSpec] = {
    spec.name: spec
    for spec in (
        HostSpec(
            name="server-cpu-2s",
            kind="cpu",
            description="2-socket Intel Xeon Platinum 8380 (Ice Lake-SP, 2 x 40 cores, 2.3 GHz, 16 ch. DDR4-3200)",
            # 80 cores x 2.3 GHz x 2 AVX-512 FMA units x 16 FP32 lanes x 2 FLOP = 11.8 TFLOP/s
            # (base clock; AVX-512 clocks run lower, so this is an upper bound).
            peak_flops=80 * 2.3e9 * 2 * 16 * 2,
            # 8 channels DDR4-3200 per socket: 8 x 25.6 GB/s = 204.8 GB/s, two sockets.
            memory_bandwidth_bytes_per_s=2 * 8 * 25.6e9,
            power_w=2 * 270.0,
            cores=80,
            memory_energy_per_bit_j=DDR_ENERGY_PER_BIT_J,
            row_activation_j=ROW_ACTIVATION_J,
            source="Intel ARK, Xeon Platinum 8380: 40 cores, 2.3 GHz base, 270 W TDP, 8 x DDR4-3200; peak FLOP/s derived (see comment)",
        ),
        HostSpec(
            name="laptop-cpu",
            kind="cpu",
            description="Intel Core i7-1185G7 (Tiger Lake, 4 cores, 3.0 GHz at 28 W, LPDDR4x-4266)",
            # 4 cores x 3.0 GHz x 1 AVX-512 FMA unit x 16 FP32 lanes x 2 FLOP = 384 GFLOP/s.
            peak_flops=4 * 3.0e9 * 16 * 2,
            # 128-bit LPDDR4x-4266: 4266 MT/s x 16 B = 68.3 GB/s.
            memory_bandwidth_bytes_per_s=4266e6 * 16,
            power_w=28.0,
            cores=4,
            memory_energy_per_bit_j=DDR_ENERGY_PER_BIT_J,
            row_activation_j=ROW_ACTIVATION_J,
            source="Intel ARK, Core i7-1185G7: 4 cores, 3.0 GHz at 28 W (configurable TDP-up), LPDDR4x-4266; peak FLOP/s derived",
        ),
        HostSpec(
            name="nvidia-a100",
            kind="gpu",
            description="NVIDIA A100 SXM4 80 GB (108 SMs, HBM2e)",
            peak_flops=19.5e12,  # FP32 (non-tensor); TF32 tensor cores: 156 TFLOP/s dense
            memory_bandwidth_bytes_per_s=2039e9,
            power_w=400.0,
            cores=108,
            memory_energy_per_bit_j=HBM_ENERGY_PER_BIT_J,
            row_activation_j=ROW_ACTIVATION_J,
            source="NVIDIA A100 Tensor Core GPU datasheet: 19.5 TFLOP/s FP32, 2,039 GB/s HBM2e, 400 W (SXM4 80 GB)",
        ),
        HostSpec(
            name="nvidia-h100",
            kind="gpu",
            description="NVIDIA H100 SXM5 80 GB (132 SMs, HBM3)",
            peak_flops=67e12,  # FP32 (non-tensor); TF32 tensor cores: ~495 TFLOP/s dense
            memory_bandwidth_bytes_per_s=3.35e12,
            power_w=700.0,
            cores=132,
            memory_energy_per_bit_j=HBM_ENERGY_PER_BIT_J,
            row_activation_j=ROW_ACTIVATION_J,
            source="NVIDIA H100 Tensor Core GPU datasheet: 67 TFLOP/s FP32, 3.35 TB/s HBM3, up to 700 W (SXM5)",
        ),
    )
}

DEFAULT_HOST = "server-cpu-2s"


def host_presets() -> list[str]:
    """Names of the host presets."""
    return sorted(HOST_PRESETS)


def host_from_chip(block: Host) -> HostSpec:
    """The :class:`HostSpec` a chip's ``host:`` block describes: its preset (if any) with the
    block's fields overriding it, converted from the schema's units."""

    def scaled(value: float | None, factor: float) -> float | None:
        return None if value is None else value * factor

    overrides: dict[str, Any] = {
        "kind": block.kind,
        "peak_flops": scaled(block.peak_gflops, 1e9),
        "memory_bandwidth_bytes_per_s": scaled(block.memory_bandwidth_gb_per_s, 1e9),
        "power_w": block.power_w,
        "cores": block.cores,
        "memory_energy_per_bit_j": scaled(block.memory_energy_per_bit_pj, 1e-12),
        "row_activation_j": scaled(block.row_activation_pj, 1e-12),
        "op_overhead_s": scaled(block.op_overhead_us, 1e-6),
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    labels: dict[str, Any] = {key: value for key, value in (("name", block.name), ("source", block.source)) if value is not None}
    if block.preset is not None:
        base = resolve_host(block.preset)
        if overrides and "name" not in labels:
            labels["name"] = f"{base.name} (modified by the chip)"
        return replace(base, **overrides, **labels)
    defaults: dict[str, Any] = {"kind": "cpu", "description": "the chip's host", "cores": 1,
                "memory_energy_per_bit_j": DDR_ENERGY_PER_BIT_J, "row_activation_j": ROW_ACTIVATION_J}
    return HostSpec(**{**defaults, **overrides, **labels})


def resolve_host(host: HostSpec | str | None, chip: Chip | None = None) -> HostSpec:
    """A :class:`HostSpec` from a preset name or a spec; ``None``: the chip's ``host:`` block
    when it has one, else :data:`DEFAULT_HOST`."""
    if host is None:
        if chip is not None and chip.host is not None:
            return host_from_chip(chip.host)
        return HOST_PRESETS[DEFAULT_HOST]
    if isinstance(host, HostSpec):
        return host
    if isinstance(host, str) and host in HOST_PRESETS:
        return HOST_PRESETS[host]
    raise CimflowError(f"unknown host {host!r}; host presets are {host_presets()} (or pass a cimflow.cost.host.HostSpec)")


# ----------------------------------------------------------------------------- roofline

@dataclass(frozen=True)
class HostOpWork:
    """What one operator costs a host per inference: FP operations, bytes moved between
    memory and the processor, and the part of those that is DRAM traffic (bits, random
    row activations)."""

    name: str
    flops: float = 0.0
    bytes: float = 0.0
    dram_bits: float = 0.0
    dram_activations: float = 0.0

    @property
    def has_work(self) -> bool:
        return self.flops > 0 or self.bytes > 0


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape else 0


def op_work(op: Op, bytes_per_value: int = 4) -> HostOpWork:
    """Host work of one graph op (values of ``bytes_per_value`` bytes, FP32 by default).

    * embedding lookups: ``lookups * dim`` adds; each looked-up row is one random DRAM
      access of ``max(dim * bytes, 64)`` bytes (one row activation per row);
    * static MVMs: ``2 * macs`` FLOP; the weights stream from DRAM once per inference (no
      cache reuse across inferences is assumed) plus input and output vectors;
    * dynamic matmuls: ``2 * macs`` FLOP, three operand-sized tensors moved;
    * vector ops: one FLOP per element, elements read and written;
    * data movement and graph boundary: free (views);
    * unknown ops: the larger of ``2 * macs`` and the element count, weights and elements moved.
    """
    kind = op.kind
    b = bytes_per_value
    out = _numel(op.output_shape)
    elements = int(op.attributes.get("elements", 0) or 0) or out
    if kind in (OpKind.INPUT, OpKind.OUTPUT, OpKind.DATA_MOVEMENT):
        return HostOpWork(op.name)
    if kind == OpKind.STATIC_MVM and op.op_type in EMBEDDING_TYPES:
        dim = op.weight_shape[1] if op.weight_shape and len(op.weight_shape) == 2 else 1
        lookups = float(op.attributes.get("lookups", 0) or op.mvm_count)
        row_bytes = dim * b
        return HostOpWork(op.name, flops=lookups * dim, bytes=lookups * max(row_bytes, CACHE_LINE_BYTES) + out * b,
                          dram_bits=lookups * row_bytes * 8, dram_activations=lookups)
    if kind == OpKind.STATIC_MVM:
        weights = _numel(op.weight_shape) or op.params
        vectors_in = op.mvm_count * (op.weight_shape[0] if op.weight_shape else 0)
        return HostOpWork(op.name, flops=2.0 * op.macs, bytes=(weights + vectors_in + out) * b, dram_bits=weights * b * 8)
    if kind == OpKind.DYNAMIC_MATMUL:
        return HostOpWork(op.name, flops=2.0 * op.macs, bytes=3.0 * max(elements, out) * b)
    if kind == OpKind.VECTOR:
        return HostOpWork(op.name, flops=float(elements), bytes=2.0 * elements * b)
    flops = max(2.0 * op.macs, float(elements))
    return HostOpWork(op.name, flops=flops, bytes=(op.params + 2 * elements) * b, dram_bits=op.params * b * 8)


def op_time_s(work: HostOpWork, host: HostSpec) -> float:
    """Roofline time of one op on ``host``: ``max(flops / peak, bytes / bandwidth)`` (+ overhead)."""
    if not work.has_work:
        return 0.0
    return max(work.flops / host.peak_flops, work.bytes / host.memory_bandwidth_bytes_per_s) + host.op_overhead_s


def op_memory_energy_j(work: HostOpWork, energy_per_bit_j: float, row_activation_j: float) -> float:
    """DRAM energy of an op's traffic: bits x energy per bit + activations x activation energy (J)."""
    return work.dram_bits * energy_per_bit_j + work.dram_activations * row_activation_j


class _Rates:
    """Rates of one inference (``batch_size`` queries) shared by the host results."""

    latency_s: float
    batch_size: int

    @property
    def inference_energy_j(self) -> float:
        raise NotImplementedError

    @property
    def throughput_per_s(self) -> float:
        return 1.0 / self.latency_s if self.latency_s > 0 else math.inf

    @property
    def qps(self) -> float:
        return self.batch_size * self.throughput_per_s

    @property
    def energy_per_query_j(self) -> float:
        return self.inference_energy_j / self.batch_size

    @property
    def qps_per_w(self) -> float:
        return self.batch_size / self.inference_energy_j if self.inference_energy_j > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d.update(throughput_per_s=self.throughput_per_s, qps=self.qps, energy_per_query_j=self.energy_per_query_j,
                 qps_per_w=self.qps_per_w)
        return json_safe(d)


@dataclass
class HostEstimate(_Rates):
    """A roofline estimate of one inference (one forward of the example inputs) on a host."""

    host: str
    latency_s: float
    energy_j: float
    compute_energy_j: float
    memory_energy_j: float
    flops: float
    bytes: float
    batch_size: int
    per_op: list[dict[str, Any]] = field(default_factory=list)
    power_source: str = "preset"
    method: str = "roofline"

    @property
    def inference_energy_j(self) -> float:
        return self.energy_j


def infer_batch_size(graph: Graph) -> int:
    """Samples per forward: the leading dimension of the first graph input with at least two
    dimensions (1 when no input has a shape)."""
    for name in graph.inputs:
        shape = graph.op(name).output_shape
        if shape and len(shape) >= 2:
            return int(shape[0])
    return 1


def roofline(graph: Graph | Any, host: HostSpec | str | None = None, batch_size: int | None = None,
             bytes_per_value: int = 4) -> HostEstimate:
    """Roofline estimate of the whole model (a :class:`Graph`, or a Plan's graph) on ``host``:
    ops one after another, each ``max(flops/peak, bytes/bandwidth)``; energy = power x time +
    DRAM traffic energy (see the module docstring)."""
    graph = getattr(graph, "graph", graph)
    if not isinstance(graph, Graph):
        raise CimflowError(f"roofline needs a cimflow Graph or Plan, got {type(graph).__name__}")
    spec = resolve_host(host)
    per_op = []
    total_t = flops = moved = mem_e = 0.0
    for op in graph.ops:
        work = op_work(op, bytes_per_value)
        if not work.has_work:
            continue
        t = op_time_s(work, spec)
        e_mem = op_memory_energy_j(work, spec.memory_energy_per_bit_j, spec.row_activation_j)
        bound = "compute" if work.flops / spec.peak_flops >= work.bytes / spec.memory_bandwidth_bytes_per_s else "memory"
        per_op.append({"name": op.name, "op_type": op.op_type, "flops": work.flops, "bytes": work.bytes, "latency_s": t,
                       "bound": bound, "memory_energy_j": e_mem})
        total_t += t
        flops += work.flops
        moved += work.bytes
        mem_e += e_mem
    compute_e = spec.power_w * total_t
    return HostEstimate(host=spec.name, latency_s=total_t, energy_j=compute_e + mem_e, compute_energy_j=compute_e,
                        memory_energy_j=mem_e, flops=flops, bytes=moved,
                        batch_size=batch_size if batch_size is not None else infer_batch_size(graph), per_op=per_op)


# ----------------------------------------------------------------------------- RAPL

# ----------------------------------------------------------------------------- measured

@dataclass
class HostMeasurement(_Rates):
    """One measured baseline: ``latency_s`` is the median wall time of one forward call of the
    example inputs (``batch_size`` samples); ``qps`` = batch_size / latency_s."""

    device: str
    processor: str
    threads: int
    batch_size: int
    repeats: int
    latency_s: float
    latency_p90_s: float
    power_w: float
    power_source: PowerSource
    power_note: str
    energy_per_inference_j: float

    @property
    def inference_energy_j(self) -> float:
        return self.energy_per_inference_j


def _processor_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def _to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _first_tensor(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    items: Iterable[Any] = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def measure_host(model: Any, example_inputs: Any, repeats: int = 20, threads: int | None = None,
                 power_w: float | None = None, warmup: int = 3, device: str = "cpu",
                 host: HostSpec | str | None = None, batch_size: int | None = None,
                 rapl_root: str | os.PathLike[str] = "/sys/class/powercap") -> HostMeasurement:
    """Time ``model(*example_inputs)`` in PyTorch on this machine and derive its energy.

    ``example_inputs``: a tensor or a tuple of positional arguments. ``threads``: torch CPU
    threads for the run (default: the current setting). ``batch_size``: samples per call
    (default: the first input tensor's leading dimension). ``host``: the preset whose power
    is the last fallback (default ``server-cpu-2s`` on CPU, ``nvidia-h100`` on CUDA).
    The module docstring lists the three power sources; ``power_source`` says which was used.
    """
    import torch

    if repeats < 1 or warmup < 0:
        raise CimflowError(f"measure_host needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if power_w is not None and not (math.isfinite(power_w) and power_w > 0):
        raise CimflowError(f"power_w must be a finite number of watts > 0, got {power_w!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CimflowError(f"device {device!r} asked for, but torch sees no CUDA device; use device='cpu'")
    spec = resolve_host(host if host is not None else ("nvidia-h100" if device.startswith("cuda") else DEFAULT_HOST))
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    args = _to_device(args, device)
    model = model.to(device).eval()
    if batch_size is None:
        first = _first_tensor(args)
        batch_size = int(first.shape[0]) if first is not None and first.dim() >= 1 else 1
    previous_threads = torch.get_num_threads()
    used_threads = threads or previous_threads
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    rapl = RaplMeter(rapl_root) if power_w is None and not device.startswith("cuda") else None
    try:
        torch.set_num_threads(used_threads)
        with torch.inference_mode():
            for _ in range(warmup):
                model(*args)
            sync()
            before = rapl.read() if rapl else None
            start_all = time.perf_counter()
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(*args)
                sync()
                times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start_all
            after = rapl.read() if rapl and before is not None else None
    finally:
        torch.set_num_threads(previous_threads)
    latency = statistics.median(times)
    p90 = sorted(times)[min(len(times) - 1, int(math.ceil(0.9 * len(times))) - 1)]
    source: PowerSource
    if power_w is not None:
        source, power, note = "user", float(power_w), f"{power_w:g} W given by the caller"
        energy = power * latency
    elif rapl is not None and before is not None and after is not None and rapl.joules_between(before, after) > 0:
        joules = rapl.joules_between(before, after)
        source, power = "rapl", joules / elapsed
        energy = joules / repeats
        note = f"RAPL package energy over {repeats} calls ({len(rapl.zones)} package zone(s)), whole package"
    else:
        source = "preset"
        if spec.kind == "cpu":
            share = min(1.0, used_threads / spec.cores)
            power = spec.power_w * share
            note = f"preset {spec.name}: {spec.power_w:g} W TDP x {used_threads}/{spec.cores} cores used (assumption; RAPL not readable)"
        else:
            power = spec.power_w
            note = f"preset {spec.name}: {spec.power_w:g} W TDP"
        energy = power * latency
    return HostMeasurement(device=device, processor=_processor_name(device), threads=used_threads, batch_size=batch_size,
                           repeats=repeats, latency_s=latency, latency_p90_s=p90, power_w=power, power_source=source,
                           power_note=note, energy_per_inference_j=energy)


__all__ = [
    "DEFAULT_HOST", "HOST_PRESETS", "HostEstimate", "HostMeasurement", "HostOpWork", "HostSpec", "RaplMeter",
    "host_presets", "infer_batch_size", "measure_host", "op_memory_energy_j", "op_time_s", "op_work", "resolve_host",
    "roofline",
]
