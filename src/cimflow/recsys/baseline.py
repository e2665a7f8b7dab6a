"""CPU baseline: measured plain-PyTorch DLRM inference throughput, latency and energy.

For each batch size (default 1, 64, 1024) the harness runs warm-up calls, then timed
forward passes under ``torch.inference_mode`` with an explicit torch thread count, and
reports the *median* latency per call and ``QPS = batch / median latency``. The inputs
are pre-generated batches (several distinct ones, cycled, so the same rows are not
always cache-hot) from :class:`~cimflow.recsys.synthetic.SyntheticCriteo` unless you
pass your own.

Energy per query comes from one of three sources, recorded in ``power_source``:

* ``"user"`` — the ``power_w`` you pass (e.g. a wall-meter reading), times latency;
* ``"rapl"`` — Linux RAPL package counters
  (``/sys/class/powercap/intel-rapl:N/energy_uj``, N = package; read before and after
  the timed calls, counter wrap handled). RAPL measures the whole package (all cores,
  uncore), not only this process; sub-zones (``intel-rapl:N:M``) are not added again;
* ``"preset"`` — a fixed assumed power, :data:`PRESET_CPU_POWER_W` unless given.

``power_w`` given wins; otherwise RAPL is used when readable and its counter advanced;
otherwise the preset.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from cimflow.errors import CimflowError
from cimflow.power import RaplMeter
from cimflow.recsys.jagged import JaggedFeatures
from cimflow.recsys.synthetic import SyntheticCriteo

__all__ = [
    "PRESET_CPU_POWER_W",
    "BatchMeasurement",
    "CpuBaseline",
    "RaplMeter",
    "measure_cpu_baseline",
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


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    meter = RaplMeter(rapl_root) if (use_rapl and power_w is None) else None
    if meter is not None and not meter.available:
        meter = None

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
                energy = meter.joules_between(before, after) if (meter and before and after) else 0.0
                if energy > 0:
                    source, power, joules = "rapl", energy / wall, energy / queries
                else:
                    source = "user" if power_w is not None else "preset"
                    power = power_w if power_w is not None else preset_power_w
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
    power_source: PowerSource = "rapl" if sources == {"rapl"} else ("user" if power_w is not None else "preset")
    if power_source != "rapl" and "rapl" in sources:
        fallback = power_w if power_w is not None else preset_power_w
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
        cpu=_cpu_name(),
        torch_version=torch.__version__,
    )
