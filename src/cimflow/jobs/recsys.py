"""The main job behind ``cimflow run``: DLRM accuracy on MovieLens-100k and RecSys performance at
production shape, on one chip description.

Steps: train (or load the cached) DLRM; count embedding-row accesses on the training split and
place rows across the chip's tiers; compile onto the chip; simulate several chip instances at
several times after programming (AUC on the held-out test split). Performance is answered on the
Criteo-Kaggle shape with a stated access skew on the same chip (:mod:`cimflow.jobs.recsys_config`:
sharding, held-out tiers, the system model), against plain PyTorch measured on this CPU at full
table scale and the server CPU preset's roofline; a sensitivity sweep moves the assumptions that
move the ratio most. Writes ``report.json`` and ``report.html``, opening with a headline block.

Hardware-aware fine-tuning (:mod:`cimflow.jobs.hwa_dlrm`): when the HWA-fine-tuned DLRM is in the
cache (``cimflow train-hwa``, or ``cimflow run --hwa``), the job also simulates it ("HWA
fine-tuned" and "HWA fine-tuned, drift compensation" series next to the float model's "on chip"
series). Without it, the job adds an "on chip, drift compensation" series of the float model.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import cimflow
from cimflow.compile.tiers import count_accesses, place_tables
from cimflow.fileio import write_json
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
    perf_skew: float = 1.05  # Zipf exponent of the Criteo-Kaggle-shaped performance workload
    cpu_threads: int = 2
    sample_queries: int = 4096
    skip_cpu_measurement: bool = False  # tests: roofline only
    notes: list[str] = field(default_factory=list)


def run_recsys(config: RunConfig | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the main job; returns the report dict (also written to ``config.out``)."""
    from cimflow.progress import progress_bar
    from cimflow.recsys.data import load_movielens_100k
    from cimflow.recsys.train import evaluate_auc, train_movielens_dlrm
    from cimflow.report.run_report import print_run_report

    cfg = config or RunConfig()
    console = console or Console()
    chip = cimflow.load_chip(cfg.chip)
    times = [(t, parse_duration(t)) for t in cfg.times]
    with progress_bar(console) as progress:
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
                    for k, (size, (values, _)) in enumerate(zip(splits.train.table_sizes, pairs, strict=True))]
        ex_dense, ex_sparse, _ = test.take(torch.arange(min(cfg.batch, len(test.labels))))
        example_inputs = (ex_dense, ex_sparse.per_feature())
        plan = cimflow.compile(model, chip, example_inputs)
        placements = place_tables(accesses, chip, plan)
        hot = {p.table: p.hot_rows for p in placements}

        comp = cfg.compensation
        variants: list[tuple[str, torch.nn.Module, str | None]] = [("on chip", model, None)]
        if hwa_model is not None:
            variants += [("HWA fine-tuned", hwa_model, None), (f"HWA fine-tuned, drift compensation ({comp})", hwa_model, comp)]
        else:
            variants.append((f"on chip, drift compensation ({comp})", model, comp))
        task = progress.add_task("simulating chip instances", total=cfg.instances * len(times) * len(variants))
        per_variant: dict[str, dict[str, list[float]]] = {label: {t: [] for t, _ in times} for label, _, _ in variants}
        for label_v, net, mode in variants:
            cim, _ = cimflow.sim.convert_model(net, chip, plan=plan, hot_rows=hot)
            cimflow.compensate(cim, mode)
            for k in range(cfg.instances):
                cimflow.program(cim, seed=cfg.seed + k)
                for label, t in times:
                    cimflow.drift(cim, t)
                    per_variant[label_v][label].append(evaluate_auc(cim, test))
                    progress.advance(task)

        task = progress.add_task("performance on the Criteo-Kaggle shape: system model, CPU, sensitivity", total=3)
        perf = _performance(cfg, chip)
        progress.advance(task)
        cpu = perf["cpu"].get("measured")
        progress.advance(task)
        sensitivity = _sensitivity(cfg, chip, perf)
        progress.advance(task)

    headline = _headline(cfg, perf, per_variant, fp32, times, variants)
    report: dict[str, Any] = {
        "title": f"cimflow run: DLRM on MovieLens-100k on {chip.name}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cimflow_version": cimflow.__version__,
        "chip": {"name": chip.name, "description": chip.description},
        "model": {"name": "DLRM (dot interaction)", "dataset": "MovieLens-100k (recbole wheel), label = rating >= 4, random split",
                  "parameters": sum(p.numel() for p in model.parameters()), "tables": len(keys),
                  "train_seconds": None if metrics.cached else metrics.seconds, "cached": bool(metrics.cached),
                  "hwa": hwa_model is not None,
                  "hwa_fine_tuning": hwa_info, "total_seconds": time.perf_counter() - started},
        "accuracy": {"metric": "AUC", "fp32": fp32, "instances": cfg.instances, "series": [{
            "label": label_v, "compensation": mode, "points": [
                {"t": label, "t_seconds": t, "mean": statistics.fmean(per_variant[label_v][label]),
                 "std": statistics.pstdev(per_variant[label_v][label]), "values": per_variant[label_v][label]} for label, t in times]}
            for label_v, _, mode in variants]},
        "headline": headline,
        "performance": _performance_section(perf, cpu),
        "sensitivity": sensitivity,
        "energy_breakdown": {k: v for k, v in perf["system"]["energy_per_query_by_part_j"].items() if k != "chip_dynamic"}
        | {k: v / perf["cost"]["batch_size"] for k, v in perf["cost"]["by_component_j"].items() if k != "leakage"},
        "recsys": {k: perf[k] for k in ("qps", "qps_per_w", "qps_per_chip", "chips", "bound_by", "utilization", "workload", "sharding")},
        "tiers": [p.to_dict() for p in placements],
        "reference": ISSCC_2026,
        "assumptions": list(chip.assumptions) + [
            f"performance: the {perf['workload']['shape']} DLRM shape ({perf['workload']['tables']} tables, "
            f"{perf['workload']['total_rows']:,} rows, {perf['workload']['access']}) on {perf['chips']} chip(s); QPS from the "
            f"system model (the slowest of arrays, digital unit, SRAM/DRAM tiers and links), batch {perf['config']['batch']}",
            "the headline ratios use the server-cpu-2s preset's roofline for the same shapes (a named two-socket server, as the "
            "ISSCC comparison uses a server CPU); plain PyTorch measured on this machine at full Criteo-Kaggle table scale is "
            "reported beside it (" + (f"{cpu['threads']} threads, power {cpu['power_source']}, spread {100 * cpu['spread']:.0f} %"
                                       if cpu else "not measured") + ")",
            "accuracy: DLRM on MovieLens-100k (held-out test split); the performance workload is a different, production-shaped model",
        ],
        "notes": list(cfg.notes) + [hwa_note, f"times after programming: {', '.join(format_duration(t) for _, t in times)}"],
    }
    write_json(cfg.out, report)
    if cfg.html is not None:
        from cimflow.report.html import write_html

        write_html(report, cfg.html)
    print_run_report(report, console)
    return report


