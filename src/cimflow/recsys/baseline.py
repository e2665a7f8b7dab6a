"""CPU baseline: measured plain-PyTorch DLRM inference throughput, latency and energy.

* :func:`measure_dlrm_cpu` — the fair baseline at realistic scale: a DLRM of a given
  shape with tables far larger than the last-level cache (scaled by one recorded factor
  only past a memory budget), Zipf-skewed pre-generated lookups cycled so rows are not
  always cache-hot, ``torch.utils.benchmark`` timing at fixed threads under
  ``torch.inference_mode``, back-to-back rounds reported with their spread;
* :func:`measure_cpu_baseline` — any given model (e.g. a small trained one): warm-up,
  then the *median* call time over at least ``repeats`` calls, ``QPS = batch / median``.

Both take their power from one of three sources, recorded in ``power_source``:
``"user"`` — the ``power_w`` you pass (e.g. a wall-meter reading), which wins;
``"rapl"`` — Linux RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``,
read before and after the timed calls, wrap handled; the whole package, not only this
process; sub-zones ``intel-rapl:N:M`` are not added again), when readable and advancing;
``"preset"`` — a fixed assumed power, :data:`PRESET_CPU_POWER_W` unless given.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.benchmark import Timer

from cimflow.errors import CimflowError
from cimflow.power import RaplMeter, cpu_name
from cimflow.recsys.jagged import JaggedFeatures
from cimflow.recsys.models import DLRMConfig
from cimflow.recsys.scaled_model import (
    Pairs,
    build_scaled_dlrm,
    input_pool,
    scale_tables,
    shape_name,
    split_pool,
)
from cimflow.recsys.synthetic import SyntheticCriteo

__all__ = [
    "PRESET_CPU_POWER_W",
    "BatchMeasurement",
    "CpuBaseline",
    "RaplMeter",
    "ScaledBatchResult",
    "ScaledCpuBaseline",
    "llc_bytes",
    "measure_cpu_baseline",
    "measure_dlrm_cpu",
    "scale_tables",
]

#: Assumed CPU package power when nothing better is known: 150 W, a typical
#: per-socket TDP of current two-socket server CPUs. An assumption, not a measurement;
#: pass ``power_w`` or run where RAPL is readable for a real number.
PRESET_CPU_POWER_W = 150.0

PowerSource = Literal["rapl", "user", "preset"]
InputFactory = Callable[[int, int], tuple[Tensor, JaggedFeatures | list[tuple[Tensor, Tensor]]]]


@dataclass(frozen=True)
class BatchMeasurement:
    """Results at one batch size (SI units).

    Attributes:
        batch_size: samples per forward call.
        latency_s: median wall time of one forward call (s).
        latency_p90_s: 90th percentile of the call times (s).
        qps: queries (samples) per second, ``batch_size / latency_s``.
        power_w: power used for the energy figures (W): given, preset, or the RAPL
            average over the timed calls.
        joules_per_query: energy per sample (J).
        qps_per_watt: ``qps / power_w`` = ``1 / joules_per_query`` (queries per joule).
        calls: timed forward calls.
    """

    batch_size: int
    latency_s: float
    latency_p90_s: float
    qps: float
    power_w: float
    joules_per_query: float
    qps_per_watt: float
    calls: int


@dataclass(frozen=True)
class CpuBaseline:
    """A CPU baseline measurement.

    Attributes:
        per_batch: one :class:`BatchMeasurement` per batch size, keyed by batch size.
        threads: torch intra-op threads used.
        power_source: ``"rapl"``, ``"user"`` or ``"preset"``.
        cpu: the CPU model name (from /proc/cpuinfo where available).
        torch_version: the torch version measured.
    """

    per_batch: dict[int, BatchMeasurement]
    threads: int
    power_source: PowerSource
    cpu: str
    torch_version: str

    @property
    def batch_sizes(self) -> list[int]:
        """Measured batch sizes, ascending."""
        return sorted(self.per_batch)


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _open_meter(power_w: float | None, use_rapl: bool, rapl_root: str | Path) -> RaplMeter | None:
    """The RAPL meter to read, or None when the user gave a power or RAPL is unreadable."""
    if power_w is not None or not use_rapl:
        return None
    meter = RaplMeter(rapl_root)
    return meter if meter.available else None


def _rapl_joules(meter: RaplMeter | None, before: list[int] | None, after: list[int] | None) -> float:
    """Package energy (J) between two readings; 0 when there is no meter or a reading failed."""
    if meter is None or before is None or after is None:
        return 0.0
    return meter.joules_between(before, after)


def _fixed_power(power_w: float | None, preset_power_w: float) -> tuple[PowerSource, float]:
    """The power used when RAPL gives nothing: the user's, else the preset."""
    return ("user", power_w) if power_w is not None else ("preset", preset_power_w)


