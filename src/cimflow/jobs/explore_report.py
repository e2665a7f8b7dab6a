"""The outputs of ``cimflow explore`` under ``--out``: the Pareto front as a rich table and
``pareto.json``, ``explore.html`` (a self-contained plotly page: the Pareto plot with the
design on hover, parameter importances, the best design's chip YAML), the chip YAML of every
Pareto design (``designs/trial_NNNNN.yaml``) and of the best one (``best_chip.yaml``), usable
by every other verb (``cimflow estimate MODEL --chip OUT/best_chip.yaml``).

The "best" design is the Pareto design best in the first objective; it is compared with the
base chip as it is (``baseline.json``) on every objective.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cimflow.fileio import atomic_write_text, write_json
from cimflow.jobs.explore_space import ACCURACY_OBJECTIVES, OBJECTIVES, Space


def _records(out: Path, study: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {"complete": 0, "failed": 0, "duplicates_not_evaluated": 0, "simulated": 0, "not_simulated": 0}
    records = []
    for t in trials:
        if t.state == TrialState.PRUNED and "duplicate_of" in t.user_attrs:
            counts["duplicates_not_evaluated"] += 1
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get("evaluated"):
            counts["failed"] += 1
            continue
        if t.state != TrialState.COMPLETE:
            continue
        path = out / "trials" / f"{t.number:05d}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        counts["complete"] += 1
        counts["simulated" if record.get("simulated") else "not_simulated"] += 1
        records.append(record)
    return records, counts


def feasible(space: Space, record: dict[str, Any]) -> bool:
    """Every constraint holds, and an accuracy the objectives need was simulated."""
    if record.get("state") != "COMPLETE" or any(c[-1] is None or c[-1] > 0 for c in record.get("constraints", [])):
        return False
    return bool(record.get("simulated")) or not space.accuracy_is_objective()


def _importances(space: Space, study: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """fANOVA importances of the parameters for each objective: a cost objective over every evaluated
    design (its cost is known even when a constraint failed), an accuracy objective over the simulated ones."""
    import optuna

    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    result: dict[str, Any] = {}

    def objective(i: int) -> Callable[[Any], float]:
        def value(t: Any) -> float:
            return float(t.values[i])

        return value

    for i, o in enumerate(space.objectives):
        use = [frozen[r["trial"]] for r in records if r["trial"] in frozen and frozen[r["trial"]].values is not None
               and (r.get("simulated") or o.name not in ACCURACY_OBJECTIVES)]
        varied = [p.key for p in space.parameters if len({json.dumps(t.params.get(p.key)) for t in use}) > 1]
        if len(use) < 4 or not varied:
            result[o.name] = {"note": f"needs at least 4 trials with a value of {o.name} that vary a parameter (have {len(use)})"}
            continue
        sub = optuna.create_study(directions=[x.sense for x in space.objectives])
        sub.add_trials(use)
        try:
            imp = optuna.importance.get_param_importances(sub, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=space.seed),
                                                          params=varied, target=objective(i))
        except (RuntimeError, ValueError) as err:
            result[o.name] = {"note": str(err).splitlines()[0]}
            continue
        result[o.name] = {k: float(v) for k, v in imp.items()}
    return result


def _fmt(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if name in ("qps", "qps_per_w"):
        return f"{value:,.0f}"
    if name == "energy_per_inference_j":
        return f"{value * 1e9:.3g} nJ"
    if name == "area_mm2":
        return f"{value:.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_outputs(space: Space, study: Any, base: dict[str, Any], out: Path, console: Console, quiet: bool = False,
                  run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pareto front, importances, chip YAMLs, ``pareto.json`` and ``explore.html``; returns the summary."""
    from cimflow.chip.io import chip_to_yaml
    from cimflow.jobs.explore import pareto_front
    from cimflow.jobs.explore_design import apply_design

    records, counts = _records(out, study)
    senses = [o.sense for o in space.objectives]
    ok = [r for r in records if feasible(space, r)]
    front = sorted(pareto_front(ok, senses), key=lambda r: r["values"][0], reverse=senses[0] == "maximize")
    (out / "designs").mkdir(exist_ok=True)
    entries = []
    for r in front:
        chip, _ = apply_design(space, r["params"], name=f"{space.name}-trial-{r['trial']}")
        yaml_path = out / "designs" / f"trial_{r['trial']:05d}.yaml"
        atomic_write_text(yaml_path, chip_to_yaml(chip), "design chip YAML")
        entries.append({"trial": r["trial"], "params": r["params"],
                        "objectives": {o.name: r["metrics"].get(o.name) for o in space.objectives},
                        "metrics": r["metrics"], "chip_yaml": str(yaml_path.relative_to(out))})
    best = None
    if entries:
        best = dict(entries[0])
        best["ratio_to_base"] = {o.name: (best["metrics"][o.name] / base[o.name] if base.get(o.name) else None)
                                 for o in space.objectives if o.name in best["metrics"]}
        atomic_write_text(out / "best_chip.yaml", (out / best["chip_yaml"]).read_text(encoding="utf-8"), "best chip YAML")
    importances = _importances(space, study, records)
    summary = {
        "space": space.name, "base": space.base, "workload": space.workload.model_dump(mode="json"),
        "objectives": [{"name": o.name, "direction": o.sense} for o in space.objectives],
        "constraints": [c.model_dump(mode="json", exclude_none=True) for c in space.constraints],
        "base_metrics": base, "trials": {**counts, "feasible": len(ok)}, "run": run or {},
        "pareto": entries, "best": best, "importances": importances,
    }
    write_json(out / "pareto.json", summary, "Pareto front")
    _write_html(space, records, ok, entries, base, importances, out)
    if not quiet:
        print_front(space, summary, console)
        console.print(f"wrote {out / 'pareto.json'}, {out / 'explore.html'}" + (f", {out / 'best_chip.yaml'}" if best else ""))
    return summary