def _hwa_model(cfg: RunConfig, chip_name: str, progress: Any) -> tuple[torch.nn.Module | None, dict | None, str]:
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
                              f"{info.settings.get('t_max')}, fp32 test AUC {info.fp32_test_auc:.4f} "
                              f"(float model {info.base_fp32_test_auc:.4f})")


def _performance(cfg: RunConfig, chip: Any) -> dict[str, Any]:
    """The production-shaped performance answer: Criteo-Kaggle shapes on ``chip`` (system model), the
    server CPU's roofline, and (unless skipped) the CPU measured here at full table scale."""
    from cimflow.jobs.recsys_config import RecsysConfig, measure_cpu, run_recsys_config
    from cimflow.recsys.models import criteo_kaggle

    rcfg = RecsysConfig(shape="criteo-kaggle", chip=chip, skew=cfg.perf_skew, batch=256, sample_queries=cfg.sample_queries,
                        seed=cfg.seed, quiet=True)
    perf = run_recsys_config(rcfg)
    if not cfg.skip_cpu_measurement:
        perf["cpu"]["measured"] = measure_cpu(criteo_kaggle(), cfg.perf_skew, (rcfg.batch,), cfg.cpu_threads, cfg.seed, rcfg.batch,
                                              power_w=cfg.host_watts)
    return perf


def _ratio(chip_value: float, cpu: dict[str, Any] | None, key: str) -> float | None:
    return chip_value / cpu[key] if cpu and cpu.get(key) else None


