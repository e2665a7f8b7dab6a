"""The main job behind ``cimflow run``: DLRM on MovieLens-100k on the hybrid RRAM/SRAM chip.

Steps: train (or load the cached) DLRM; count embedding-row accesses on the training split
and place rows across the chip's tiers; compile onto the chip; simulate several chip
instances at several times after programming (AUC); estimate the chip's energy, latency
and QPS from the same plan with the activation statistics of the simulation; measure the
same model in plain PyTorch on this CPU; write ``report.json`` and ``report.html``.

Hardware-aware fine-tuning (:mod:`cimflow.jobs.hwa_dlrm`): when the HWA-fine-tuned DLRM is
in the cache (``cimflow train-hwa``, or ``cimflow run --hwa`` which trains it when it is
missing), the job also simulates it ("HWA fine-tuned" and "HWA fine-tuned, drift
compensation" series next to the float model's "on chip" series) and deploys it: the
cost estimate uses its activation statistics. Without it, the job adds an "on chip,
drift compensation" series of the float model and says how to get the fine-tuned one.
"""

from __future__ import annotations

import datetime as _dt
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import cimflow
from cimflow.compile.tiers import count_accesses, place_tables
from cimflow.units import format_duration, parse_duration

ISSCC_2026 = {
    "source": "ISSCC 2026, 28 nm hybrid RRAM compute-in-memory chip for recommendation (Tsinghua / Huawei / ByteDance): "
    "66x QPS and 181x QPS/W over a CPU on recommendation core operations",
    "qps_ratio": 66.0,
    "qps_per_w_ratio": 181.0,
    "note": "the chip's internals are not public: cimflow's numbers come from the documented assumptions of the "
    "hybrid-rram-sram-28nm preset, a different model (DLRM on MovieLens) and this machine's CPU",
}


@dataclass
class RunConfig:
    chip: str = "hybrid-rram-sram-28nm"
    instances: int = 5
    times: tuple[str, ...] = ("1s", "1d")
    seed: int = 0
    batch: int = 64  # batch for the cost estimate and the CPU comparison
    cpu_batches: tuple[int, ...] = (1, 64, 1024)
    host_watts: float | None = None
    out: Path = Path("report.json")
    html: Path | None = Path("report.html")
    cache: bool = True
    hwa: bool = False  # train the HWA-fine-tuned DLRM when it is not cached (it is used whenever it is)
    compensation: str = "global"  # drift compensation of the compensated series
    notes: list[str] = field(default_factory=list)