def print_front(space: Space, summary: dict[str, Any], console: Console) -> None:
    names = [o.name for o in space.objectives]
    extra = [n for n in ("qps_per_w", "qps", "area_mm2", "accuracy_loss") if n not in names]
    counts = summary["trials"]
    refused = f"; {counts['failed']} designs refused (see trials/)" if counts["failed"] else ""
    table = Table(title=f"Pareto front of {space.name} ({counts['feasible']} feasible of {counts['complete']} trials{refused}; "
                        f"base {space.base})")
    table.add_column("trial", justify="right")
    for n in [*names, *extra]:
        table.add_column(n, justify="right")
    table.add_column("bound by")
    table.add_column("design")
    table.add_row("base", *(_fmt(n, summary["base_metrics"].get(n)) for n in [*names, *extra]),
                  str(summary["base_metrics"].get("bound_by", "")), "as shipped")
    for e in summary["pareto"][:30]:
        m = e["metrics"]
        table.add_row(str(e["trial"]), *(_fmt(n, m.get(n)) for n in [*names, *extra]), str(m.get("bound_by", "")),
                      ", ".join(f"{k}={v}" for k, v in e["params"].items()))
    console.print(table)
    for obj, imp in summary["importances"].items():
        if isinstance(imp, dict) and "note" not in imp:
            top = sorted(imp.items(), key=lambda kv: -kv[1])[:4]
            console.print(f"parameter importance for {obj}: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    best = summary["best"]
    if best is None:
        console.print("no feasible design found: loosen the constraints or widen the space")
        return
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in best["ratio_to_base"].items() if v is not None)
    console.print(f"best design (trial {best['trial']}, first objective {names[0]}): {ratios} the base chip's")


