"""Self-contained HTML report of ``cimflow run``: one file, inline CSS, charts as base64 PNG.

The tables are the ones the terminal shows (:func:`cimflow.report.run_report.report_tables`).
Charts are drawn with matplotlib's Agg canvas (no pyplot, no global state). matplotlib is an
optional extra (``pip install 'cimflow[plots]'``); without it the file has the tables and a note.
Like every report, this reads results and never recomputes them.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from cimflow.errors import CimflowError
from cimflow.fileio import atomic_write_text
from cimflow.report.run_report import (
    MISSING,
    ReportTable,
    as_list,
    as_number,
    as_text,
    energy_shares,
    field,
    format_percent,
    format_ratio,
    format_si,
    header_line,
    report_tables,
    text_items,
    time_label,
)

NO_MATPLOTLIB_NOTE = "Charts omitted: matplotlib is not installed (pip install 'cimflow[plots]')."

_DPI = 110
_CHIP_COLOR = "#2b6cb0"
_CPU_COLOR = "#a0aec0"

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1a202c; background: #fff;
       margin: 0; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 0.5rem; border-bottom: 1px solid #e2e8f0; padding-bottom: 0.2rem; }
.meta { color: #4a5568; margin-top: 0; }
.note { background: #fffbea; border-left: 4px solid #d69e2e; padding: 0.5rem 0.8rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.3rem 0; }
th, td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #edf2f7; text-align: left; vertical-align: top; }
thead th { background: #f7fafc; border-bottom: 2px solid #cbd5e0; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.caption { color: #4a5568; font-size: 0.85rem; margin: 0.2rem 0 0.6rem; }
figure { margin: 0.8rem 0; }
figure img { max-width: 100%; height: auto; }
ul { padding-left: 1.3rem; }
"""


@dataclass(frozen=True)
class Chart:
    """A rendered chart: PNG bytes in base64 and a text alternative."""

    png_base64: str
    alt: str


# --------------------------------------------------------------------------- charts


