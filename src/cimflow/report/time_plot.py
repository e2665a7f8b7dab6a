"""Metric vs time after programming as a small self-contained HTML page (``cimflow simulate
--html``): a table and, when matplotlib is installed, a PNG chart (Agg canvas, no pyplot).

Reads the dict of :meth:`cimflow.train.over_time.OverTimeResult.to_dict`; never recomputes.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from html import escape
from typing import Any

from cimflow.fileio import atomic_write_text


def time_plot_png(result: Mapping[str, Any]) -> bytes | None:
    """PNG bytes of the metric vs time (log axis), one line per series with ±std bars and each
    instance as a faint dot, the float model as a dashed line; None without matplotlib or points."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ticks: dict[float, str] = {}
    drawn = False
    for series in result.get("series", []):
        pts = sorted((p for p in series.get("points", []) if p.get("t_seconds", 0) > 0), key=lambda p: p["t_seconds"])
        if not pts:
            continue
        xs = [p["t_seconds"] for p in pts]
        line = axes.errorbar(xs, [p["mean"] for p in pts], yerr=[p["std"] for p in pts], marker="o", capsize=3,
                             label=series.get("label", ""))
        color = line.lines[0].get_color()
        for p in pts:
            axes.scatter([p["t_seconds"]] * len(p.get("values", [])), p.get("values", []), s=9, alpha=0.3, color=color, linewidths=0)
            ticks.setdefault(p["t_seconds"], str(p.get("t", "")))
        drawn = True
    if not drawn:
        return None
    fp32 = result.get("fp32")
    if isinstance(fp32, (int, float)):
        axes.axhline(fp32, linestyle="--", color="#1a202c", linewidth=1.2, label=f"float model ({fp32:.4g})")
    axes.set_xscale("log")
    ordered = sorted(ticks)
    axes.set_xticks(ordered, labels=[ticks[t] for t in ordered])
    axes.minorticks_off()
    axes.set_xlabel("time after programming")
    axes.set_ylabel(str(result.get("metric", "metric")))
    axes.set_title(f"{result.get('metric', 'metric')} on {result.get('chip', '')}: "
                   f"mean ± std over {result.get('instances', '?')} instances")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def render_time_html(result: Mapping[str, Any], title: str = "cimflow simulate") -> str:
    """The page: title, table (time x series, mean ± std), chart."""
    series = list(result.get("series", []))
    times = [p.get("t", "") for p in series[0].get("points", [])] if series else []
    head = "".join(f"<th>{escape(str(s.get('label', '')))}</th>" for s in series)
    rows = []
    for i, t in enumerate(times):
        cells = "".join(f"<td>{s['points'][i]['mean']:.4f} ± {s['points'][i]['std']:.4f}</td>" for s in series)
        rows.append(f"<tr><td>{escape(str(t))}</td>{cells}</tr>")
    png = time_plot_png(result)
    chart = (f'<img alt="metric vs time after programming" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
             if png else "<p>Chart omitted: matplotlib is not installed.</p>")
    direction = "higher is better" if result.get("higher_is_better", True) else "lower is better"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:2rem}}"
        "table{border-collapse:collapse}td,th{padding:.25rem .7rem;border-bottom:1px solid #ddd;text-align:right}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(str(result.get('metric', '')))} ({direction}) on chip "
        f"{escape(str(result.get('chip', '')))}; float model: {result.get('fp32', float('nan')):.4f}</p>"
        f"<table><thead><tr><th>time after programming</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{chart}</body></html>\n"
    )


def write_time_html(result: Mapping[str, Any], path: str | os.PathLike[str], title: str = "cimflow simulate") -> None:
    """Write :func:`render_time_html` to ``path`` atomically."""
    atomic_write_text(path, render_time_html(result, title), what="HTML page")


__all__ = ["render_time_html", "time_plot_png", "write_time_html"]