def _performance_section(perf: dict[str, Any], cpu: dict[str, Any] | None) -> dict[str, Any]:
    roof = perf["cpu"]["roofline"]
    system = perf["system"]
    chip = {"qps": perf["qps"], "qps_per_w": perf["qps_per_w"], "energy_per_inference_j": system["energy_per_query_j"],
            "latency_s": perf["cost"]["latency_s"], "batch": perf["config"]["batch"], "chips": perf["chips"],
            "qps_per_chip": perf["qps_per_chip"], "bound_by": perf["bound_by"], "power_w": system["power_w"],
            "area_mm2": system["area_mm2_per_chip"], "data_dependent": perf["cost"]["data_dependent"]}
    section: dict[str, Any] = {"workload": perf["workload"], "chip": chip, "cpu_roofline": roof,
                               "ratios_roofline": {"qps": _ratio(perf["qps"], roof, "qps"),
                                                   "qps_per_w": _ratio(perf["qps_per_w"], roof, "qps_per_w")}}
    section["ratios"] = {"against": f"{roof['host']} roofline", **section["ratios_roofline"]}
    if cpu:
        section["cpu"] = {"qps": cpu["qps"], "qps_per_w": cpu["qps_per_w"], "energy_per_inference_j": 1 / cpu["qps_per_w"],
                          "latency_s": cpu["batch"] / cpu["qps"], "batch": cpu["batch"], "power_w": cpu["power_w"],
                          "power_source": cpu["power_source"], "threads": cpu["threads"], "cpu": cpu["cpu"],
                          "qps_min": cpu["qps_min"], "qps_max": cpu["qps_max"], "spread": cpu["spread"], "describe": cpu["describe"],
                          "per_batch": [{"batch": cpu["batch"], "qps": cpu["qps"], "latency_s": cpu["batch"] / cpu["qps"],
                                         "qps_per_w": cpu["qps_per_w"]}]}
        section["ratios_measured"] = {"against": "measured CPU", "qps": _ratio(perf["qps"], cpu, "qps"),
                                      "qps_per_w": _ratio(perf["qps_per_w"], cpu, "qps_per_w")}
    return section


#: the assumptions that move the chip/CPU ratio most, and the factors tried on each
SENSITIVITY = (("DRAM bandwidth", ("dram", "bandwidth_bytes_per_s")), ("host link bandwidth", ("host_link", "bandwidth_bytes_per_s")),
               ("ADC energy per conversion", ("adc",)), ("access skew (Zipf exponent)", ("skew",)))


def _scaled_chip(chip: Any, path: tuple[str, ...], factor: float) -> Any:
    data = chip.model_dump()
    if path == ("adc",):
        for spec in data["arrays"].values():
            if spec.get("adc") and spec["adc"]["conversion"].get("energy_pj") is not None:
                spec["adc"]["conversion"]["energy_pj"] *= factor
    elif data.get(path[0]) is not None:
        data[path[0]][path[1]] *= factor
    return type(chip).model_validate(data)


def _sensitivity(cfg: RunConfig, chip: Any, perf: dict[str, Any]) -> list[dict[str, Any]]:
    """The chip's QPS/W over the CPU's as each assumption moves (the CPU held at its roofline, the
    headline's reference): a row per assumption and factor, with the binding resource."""
    from cimflow.jobs.recsys_config import RecsysConfig, run_recsys_config

    cpu = perf["cpu"]["roofline"]
    rows = [{"assumption": "as described", "factor": 1.0, "value": "preset", "qps_per_w_ratio": perf["qps_per_w"] / cpu["qps_per_w"],
             "qps_ratio": perf["qps"] / cpu["qps"], "bound_by": perf["bound_by"]}]
    for label, path in SENSITIVITY:
        for factor in (0.5, 2.0):
            skew = cfg.perf_skew * (0.8 if factor < 1 else 1.2) if path == ("skew",) else cfg.perf_skew
            target = chip if path == ("skew",) else _scaled_chip(chip, path, factor)
            r = run_recsys_config(RecsysConfig(shape="criteo-kaggle", chip=target, skew=skew, batch=256, seed=cfg.seed,
                                               sample_queries=min(cfg.sample_queries, 2048), quiet=True))
            rows.append({"assumption": label, "factor": (skew / cfg.perf_skew) if path == ("skew",) else factor,
                         "value": f"skew {skew:g}" if path == ("skew",) else f"x{factor:g}",
                         "qps_per_w_ratio": r["qps_per_w"] / cpu["qps_per_w"], "qps_ratio": r["qps"] / cpu["qps"],
                         "bound_by": r["bound_by"]})
    return rows