def _default_inputs(model: nn.Module) -> InputFactory:
    config = getattr(model, "config", None)
    if config is None:
        raise CimflowError("measure_cpu_baseline needs make_inputs for a model without a DLRMConfig .config")
    generator = SyntheticCriteo.from_config(config, seed=0)

    def make(batch_size: int, index: int) -> tuple[Tensor, JaggedFeatures]:
        dense, sparse, _ = generator.batch(batch_size, index)
        return dense, sparse

    return make


def _prepared(model: nn.Module, dense: Tensor, sparse: object) -> tuple[Tensor, object]:
    """Validate jagged inputs once and pass (values, offsets) pairs, so the timed calls
    measure inference only (no per-call index checks)."""
    if isinstance(sparse, JaggedFeatures):
        config = getattr(model, "config", None)
        if config is not None:
            sparse.validate(config.table_sizes)
        return dense, sparse.per_feature()
    return dense, sparse


def _time_calls(
    model: nn.Module, inputs: list[tuple[Tensor, object]], warmup: int, repeats: int, min_time_s: float
) -> list[float]:
    for i in range(warmup):
        dense, sparse = inputs[i % len(inputs)]
        model(dense, sparse)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_time_s:
        dense, sparse = inputs[len(times) % len(inputs)]
        t0 = time.perf_counter()
        model(dense, sparse)
        times.append(time.perf_counter() - t0)
    return times