def _load_matplotlib() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` class and Agg canvas; ImportError when matplotlib is not installed."""
    import matplotlib  # noqa: F401  (imported first so that a missing package fails here)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _png_base64(figure: Any, canvas_class: Any) -> str:
    canvas_class(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _accuracy_figure(report: Mapping[str, Any], figure_class: Any) -> Any | None:
    """Metric vs time after programming (log axis): one line per variant with ±std error bars,
    each chip instance as a faint dot, fp32 as a dashed line. ``None`` when no point can be drawn."""
    accuracy = field(report, "accuracy")
    metric = as_text(field(accuracy, "metric"))
    figure = figure_class(figsize=(7.5, 4.2), layout="constrained")
    axes = figure.add_subplot()
    tick_labels: dict[float, str] = {}
    for series in as_list(field(accuracy, "series")):
        points = []
        for point in as_list(field(series, "points")):
            if not isinstance(point, Mapping):
                continue
            seconds, mean = as_number(point.get("t_seconds")), as_number(point.get("mean"))
            if seconds is not None and seconds > 0 and mean is not None:  # a log axis has no t = 0
                points.append((seconds, mean, as_number(point.get("std")) or 0.0, point))
        if not points:
            continue
        points.sort(key=lambda item: item[0])
        container = axes.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                                  marker="o", capsize=3, label=as_text(field(series, "label")))
        color = container.lines[0].get_color()
        for seconds, _, _, point in points:
            values = [v for v in (as_number(x) for x in as_list(point.get("values"))) if v is not None]
            axes.scatter([seconds] * len(values), values, s=9, alpha=0.3, color=color, linewidths=0)
            tick_labels.setdefault(seconds, time_label(point))
    if not tick_labels:
        return None
    fp32 = as_number(field(accuracy, "fp32"))
    if fp32 is not None:
        axes.axhline(fp32, linestyle="--", color="#1a202c", linewidth=1.2, label=f"fp32 ({fp32:.4f})")
    axes.set_xscale("log")
    if len(tick_labels) <= 12:
        ordered = sorted(tick_labels)
        axes.set_xticks(ordered, labels=[tick_labels[t] for t in ordered])
        axes.minorticks_off()
    axes.set_xlabel("time after programming")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} vs time after programming (mean ± std over chip instances)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _energy_figure(report: Mapping[str, Any], figure_class: Any) -> Any | None:
    """Horizontal bars: each component's share of the energy per inference. ``None`` without data."""
    shares = [share for share in energy_shares(report) if share.fraction is not None]
    if not shares:
        return None
    percents = [100.0 * (share.fraction or 0.0) for share in shares]  # every fraction is known here
    figure = figure_class(figsize=(7.5, 1.3 + 0.36 * len(shares)), layout="constrained")
    axes = figure.add_subplot()
    positions = list(range(len(shares)))
    axes.barh(positions, percents, color=_CHIP_COLOR)
    axes.set_yticks(positions, labels=[share.component for share in shares])
    axes.invert_yaxis()
    for position, percent, share in zip(positions, percents, shares, strict=True):
        label = f"{format_percent(share.fraction)}  ({format_si(share.joules, 'J')})"
        axes.annotate(label, xy=(max(percent, 0.0), position), xytext=(4, 0), textcoords="offset points",
                      va="center", fontsize="small")
    axes.set_xlim(0, max(max(percents), 1e-9) * 1.4)
    axes.set_xlabel("% of energy per inference")
    axes.set_title("Energy per inference by component")
    axes.grid(axis="x", alpha=0.3)
    return figure


def _performance_figure(report: Mapping[str, Any], figure_class: Any) -> Any | None:
    """QPS and QPS/W, chip vs CPU, log scale, titled with the modeled and the published ratios."""
    performance = field(report, "performance")
    reference = field(report, "reference")
    panels = (("QPS", "qps", "qps_ratio", "inferences/s"), ("QPS/W", "qps_per_w", "qps_per_w_ratio", "inferences/s per W"))
    bars_per_panel = []
    for _, key, _, _ in panels:
        values = (("chip", as_number(field(performance, "chip", key)), _CHIP_COLOR),
                  ("CPU", as_number(field(performance, "cpu", key)), _CPU_COLOR))
        bars_per_panel.append([(name, value, color) for name, value, color in values if value is not None and value > 0])
    if not any(bars_per_panel):
        return None
    figure = figure_class(figsize=(8.0, 4.2), layout="constrained")
    for axes, (metric, key, reference_key, unit), bars in zip(figure.subplots(1, 2), panels, bars_per_panel, strict=True):
        axes.set_yscale("log")
        if bars:
            heights = [value for _, value, _ in bars]
            axes.bar([name for name, _, _ in bars], heights, color=[color for _, _, color in bars], width=0.6)
            for name, value, _ in bars:
                axes.annotate(format_si(value), xy=(name, value), xytext=(0, 3), textcoords="offset points",
                              ha="center", fontsize="small")
            axes.set_ylim(min(heights) / 3.0, max(heights) * 6.0)
        modeled = format_ratio(field(performance, "ratios", key))
        published = format_ratio(field(reference, reference_key))
        axes.set_title(f"{metric}\nchip / CPU: modeled {modeled}, reference {published}", fontsize="medium")
        axes.set_ylabel(unit)
        axes.grid(axis="y", alpha=0.3)
    source = field(reference, "source")
    if source:
        figure.suptitle(f"reference: {source}", fontsize="small", color="#4a5568")
    return figure


def _sensitivity_figure(report: Mapping[str, Any], figure_class: Any) -> Any | None:
    """Tornado chart: the chip / CPU QPS/W ratio as each assumption moves (low and high value)."""
    points = [p for p in as_list(field(report, "sensitivity")) if isinstance(p, Mapping)]
    base = next((as_number(p.get("qps_per_w_ratio")) for p in points if p.get("assumption") == "as described"), None)
    groups: dict[str, list[tuple[str, float]]] = {}
    for p in points:
        value = as_number(p.get("qps_per_w_ratio"))
        if p.get("assumption") != "as described" and value is not None and value > 0:
            groups.setdefault(str(p.get("assumption")), []).append((as_text(p.get("value")), value))
    if base is None or base <= 0 or not groups:
        return None
    figure = figure_class(figsize=(8.0, 0.7 * len(groups) + 1.6), layout="constrained")
    axes = figure.subplots()
    axes.set_xscale("log")
    names = list(groups)
    for i, name in enumerate(names):
        for label, value in groups[name]:
            axes.barh(i, value / base, left=base, color=_CHIP_COLOR if value >= base else _CPU_COLOR, height=0.5)
            axes.annotate(f"{label}: {format_ratio(value)}", xy=(value, i), xytext=(4 if value >= base else -4, 0),
                          textcoords="offset points", ha="left" if value >= base else "right", va="center", fontsize="small")
    axes.axvline(base, color="#2d3748", linewidth=1)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel(f"chip / CPU QPS/W (as described: {format_ratio(base)})")
    axes.grid(axis="x", alpha=0.3)
    return figure


def _charts(report: Mapping[str, Any]) -> tuple[dict[str, Chart], str | None]:
    """Charts keyed by the table they follow, and a note when charts could not be drawn."""
    try:
        figure_class, canvas_class = _load_matplotlib()
    except ImportError:
        return {}, NO_MATPLOTLIB_NOTE
    drawers = (
        ("accuracy", _accuracy_figure, "accuracy versus time after programming, one line per variant"),
        ("reference", _performance_figure, "QPS and QPS/W of the chip and the CPU on a log scale"),
        ("energy", _energy_figure, "share of energy per inference by component"),
        ("sensitivity", _sensitivity_figure, "chip / CPU QPS/W ratio as each assumption moves"),
    )
    charts = {}
    for key, draw, alt in drawers:
        figure = draw(report, figure_class)
        if figure is not None:
            charts[key] = Chart(_png_base64(figure, canvas_class), alt)
    return charts, None


# --------------------------------------------------------------------------- HTML


def _cell(tag: str, text: str, numeric: bool, extra: str = "") -> str:
    css = ' class="num"' if numeric else ""
    return f"<{tag}{css}{extra}>{escape(text)}</{tag}>"


def _table_html(table: ReportTable) -> str:
    lines = ["<table>"]
    if table.show_header:
        header = "".join(_cell("th", name, numeric, ' scope="col"') for name, numeric in zip(table.columns, table.numeric, strict=False))
        lines.append(f"<thead><tr>{header}</tr></thead>")
    lines.append("<tbody>")
    for row in table.rows:
        cells = []
        for index, (text, numeric) in enumerate(zip(row, table.numeric, strict=False)):
            row_header = index == 0 and not table.show_header
            cells.append(_cell("th", text, numeric, ' scope="row"') if row_header else _cell("td", text, numeric))
        lines.append(f"<tr>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _section_html(table: ReportTable, chart: Chart | None) -> str:
    parts = [f"<section>\n<h2>{escape(table.title)}</h2>", _table_html(table)]
    if table.caption:
        parts.append(f'<p class="caption">{escape(table.caption)}</p>')
    if chart is not None:
        parts.append(f'<figure><img src="data:image/png;base64,{chart.png_base64}" alt="{escape(chart.alt)}"></figure>')
    parts.append("</section>")
    return "\n".join(parts)


def _list_html(heading: str, items: list[str]) -> str:
    entries = "\n".join(f"<li>{escape(item)}</li>" for item in items)
    return f"<section>\n<h2>{escape(heading)}</h2>\n<ul>\n{entries}\n</ul>\n</section>"


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML document (a string)."""
    tables = report_tables(report)
    charts, chart_note = _charts(report)
    title = as_text(field(report, "title"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head>\n<meta charset="utf-8">\n<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>",
        "<body>\n<main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(header_line(report))}</p>',
    ]
    if chart_note:
        parts.append(f'<p class="note">{escape(chart_note)}</p>')
    parts += [_section_html(table, charts.get(table.key)) for table in tables]
    parts.append(_list_html("Assumptions", text_items(report, "assumptions") or [MISSING]))
    notes = text_items(report, "notes")
    if notes:
        parts.append(_list_html("Notes", notes))
    parts.append("</main>\n</body>\n</html>\n")
    return "\n".join(parts)


def write_html(report: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the report of ``cimflow run`` to ``path`` as one self-contained HTML file.

    Contains the terminal's tables, and, when matplotlib is installed, three charts: accuracy vs
    time after programming, chip vs CPU QPS and QPS/W with the published ratios, and the energy
    breakdown. The file is written atomically (a temporary file, then ``os.replace``).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CimflowError(f"cannot write the HTML report to {target}: {error}") from error
    atomic_write_text(target, render_html(report), "the HTML report")