def _headline(cfg: RunConfig, perf: dict[str, Any], per_variant: dict, fp32: float, times: list, variants: list) -> dict[str, Any]:
    """The opening block: AUC loss on chip, QPS and QPS/W against the CPU, the binding resource,
    and what the ISSCC 2026 comparison would need."""
    import statistics as st

    last = times[-1][0]
    on_chip = st.fmean(per_variant[variants[0][0]][last])
    measured, roof = perf["cpu"].get("measured"), perf["cpu"]["roofline"]
    ratio_q, ratio_w = perf["qps"] / roof["qps"], perf["qps_per_w"] / roof["qps_per_w"]
    against = f"the {roof['host']} roofline"
    if ratio_q >= 66:
        need_q = f"the modeled {ratio_q:,.1f}x is already above the published 66x"
    else:
        need_q = (f"for the published 66x, {perf['bound_by']} would have to serve {66 / ratio_q:,.1f}x the QPS it does here "
                  "(more arrays or ADC throughput if arrays bind; more DRAM bandwidth or hot-row capacity if DRAM binds)")
    if ratio_w >= 181:
        need_w = f"the modeled {ratio_w:,.1f}x QPS/W is already above the published 181x"
    else:
        need_w = (f"for 181x, the energy per query would have to fall from {1e9 / perf['qps_per_w']:,.1f} nJ to "
                  f"{1e9 / (181 * roof['qps_per_w']):,.1f} nJ (largest part now: {_largest_part(perf)})")
    text = (f"On {perf['workload']['shape']} shapes ({perf['workload']['access']}), {perf['chips']} chip(s) serve "
            f"{perf['qps']:,.0f} QPS at {perf['qps_per_w']:,.0f} QPS/W, bound by {perf['bound_by']}: {ratio_q:,.1f}x the QPS and "
            f"{ratio_w:,.1f}x the QPS/W of {against} (a two-socket server's memory-bandwidth and compute roofline for the same "
            f"shapes, {roof['power_w']:g} W). ISSCC 2026 reports 66x and 181x against a server CPU: {need_q}; {need_w}. "
            f"Largest energy part: {_largest_part(perf)}.")
    if measured:
        text += (f" Measured here (plain PyTorch, {measured['threads']} threads of this machine, not a server): "
                 f"{measured['qps']:,.0f} QPS, spread {100 * measured['spread']:.0f} % over 3 rounds"
                 + (" — the machine was busy, so this figure is unreliable" if measured["spread"] > 0.2 else "")
                 + f"; chip / measured {perf['qps'] / measured['qps']:,.0f}x QPS.")
    return {"auc_fp32": fp32, "auc_on_chip": on_chip, "auc_loss": fp32 - on_chip, "at": last, "qps": perf["qps"],
            "qps_per_w": perf["qps_per_w"], "chips": perf["chips"], "bound_by": perf["bound_by"],
            "ratio_qps": ratio_q, "ratio_qps_per_w": ratio_w, "ratio_against": against,
            "ratio_qps_measured": perf["qps"] / measured["qps"] if measured else None,
            "ratio_qps_per_w_measured": perf["qps_per_w"] / measured["qps_per_w"] if measured else None,
            "isscc_2026": {"qps_ratio": 66.0, "qps_per_w_ratio": 181.0}, "text": text}


def _largest_part(perf: dict[str, Any]) -> str:
    """The largest energy part per query (system parts, with the chip's dynamic energy split by component)."""
    parts = {k: v for k, v in perf["system"]["energy_per_query_by_part_j"].items() if k != "chip_dynamic"}
    batch = perf["cost"]["batch_size"]
    parts |= {f"chip {k}": v / batch for k, v in perf["cost"]["by_component_j"].items() if k != "leakage"}
    name, value = max(parts.items(), key=lambda kv: kv[1] or 0.0)
    return f"{name.replace('_', ' ')}, {100 * value * perf['qps_per_w']:.0f} %"