def measure_cpu_baseline(
    model: nn.Module,
    batch_sizes: Sequence[int] = (1, 64, 1024),
    threads: int | None = None,
    make_inputs: InputFactory | None = None,
    warmup: int = 5,
    repeats: int = 20,
    min_time_s: float = 0.2,
    distinct_batches: int = 4,
    power_w: float | None = None,
    preset_power_w: float = PRESET_CPU_POWER_W,
    use_rapl: bool = True,
    rapl_root: str | Path = "/sys/class/powercap",
) -> CpuBaseline:
    """Measure plain-PyTorch inference of ``model`` on this CPU.

    Args:
        model: a DLRM (or any module called as ``model(dense, sparse)``).
        batch_sizes: samples per call to measure.
        threads: torch intra-op threads (default: ``os.cpu_count()``); restored after.
        make_inputs: ``(batch_size, index) -> (dense, sparse)``; default: synthetic
            Zipf batches shaped by ``model.config``.
        warmup: untimed calls per batch size.
        repeats: minimum timed calls per batch size; more are made until ``min_time_s``
            has passed (so RAPL, updated about every millisecond, sees enough energy).
        distinct_batches: different input batches cycled through.
        power_w: your measured CPU power (W); makes ``power_source == "user"``.
        preset_power_w: the assumed power when neither ``power_w`` nor RAPL is available.
        use_rapl: try Linux RAPL when ``power_w`` is not given.
        rapl_root: where the powercap zones live (tests point it elsewhere).

    Raises:
        CimflowError: bad batch sizes, repeats, threads or powers.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise CimflowError(f"batch_sizes must be >= 1, got {list(batch_sizes)}")
    if repeats < 1 or warmup < 0 or distinct_batches < 1:
        raise CimflowError("need repeats >= 1, warmup >= 0 and distinct_batches >= 1")
    if (power_w is not None and power_w <= 0) or preset_power_w <= 0:
        raise CimflowError(f"powers must be > 0 W, got power_w={power_w}, preset_power_w={preset_power_w}")
    threads = int(threads or os.cpu_count() or 1)
    if threads < 1:
        raise CimflowError(f"threads must be >= 1, got {threads}")
    factory = make_inputs or _default_inputs(model)
    meter = _open_meter(power_w, use_rapl, rapl_root)

    results: dict[int, BatchMeasurement] = {}
    sources: set[str] = set()
    was_training = model.training
    model.eval()
    try:
        with _threads(threads), torch.inference_mode():
            for batch_size in batch_sizes:
                inputs = [_prepared(model, *factory(batch_size, i)) for i in range(distinct_batches)]
                before = meter.read() if meter is not None else None
                wall_start = time.perf_counter()
                times = _time_calls(model, inputs, warmup, repeats, min_time_s)
                wall = time.perf_counter() - wall_start
                after = meter.read() if meter is not None else None
                latency = statistics.median(times)
                queries = batch_size * len(times)
                energy = _rapl_joules(meter, before, after)
                if energy > 0:
                    source, power, joules = "rapl", energy / wall, energy / queries
                else:
                    source, power = _fixed_power(power_w, preset_power_w)
                    joules = power * latency / batch_size
                sources.add(source)
                ordered = sorted(times)
                results[batch_size] = BatchMeasurement(
                    batch_size=batch_size,
                    latency_s=latency,
                    latency_p90_s=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                    qps=batch_size / latency,
                    power_w=power,
                    joules_per_query=joules,
                    qps_per_watt=1.0 / joules,
                    calls=len(times),
                )
    finally:
        model.train(was_training)
    # one source for the whole result: RAPL only if it worked at every batch size
    power_source: PowerSource = "rapl" if sources == {"rapl"} else _fixed_power(power_w, preset_power_w)[0]
    if power_source != "rapl" and "rapl" in sources:
        fallback = _fixed_power(power_w, preset_power_w)[1]
        results = {
            b: BatchMeasurement(
                m.batch_size, m.latency_s, m.latency_p90_s, m.qps, fallback,
                fallback * m.latency_s / m.batch_size, m.batch_size / (fallback * m.latency_s), m.calls,
            )
            for b, m in results.items()
        }  # fmt: skip
    return CpuBaseline(
        per_batch=results,
        threads=threads,
        power_source=power_source,
        cpu=cpu_name(),
        torch_version=torch.__version__,
    )


# ============================================================================ scaled DLRM baseline
#: Lookups pre-generated per measurement when ``pool_lookups`` is not given: twice the
#: last-level cache in 64-byte lines, at least :data:`MIN_POOL_LOOKUPS` and at most
#: :data:`MAX_POOL_LOOKUPS` (8 M lookups hold about 130 MB of int64 indices and as many offsets).
MIN_POOL_LOOKUPS = 1 << 20
MAX_POOL_LOOKUPS = 8 << 20
_CACHE_LINE_BYTES = 64


@dataclass(frozen=True)
class ScaledBatchResult:
    """One batch size of :func:`measure_dlrm_cpu` (SI units).

    Attributes:
        batch_size: samples per forward call.
        qps_rounds: QPS of each round, in the order measured (``batch / median call time``).
        qps_min, qps_median, qps_max: over the rounds.
        spread: ``(qps_max - qps_min) / qps_median``.
        latency_s: call time at the median QPS (s), ``batch_size / qps_median``.
        power_w: power behind the energy figures (W): the median RAPL reading over the
            rounds, or the user's / the preset's.
        joules_per_query: ``power_w * latency_s / batch_size`` (J).
        qps_per_w: ``qps_median / power_w`` (queries per joule).
        cpu_qps_rounds: queries per CPU-second of this process (all its threads, from
            ``time.process_time``) in each round: what one fully busy core delivers. Time a
            thread waits for a core is not counted (nor, with ``OMP_WAIT_POLICY=PASSIVE``,
            barrier waiting), so other processes move it less than wall-clock QPS; their
            cache and memory-bandwidth use, and hypervisor steal, still move it.
            ``cpu_qps_median * threads`` bounds the uncontended wall-clock QPS from above.
        cpu_qps_median, cpu_spread: their median and ``(max - min) / median``.
    """

    batch_size: int
    qps_rounds: tuple[float, ...]
    qps_min: float
    qps_median: float
    qps_max: float
    spread: float
    latency_s: float
    power_w: float
    joules_per_query: float
    qps_per_w: float
    cpu_qps_rounds: tuple[float, ...]
    cpu_qps_median: float
    cpu_spread: float


@dataclass(frozen=True)
class ScaledCpuBaseline:
    """A measured plain-PyTorch DLRM baseline at realistic table scale (see :func:`measure_dlrm_cpu`).

    Attributes:
        shape: ``"criteo-kaggle"`` / ``"dlrm-v2"`` when the config is one of those shapes, else None.
        batch_sizes: measured batch sizes, in the order given.
        per_batch: one :class:`ScaledBatchResult` per batch size.
        threads: torch intra-op threads used.
        rounds: back-to-back timing rounds per batch size.
        cpu: CPU model name.
        torch_version: torch version measured.
        num_tables: embedding tables.
        table_scale: factor applied to every table's rows (1.0 = full shape).
        table_bytes: fp32 bytes of the tables actually allocated.
        full_table_bytes: fp32 bytes of the tables at the full shape.
        llc_bytes: last-level cache of CPU 0 (bytes), None where sysfs does not say.
        skew: Zipf exponent of the lookups (0 = uniform).
        pool_lookups: distinct pre-generated lookups cycled through per batch size.
        power_source: ``"rapl"``, ``"user"`` or ``"preset"``.
        load_average: ``os.getloadavg()`` (1, 5, 15 min) when the timing started; a
            load near or above the core count means other work shared the CPUs.
    """

    shape: str | None
    batch_sizes: tuple[int, ...]
    per_batch: dict[int, ScaledBatchResult]
    threads: int
    rounds: int
    cpu: str
    torch_version: str
    num_tables: int
    table_scale: float
    table_bytes: int
    full_table_bytes: int
    llc_bytes: int | None
    skew: float
    pool_lookups: int
    power_source: PowerSource
    load_average: tuple[float, float, float]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able data (per-batch results keyed by the batch size as a string)."""
        out: dict[str, object] = {k: v for k, v in vars(self).items() if k != "per_batch"}
        out["batch_sizes"] = list(self.batch_sizes)
        out["load_average"] = list(self.load_average)
        out["per_batch"] = {
            str(b): {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(m).items()}
            for b, m in self.per_batch.items()
        }
        out["description"] = self.describe()
        return out

    def describe(self, batch_size: int | None = None) -> str:
        """One line: what was measured and the median QPS with its spread (largest batch by default)."""
        batch = max(self.batch_sizes) if batch_size is None else batch_size
        m = self.per_batch[batch]
        shape = f" ({self.shape})" if self.shape else ""
        size = _bytes_text(self.table_bytes)
        tables = (
            f"{self.num_tables} tables scaled x{self.table_scale:.3g} to {size}"
            if self.table_scale < 1.0 else f"{self.num_tables} tables at full shape, {size}"
        )  # fmt: skip
        llc = f" (LLC {_bytes_text(self.llc_bytes)})" if self.llc_bytes else ""
        return (
            f"plain PyTorch DLRM{shape}, {tables}{llc}, Zipf skew {self.skew:g}, batch {batch}, "
            f"{self.threads} thread{'s' if self.threads != 1 else ''}, median of {self.rounds} round"
            f"{'s' if self.rounds != 1 else ''}: {m.qps_median:,.0f} QPS, spread {100 * m.spread:.1f} % "
            f"({m.cpu_qps_median:,.0f} per CPU-second, spread {100 * m.cpu_spread:.1f} %), "
            f"{m.qps_per_w:,.0f} QPS/W ({self.power_source} power {m.power_w:.0f} W)"
        )