def run_recsys(config: RunConfig | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the main job; returns the report dict (also written to ``config.out``)."""
    from cimflow.cost.estimate import estimate, gather_stats
    from cimflow.cost.host import DEFAULT_HOST, resolve_host
    from cimflow.recsys.baseline import measure_cpu_baseline
    from cimflow.recsys.data import load_movielens_100k
    from cimflow.recsys.train import evaluate_auc, train_movielens_dlrm
    from cimflow.report.run_report import print_run_report

    cfg = config or RunConfig()
    console = console or Console()
    chip = cimflow.load_chip(cfg.chip)
    times = [(t, parse_duration(t)) for t in cfg.times]
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("training / loading DLRM on MovieLens-100k", total=1)
        started = time.perf_counter()
        model, metrics = train_movielens_dlrm(seed=cfg.seed, cache=cfg.cache)
        model.eval()
        splits = load_movielens_100k(seed=cfg.seed)
        test = splits.test
        fp32 = evaluate_auc(model, test)
        progress.advance(task)
        hwa_model, hwa_info, hwa_note = _hwa_model(cfg, chip.name, progress)
        progress.console.print(hwa_note)

        # hot/cold placement from the training split's measured accesses
        keys = list(splits.train.sparse.keys)
        pairs = splits.train.sparse.per_feature()
        accesses = [count_accesses(f"embeddings.{k}", size, model.config.embedding_dim, [values])
                    for k, (size, (values, _)) in enumerate(zip(splits.train.table_sizes, pairs))]
        ex_dense, ex_sparse, _ = test.take(torch.arange(min(cfg.batch, len(test.labels))))
        example_inputs = (ex_dense, ex_sparse.per_feature())
        plan = cimflow.compile(model, chip, example_inputs)
        placements = place_tables(accesses, chip, plan)
        hot = {p.table: p.hot_rows for p in placements}

        comp = cfg.compensation
        variants = [("on chip", model, None)]
        if hwa_model is not None:
            variants += [("HWA fine-tuned", hwa_model, None), (f"HWA fine-tuned, drift compensation ({comp})", hwa_model, comp)]
        else:
            variants.append((f"on chip, drift compensation ({comp})", model, comp))
        deployed = hwa_model if hwa_model is not None else model
        task = progress.add_task("simulating chip instances", total=cfg.instances * len(times) * len(variants))
        per_variant: dict[str, dict[str, list[float]]] = {label: {t: [] for t, _ in times} for label, _, _ in variants}
        stats: dict[str, dict] = {}
        for label_v, net, mode in variants:
            cim, _ = cimflow.sim.convert_model(net, chip, plan=plan, hot_rows=hot)
            cimflow.compensate(cim, mode)
            for k in range(cfg.instances):
                cimflow.program(cim, seed=cfg.seed + k)
                for label, t in times:
                    cimflow.drift(cim, t)
                    if not stats and net is deployed and mode is None and k == 0:  # activation statistics for the cost estimate
                        stats = gather_stats(cim, [(d, s.per_feature()) for d, s, _ in test.batches(4096)])
                    per_variant[label_v][label].append(evaluate_auc(cim, test))
                    progress.advance(task)

        task = progress.add_task("estimating cost and measuring the CPU", total=2)
        cost = estimate(plan, stats=stats, batch_size=cfg.batch)
        progress.advance(task)
        threads = torch.get_num_threads()
        host = resolve_host(DEFAULT_HOST)
        # without RAPL or --host-watts: the preset's power for the cores this run uses
        preset_w = host.power_w * min(threads, host.cores) / host.cores
        cpu = measure_cpu_baseline(model, batch_sizes=cfg.cpu_batches, threads=threads, power_w=cfg.host_watts, preset_power_w=preset_w)
        progress.advance(task)

    chip_qps, chip_qps_w = cost.qps, cost.qps_per_w
    chip_energy = cost.energy_j / cost.batch_size
    ref_batch = cfg.batch if cfg.batch in cpu.per_batch else max(cpu.per_batch)
    cpu_at = cpu.per_batch[ref_batch]
    report: dict[str, Any] = {
        "title": f"cimflow run: DLRM on MovieLens-100k on {chip.name}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cimflow_version": cimflow.__version__,
        "chip": {"name": chip.name, "description": chip.description},
        "model": {"name": "DLRM (dot interaction)", "dataset": "MovieLens-100k (recbole 1.2.1 wheel), label = rating >= 4, random split",
                  "parameters": sum(p.numel() for p in model.parameters()), "tables": len(keys),
                  "train_seconds": None if metrics.cached else metrics.seconds, "cached": bool(metrics.cached), "hwa": hwa_model is not None,
                  "hwa_fine_tuning": hwa_info, "total_seconds": time.perf_counter() - started},
        "accuracy": {"metric": "AUC", "fp32": fp32, "instances": cfg.instances, "series": [{
            "label": label_v, "compensation": mode, "points": [
                {"t": label, "t_seconds": t, "mean": statistics.fmean(per_variant[label_v][label]),
                 "std": statistics.pstdev(per_variant[label_v][label]), "values": per_variant[label_v][label]} for label, t in times]}
            for label_v, _, mode in variants]},
        "performance": {
            "chip": {"qps": chip_qps, "qps_per_w": chip_qps_w, "energy_per_inference_j": chip_energy, "latency_s": cost.latency_s,
                     "batch": cfg.batch, "tops": cost.tops, "tops_per_w": cost.tops_per_w, "area_mm2": cost.area_mm2,
                     "fixed_energy_per_inference_j": cost.fixed_energy_j / cost.batch_size, "data_dependent": cost.data_dependent},
            "cpu": {"qps": cpu_at.qps, "qps_per_w": cpu_at.qps_per_watt, "energy_per_inference_j": cpu_at.joules_per_query,
                    "latency_s": cpu_at.latency_s, "batch": ref_batch, "power_w": cpu_at.power_w, "power_source": cpu.power_source,
                    "threads": cpu.threads, "cpu": cpu.cpu,
                    "per_batch": [{"batch": b, "qps": m.qps, "latency_s": m.latency_s, "qps_per_w": m.qps_per_watt} for b, m in sorted(cpu.per_batch.items())]},
            "ratios": {"qps": chip_qps / cpu_at.qps if cpu_at.qps else None,
                       "qps_per_w": (chip_qps_w / cpu_at.qps_per_watt) if chip_qps_w and cpu_at.qps_per_watt else None},
        },
        "energy_breakdown": {k: v / cost.batch_size for k, v in cost.by_component.items()},
        "tiers": [p.to_dict() for p in placements],
        "reference": ISSCC_2026,
        "assumptions": list(chip.assumptions) + [
            f"chip QPS = batch {cfg.batch} x the plan's steady-state (pipelined) throughput; energy from the same plan "
            f"with activation statistics measured while simulating instance 0 at {times[0][0]}",
            f"CPU: plain PyTorch on this machine ({cpu.cpu}, {cpu.threads} threads), power from {cpu.power_source}"
            + (f" ({host.name}: {host.power_w:g} W TDP x {cpu.threads}/{host.cores} cores)" if cpu.power_source == "preset" else ""),
            "the CPU runs the whole small model in PyTorch (framework overhead included); the ISSCC figures compare "
            "recommendation core operations on large tables, where the CPU is bound by memory bandwidth",
        ],
        "notes": list(cfg.notes) + [hwa_note, f"times after programming: {', '.join(format_duration(t) for _, t in times)}"],
    }
    _write_json(cfg.out, report)
    if cfg.html is not None:
        from cimflow.report.html import write_html

        write_html(report, cfg.html)
    print_run_report(report, console)
    return report


def _hwa_model(cfg: RunConfig, chip_name: str, progress: Progress) -> tuple[torch.nn.Module | None, dict | None, str]:
    """The HWA-fine-tuned DLRM (cached, or trained now with ``cfg.hwa``), its info, and a note for the report."""
    from dataclasses import asdict

    from cimflow.jobs.hwa_dlrm import HWASettings, hwa_movielens_dlrm, load_hwa_movielens_dlrm

    settings = HWASettings()
    if chip_name != settings.chip:
        return None, None, f"HWA fine-tuning is set up for {settings.chip}; chip {chip_name} runs the float model only"
    loaded = load_hwa_movielens_dlrm(cfg.seed, settings) if cfg.cache else None
    if loaded is None and cfg.hwa:
        task = progress.add_task("HWA fine-tuning the DLRM (cimflow train-hwa)", total=1)
        loaded = hwa_movielens_dlrm(seed=cfg.seed, settings=settings, cache=cfg.cache,
                                    progress=lambda step, steps: progress.update(task, completed=step, total=steps))
    if loaded is None:
        return None, None, ("no HWA-fine-tuned DLRM in the cache: run `cimflow train-hwa` (or `cimflow run --hwa`) "
                            "to add the 'HWA fine-tuned' series and deploy it")
    model, info = loaded
    model.eval()
    how = f"loaded from the cache ({info.cache_path})" if info.cached else f"trained now in {info.seconds:.0f} s"
    info_dict = {k: v for k, v in asdict(info).items() if k != "cache_path"}
    return model, info_dict, (f"using the HWA-fine-tuned DLRM, {how}: {info.steps} steps on chip instances aged up to "
                              f"{info.settings.get('t_max')}, fp32 test AUC {info.fp32_test_auc:.4f} (float model {info.base_fp32_test_auc:.4f})")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)