def _hover(params: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = [f"{k} = {v}" for k, v in params.items()]
    lines += [f"{k}: {_fmt(k, v)}" for k, v in metrics.items() if k in OBJECTIVES or k == "bound_by"]
    return "<br>".join(html.escape(x) for x in lines)


def _write_html(space: Space, records: list[dict[str, Any]], ok: list[dict[str, Any]], entries: list[dict[str, Any]],
                base: dict[str, Any], importances: dict[str, Any], out: Path) -> None:
    import plotly.graph_objects as go

    names = [o.name for o in space.objectives]
    x_name = names[0]
    y_name = names[1] if len(names) > 1 else ("accuracy_loss" if space.needs_accuracy() and x_name != "accuracy_loss" else "area_mm2")
    on_front = {e["trial"] for e in entries}

    def trace(rows: list[dict[str, Any]], label: str, color: str, size: int) -> Any:
        rows = [r for r in rows if r.get("metrics", {}).get(x_name) is not None and r["metrics"].get(y_name) is not None]
        return go.Scatter(x=[r["metrics"][x_name] for r in rows], y=[r["metrics"][y_name] for r in rows], mode="markers", name=label,
                          marker={"color": color, "size": size},
                          text=[f"trial {r['trial']}<br>" + _hover(r["params"], r["metrics"]) for r in rows],
                          hovertemplate="%{text}<extra></extra>")

    fig = go.Figure()
    fig.add_trace(trace([r for r in records if r not in ok], "infeasible or not simulated", "#cccccc", 6))
    fig.add_trace(trace([r for r in ok if r["trial"] not in on_front], "feasible", "#6baed6", 8))
    fig.add_trace(trace([r for r in ok if r["trial"] in on_front], "Pareto front", "#d62728", 11))
    if base.get(x_name) is not None and base.get(y_name) is not None:
        fig.add_trace(go.Scatter(x=[base[x_name]], y=[base[y_name]], mode="markers", name="base chip",
                                 marker={"symbol": "star", "size": 16, "color": "black"}, hovertemplate="base chip<extra></extra>"))
    fig.update_layout(title=f"{space.name}: {x_name} vs {y_name}", xaxis_title=x_name, yaxis_title=y_name, height=560)
    parts = [fig.to_html(full_html=False, include_plotlyjs=True)]
    for obj, imp in importances.items():
        if not isinstance(imp, dict) or "note" in imp:
            continue
        bar = go.Figure(go.Bar(x=list(imp.values()), y=list(imp.keys()), orientation="h"))
        bar.update_layout(title=f"parameter importance for {obj} (fANOVA over the trials with a value of it)", height=120 + 30 * len(imp))
        parts.append(bar.to_html(full_html=False, include_plotlyjs=False))
    notes = [html.escape(f"{k}: {v['note']}") for k, v in importances.items() if isinstance(v, dict) and "note" in v]
    best_yaml = (out / "best_chip.yaml").read_text(encoding="utf-8") if entries else "no feasible design"
    rows = "".join(f"<tr><td>{e['trial']}</td>" + "".join(f"<td>{html.escape(_fmt(n, e['metrics'].get(n)))}</td>" for n in names)
                   + f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in e['params'].items()))}</td></tr>" for e in entries)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cimflow explore {html.escape(space.name)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'><h1>cimflow explore: {html.escape(space.name)}</h1>"
            f"<p>base chip {html.escape(space.base)}; workload {html.escape(space.workload.kind)}; {len(records)} trials, "
            f"{len(ok)} feasible, {len(entries)} on the Pareto front.</p>{parts[0]}"
            f"<h2>Pareto front</h2><table border='1' cellpadding='4'><tr><th>trial</th>{head}<th>design</th></tr>{rows}</table>"
            f"<h2>Parameter importances</h2>{''.join(parts[1:])}<p>{'<br>'.join(notes)}</p>"
            f"<h2>Best design's chip (best_chip.yaml)</h2><pre>{html.escape(best_yaml)}</pre></body></html>")
    atomic_write_text(out / "explore.html", page, "explore HTML")


__all__ = ["feasible", "print_front", "write_outputs"]