def _bytes_text(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def llc_bytes(cache_root: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size of CPU 0's last-level data or unified cache (bytes) from sysfs, or None."""
    best: tuple[int, int] | None = None
    with contextlib.suppress(OSError):
        for index in Path(cache_root).glob("index*"):
            try:
                level = int((index / "level").read_text().strip())
                kind = (index / "type").read_text().strip() if (index / "type").exists() else "Unified"
                text = (index / "size").read_text().strip().upper()
                multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                size = int(text.rstrip("KMG")) * multiplier
            except (OSError, ValueError):
                continue
            if kind != "Instruction" and (best is None or (level, size) > best):
                best = (level, size)
    return best[1] if best else None


def measure_dlrm_cpu(
    config: DLRMConfig,
    *,
    skew: float,
    batch_sizes: Sequence[int] = (256, 2048),
    threads: int = 2,
    memory_budget_bytes: int = 3 << 30,
    rounds: int = 3,
    min_run_time_s: float = 0.5,
    seed: int = 0,
    power_w: float | None = None,
    preset_power_w: float | None = None,
    pool_lookups: int | None = None,
    use_rapl: bool = True,
    rapl_root: str | Path = "/sys/class/powercap",
) -> ScaledCpuBaseline:
    """Measure plain-PyTorch DLRM inference of ``config``'s shape on this CPU, fairly.

    The tables keep their full shape unless their fp32 bytes exceed ``memory_budget_bytes``;
    then every table's rows are multiplied by one factor (at least 1 row each), recorded as
    ``table_scale``. Inputs are Zipf(``skew``) lookups over the allocated rows with the
    config's pooling factors, pre-generated (``pool_lookups`` lookups in all; by default
    twice the LLC in cache lines, clamped to [1 M, 8 M]) and cycled, so the rows touched
    outgrow the cache. Each batch size is warmed up, then timed ``rounds`` times back to
    back with ``torch.utils.benchmark.Timer.blocked_autorange(min_run_time_s)`` under
    ``torch.inference_mode`` at ``threads`` intra-op threads (restored afterwards).

    Power: ``power_w`` if given, else RAPL when readable, else ``preset_power_w``
    (:data:`PRESET_CPU_POWER_W` by default), as :func:`measure_cpu_baseline`.

    Raises:
        CimflowError: empty or non-positive batch sizes, threads < 1, rounds < 1, a
            negative run time or skew, non-positive powers or pool, a budget below 1 row per table.
    """
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise CimflowError(f"batch_sizes must be a non-empty list of integers >= 1, got {list(batch_sizes)}")
    if len(set(sizes)) != len(sizes):
        raise CimflowError(f"batch_sizes must not repeat, got {sizes}")
    if threads < 1 or rounds < 1:
        raise CimflowError(f"threads and rounds must be >= 1, got threads={threads}, rounds={rounds}")
    if min_run_time_s < 0 or skew < 0:
        raise CimflowError(f"min_run_time_s and skew must be >= 0, got {min_run_time_s} and {skew}")
    preset = PRESET_CPU_POWER_W if preset_power_w is None else preset_power_w
    if (power_w is not None and power_w <= 0) or preset <= 0:
        raise CimflowError(f"powers must be > 0 W, got power_w={power_w}, preset_power_w={preset_power_w}")
    if pool_lookups is not None and pool_lookups < 1:
        raise CimflowError(f"pool_lookups must be >= 1, got {pool_lookups}")
    rows, factor = scale_tables(config.table_sizes, config.embedding_dim, memory_budget_bytes)
    scaled = config.replace(table_sizes=rows)
    llc = llc_bytes()
    if pool_lookups is None:
        wanted = 2 * llc // _CACHE_LINE_BYTES if llc else MIN_POOL_LOOKUPS
        pool_lookups = min(MAX_POOL_LOOKUPS, max(MIN_POOL_LOOKUPS, wanted))
    samples = max(2 * max(sizes), -(-pool_lookups // scaled.lookups_per_sample))
    chunk = max(sizes) * max(1, min(8, samples // max(sizes)))
    meter = _open_meter(power_w, use_rapl, rapl_root)

    model = build_scaled_dlrm(scaled, seed)
    pool = input_pool(scaled, skew, samples, chunk, seed)
    results: dict[int, ScaledBatchResult] = {}
    sources: set[PowerSource] = set()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    with _threads(threads), torch.inference_mode():
        for batch in sizes:
            batches = split_pool(pool, batch)
            cycle = itertools.cycle(batches)

            calls = [0]

            def step(cycle: Iterator[tuple[Tensor, Pairs]] = cycle, calls: list[int] = calls) -> None:
                dense, pairs = next(cycle)
                model(dense, pairs)
                calls[0] += 1

            for _ in range(min(len(batches), 8)):
                step()  # warm-up
            timer = Timer("step()", globals={"step": step}, num_threads=threads, label=f"DLRM batch {batch}")
            qps, cpu_qps, watts = [], [], []
            for _ in range(rounds):
                before = meter.read() if meter is not None else None
                started, cpu_started, calls_before = time.perf_counter(), time.process_time(), calls[0]
                measurement = timer.blocked_autorange(min_run_time=min_run_time_s)
                wall = time.perf_counter() - started
                cpu_qps.append(batch * (calls[0] - calls_before) / max(time.process_time() - cpu_started, 1e-9))
                energy = _rapl_joules(meter, before, meter.read() if meter is not None else None)
                source: PowerSource
                source, power = ("rapl", energy / wall) if energy > 0 else _fixed_power(power_w, preset)
                sources.add(source)
                qps.append(batch / measurement.median)
                watts.append(power)
            results[batch] = _batch_result(batch, qps, cpu_qps, statistics.median(watts))
    power_source: PowerSource = "rapl" if sources == {"rapl"} else _fixed_power(power_w, preset)[0]
    if power_source != "rapl" and "rapl" in sources:  # RAPL failed somewhere: one source throughout
        fixed = _fixed_power(power_w, preset)[1]
        results = {b: _batch_result(b, list(m.qps_rounds), list(m.cpu_qps_rounds), fixed) for b, m in results.items()}
    return ScaledCpuBaseline(
        shape=shape_name(config),
        batch_sizes=tuple(sizes),
        per_batch=results,
        threads=threads,
        rounds=rounds,
        cpu=cpu_name(),
        torch_version=torch.__version__,
        num_tables=config.num_tables,
        table_scale=factor,
        table_bytes=scaled.embedding_bytes(4),
        full_table_bytes=config.embedding_bytes(4),
        llc_bytes=llc,
        skew=float(skew),
        pool_lookups=sum(int(pairs[t][0].numel()) for _, pairs in pool for t in range(len(pairs))),
        power_source=power_source,
        load_average=(float(load[0]), float(load[1]), float(load[2])),
    )


def _batch_result(batch: int, qps: list[float], cpu_qps: list[float], power: float) -> ScaledBatchResult:
    median, cpu_median = statistics.median(qps), statistics.median(cpu_qps)
    latency = batch / median
    return ScaledBatchResult(
        batch_size=batch,
        qps_rounds=tuple(qps),
        qps_min=min(qps),
        qps_median=median,
        qps_max=max(qps),
        spread=(max(qps) - min(qps)) / median,
        latency_s=latency,
        power_w=power,
        joules_per_query=power * latency / batch,
        qps_per_w=median / power,
        cpu_qps_rounds=tuple(cpu_qps),
        cpu_qps_median=cpu_median,
        cpu_spread=(max(cpu_qps) - min(cpu_qps)) / cpu_median,
    )
