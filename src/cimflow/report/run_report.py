"""Terminal rendering of the report of ``cimflow run`` (the dict that is also written as report.json).

Reports read results; they never recompute them. The only arithmetic here is presentation:
unit prefixes, each energy component's share of the listed total, and the accuracy drop
``fp32 - mean`` that the accuracy table shows. Ratios (chip over CPU) are read from the report.

The tables are built once, as plain strings (:func:`report_tables`), and rendered by both the
terminal (:func:`print_run_report`) and the HTML writer (:mod:`cimflow.report.html`), so the two
always show the same numbers. Unknown values (``None``, missing keys, non-finite numbers) render
as ``-``; nothing here raises on a partial report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cimflow.errors import CimflowError
from cimflow.units import format_duration

MISSING = "-"
"""What an unknown value renders as."""

_SI_PREFIXES = {-5: "f", -4: "p", -3: "n", -2: "u", -1: "m", 0: "", 1: "k", 2: "M", 3: "G", 4: "T", 5: "P"}

_POWER_SOURCES = {
    "rapl": "measured with RAPL energy counters",
    "user": "given by the user",
    "preset": "taken from a preset (not measured)",
}


# --------------------------------------------------------------------------- reading the dict


def field(data: Any, *path: str) -> Any:
    """The value at ``data[path[0]][path[1]]...``, or ``None`` where any step is missing or not a mapping."""
    node = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def as_list(value: Any) -> list[Any]:
    """``value`` as a list when it is a list or tuple; otherwise an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


def as_number(value: Any) -> float | None:
    """A finite float, or ``None`` for ``None``, booleans, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def as_text(value: Any) -> str:
    """A string for display: ``-`` for ``None`` or an empty string."""
    if value is None:
        return MISSING
    text = str(value)
    return text if text else MISSING


# --------------------------------------------------------------------------- formatting


def format_si(value: Any, unit: str = "", digits: int = 3) -> str:
    """``value`` with an SI prefix and ``digits`` significant digits.

    ``format_si(1.23e-11, "J") == "12.3 pJ"``; without a unit the prefix follows the number
    directly: ``format_si(45600) == "45.6k"``. Prefixes run from f (1e-15) to P (1e15).
    """
    number = as_number(value)
    if number is None:
        return MISSING
    if number == 0:
        return f"0 {unit}" if unit else "0"
    exponent = max(-5, min(5, math.floor(math.log10(abs(number)) / 3)))
    scaled = number / 1000.0**exponent
    if abs(float(f"{scaled:.{digits}g}")) >= 1000 and exponent < 5:  # 999.96 rounds up to the next prefix
        exponent += 1
        scaled = number / 1000.0**exponent
    prefix = _SI_PREFIXES[exponent]
    text = f"{scaled:.{digits}g}"
    return f"{text} {prefix}{unit}" if unit else f"{text}{prefix}"


def format_plain(value: Any, unit: str = "") -> str:
    """A number already in its display unit (TOPS, mm²): three significant digits, whole from 1000 up."""
    number = as_number(value)
    if number is None:
        return MISSING
    text = f"{number:,.0f}" if abs(number) >= 1000 else f"{number:.3g}"
    return f"{text} {unit}" if unit else text


def format_ratio(value: Any) -> str:
    """A ratio such as ``"58.2x"`` (three significant digits; whole numbers from 100 up)."""
    number = as_number(value)
    if number is None:
        return MISSING
    return f"{number:,.0f}x" if abs(number) >= 100 else f"{number:.3g}x"


def format_percent(fraction: Any, decimals: int = 1) -> str:
    """A fraction (0..1) as a percentage: ``0.621 -> "62.1%"``."""
    number = as_number(fraction)
    return MISSING if number is None else f"{100.0 * number:.{decimals}f}%"


def format_fixed(value: Any, decimals: int = 4) -> str:
    """A number with a fixed number of decimals (AUC: ``0.7923``)."""
    number = as_number(value)
    return MISSING if number is None else f"{number:.{decimals}f}"


def format_count(value: Any) -> str:
    """A count with thousands separators: ``1234567 -> "1,234,567"``."""
    number = as_number(value)
    if number is None:
        return MISSING
    return f"{int(number):,}" if number == int(number) else f"{number:,.3g}"


def format_seconds(value: Any) -> str:
    """A duration in seconds: SI prefixes below a minute (``"12.3 s"``, ``"1.2 ms"``), else ``"2.5h"``."""
    number = as_number(value)
    if number is None:
        return MISSING
    return format_duration(number) if number >= 60 else format_si(number, "s")


def format_mean_std(mean: Any, std: Any, decimals: int = 4) -> str:
    """``"0.7812 ± 0.0034"``; just the mean when the spread is unknown."""
    if as_number(mean) is None:
        return MISSING
    if as_number(std) is None:
        return format_fixed(mean, decimals)
    return f"{format_fixed(mean, decimals)} ± {format_fixed(std, decimals)}"


def format_yes_no(value: Any) -> str:
    """``"yes"`` / ``"no"`` for a boolean, ``-`` otherwise."""
    if not isinstance(value, bool):
        return MISSING
    return "yes" if value else "no"


def time_label(point: Mapping[str, Any]) -> str:
    """The label of an accuracy point's time after programming (its ``t``, else ``t_seconds``)."""
    label = point.get("t")
    if isinstance(label, str) and label:
        return label
    seconds = as_number(point.get("t_seconds"))
    return MISSING if seconds is None else format_duration(seconds)


def power_source_text(source: Any) -> str:
    """A sentence fragment saying where the CPU's power figure came from."""
    if source is None:
        return "source unknown"
    return _POWER_SOURCES.get(str(source), f"source: {source}")


# --------------------------------------------------------------------------- table contents


@dataclass(frozen=True)
class ReportTable:
    """One table of the report as display strings, shared by the terminal and HTML renderers.

    ``key`` names the section (``model``, ``accuracy``, ``performance``, ``cpu_batches``,
    ``reference``, ``energy``, ``tiers``); ``numeric[i]`` says whether column ``i`` is right-aligned.
    """

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    caption: str = ""
    show_header: bool = True


@dataclass(frozen=True)
class EnergyShare:
    """One energy component: joules per inference and its fraction of the sum of known components."""

    component: str
    joules: float | None
    fraction: float | None


def _table(key: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
           numeric: Sequence[bool], caption: str = "", show_header: bool = True) -> ReportTable:
    """A ReportTable; an empty table gets one row of ``-`` so that it still renders."""
    body = tuple(tuple(row) for row in rows) or (tuple(MISSING for _ in columns),)
    return ReportTable(key, title, tuple(columns), body, tuple(numeric), caption, show_header)


def model_table(report: Mapping[str, Any]) -> ReportTable:
    """Model, dataset, training and chip as key/value rows."""
    model = field(report, "model")
    train_time = format_seconds(field(model, "train_seconds"))
    cached = field(model, "cached")
    if cached is True:
        training = f"loaded from cache (trained in {train_time})"
    elif cached is False:
        training = f"trained in this run ({train_time})"
    else:
        training = train_time
    rows = [
        ("model", as_text(field(model, "name"))),
        ("dataset", as_text(field(model, "dataset"))),
        ("parameters", format_count(field(model, "parameters"))),
        ("embedding tables", format_count(field(model, "tables"))),
        ("training", training),
        ("hardware-aware training", format_yes_no(field(model, "hwa"))),
        ("chip", as_text(field(report, "chip", "name"))),
        ("chip description", as_text(field(report, "chip", "description"))),
    ]
    return _table("model", "Model and chip", ("item", "value"), rows, (False, False), show_header=False)


def accuracy_table(report: Mapping[str, Any]) -> ReportTable:
    """One row per (variant, time after programming): mean ± std over chip instances and the drop vs fp32."""
    accuracy = field(report, "accuracy")
    metric = as_text(field(accuracy, "metric"))
    fp32 = as_number(field(accuracy, "fp32"))
    rows = [("fp32 (digital reference)", MISSING, format_fixed(fp32), format_fixed(0.0 if fp32 is not None else None))]
    for series in as_list(field(accuracy, "series")):
        label = as_text(field(series, "label"))
        points = [p for p in as_list(field(series, "points")) if isinstance(p, Mapping)]
        if not points:
            rows.append((label, MISSING, MISSING, MISSING))
        for point in points:
            mean = as_number(point.get("mean"))
            drop = fp32 - mean if fp32 is not None and mean is not None else None
            rows.append((label, time_label(point), format_mean_std(mean, point.get("std")), format_fixed(drop)))
    instances = format_count(field(accuracy, "instances"))
    return _table(
        "accuracy",
        f"Accuracy ({metric}), mean ± std over {instances} chip instances",
        ("variant", "time after programming", f"{metric} mean ± std", "drop vs fp32"),
        rows,
        (False, True, True, True),
        caption="drop vs fp32 = fp32 minus the mean; positive is a loss.",
    )


def performance_table(report: Mapping[str, Any]) -> ReportTable:
    """Chip vs CPU: throughput, efficiency, energy, latency, batch; chip-only TOPS and area."""
    chip = field(report, "performance", "chip")
    cpu = field(report, "performance", "cpu")
    ratios = field(report, "performance", "ratios_measured")

    def chip_and_cpu(key: str, formatter: Callable[..., str], *unit: str) -> tuple[str, str]:
        return formatter(field(chip, key), *unit), formatter(field(cpu, key), *unit)

    roof = field(report, "performance", "cpu_roofline")
    roof_ratios = field(report, "performance", "ratios_roofline")
    rows = [
        ("QPS (inferences/s)", *chip_and_cpu("qps", format_si), format_ratio(field(ratios, "qps")),
         format_si(field(roof, "qps")), format_ratio(field(roof_ratios, "qps"))),
        ("QPS/W", *chip_and_cpu("qps_per_w", format_si), format_ratio(field(ratios, "qps_per_w")),
         format_si(field(roof, "qps_per_w")), format_ratio(field(roof_ratios, "qps_per_w"))),
        ("energy / inference", *chip_and_cpu("energy_per_inference_j", format_si, "J"), MISSING, MISSING, MISSING),
        ("latency", *chip_and_cpu("latency_s", format_si, "s"), MISSING, format_si(field(roof, "latency_s"), "s"), MISSING),
        ("batch", *chip_and_cpu("batch", format_count), MISSING, format_count(field(roof, "batch")), MISSING),
        ("chips", format_count(field(chip, "chips")), MISSING, MISSING, MISSING, MISSING),
        ("bound by", as_text(field(chip, "bound_by")), MISSING, MISSING, MISSING, MISSING),
        ("power", format_si(field(chip, "power_w"), "W"), format_si(field(cpu, "power_w"), "W"), MISSING,
         format_si(field(roof, "power_w"), "W"), MISSING),
        ("area per chip", format_plain(field(chip, "area_mm2"), "mm²"), MISSING, MISSING, MISSING, MISSING),
    ]
    spread = as_number(field(cpu, "spread"))
    caption = (
        f"workload: {as_text(field(report, 'performance', 'workload', 'shape'))}, "
        f"{as_text(field(report, 'performance', 'workload', 'access'))}. "
        f"CPU measured: {format_count(field(cpu, 'threads'))} threads, {as_text(field(cpu, 'describe'))}"
        + (f" (spread over rounds {100 * spread:.1f} %)" if spread is not None else "")
        + f"; power {format_si(field(cpu, 'power_w'), 'W')}, {power_source_text(field(cpu, 'power_source'))}. "
        f"Roofline: {as_text(field(roof, 'label'))}, {as_text(field(roof, 'power_source'))}. "
        f"The headline ratios use the {as_text(field(report, 'performance', 'ratios', 'against'))}."
    )
    return _table("performance", "Performance: chip vs CPU (measured and roofline)",
                  ("metric", "chip", "CPU measured", "chip / CPU", "CPU roofline", "chip / roofline"), rows,
                  (False, True, True, True, True, True), caption=caption)


def headline_table(report: Mapping[str, Any]) -> ReportTable | None:
    """The opening block: accuracy on chip, QPS and QPS/W against the CPU, the binding resource."""
    h = field(report, "headline")
    if not isinstance(h, Mapping):
        return None
    rows = [
        (f"AUC loss on chip (at {as_text(h.get('at'))})", format_fixed(h.get("auc_loss")),
         f"fp32 {format_fixed(h.get('auc_fp32'))} -> {format_fixed(h.get('auc_on_chip'))}"),
        ("QPS", format_si(h.get("qps")), f"{format_ratio(h.get('ratio_qps'))} vs {as_text(h.get('ratio_against'))}; "
                                          f"{format_ratio(h.get('ratio_qps_measured'))} vs the CPU measured here"),
        ("QPS/W", format_si(h.get("qps_per_w")), f"{format_ratio(h.get('ratio_qps_per_w'))} vs {as_text(h.get('ratio_against'))}; "
                                                  f"{format_ratio(h.get('ratio_qps_per_w_measured'))} vs the CPU measured here"),
        ("bound by", as_text(h.get("bound_by")), f"{format_count(h.get('chips'))} chip(s)"),
        ("ISSCC 2026", "66x QPS, 181x QPS/W", "published, against a server CPU"),
    ]
    return _table("headline", "Headline", ("", "value", "against"), rows, (False, True, False), caption=as_text(h.get("text")))


def sensitivity_table(report: Mapping[str, Any]) -> ReportTable | None:
    """The chip/CPU QPS/W ratio as the assumptions that move it most change."""
    points = [p for p in as_list(field(report, "sensitivity")) if isinstance(p, Mapping)]
    if not points:
        return None
    rows = [(as_text(p.get("assumption")), as_text(p.get("value")), format_ratio(p.get("qps_per_w_ratio")),
             format_ratio(p.get("qps_ratio")), as_text(p.get("bound_by"))) for p in points]
    return _table("sensitivity", "Sensitivity of the chip / CPU ratios", ("assumption", "value", "QPS/W ratio", "QPS ratio", "bound by"),
                  rows, (False, False, True, True, False), caption="each assumption moved alone; the CPU held at the value the ratios use")


def cpu_batch_table(report: Mapping[str, Any]) -> ReportTable | None:
    """The CPU baseline measured at each batch size, or ``None`` when the report lists none."""
    points = [p for p in as_list(field(report, "performance", "cpu", "per_batch")) if isinstance(p, Mapping)]
    if not points:
        return None
    rows = [(format_count(p.get("batch")), format_si(p.get("qps")), format_si(p.get("latency_s"), "s"),
             format_si(p.get("qps_per_w"))) for p in points]
    return _table("cpu_batches", "CPU baseline by batch size", ("batch", "QPS", "latency", "QPS/W"), rows,
                  (True, True, True, True))


def reference_table(report: Mapping[str, Any]) -> ReportTable:
    """cimflow's modeled chip/CPU ratios next to the published ones."""
    reference = field(report, "reference")
    ratios = field(report, "performance", "ratios")
    rows = [
        ("QPS", format_ratio(field(ratios, "qps")), format_ratio(field(reference, "qps_ratio"))),
        ("QPS/W", format_ratio(field(ratios, "qps_per_w")), format_ratio(field(reference, "qps_per_w_ratio"))),
    ]
    caption = f"reference: {as_text(field(reference, 'source'))}"
    note = field(reference, "note")
    if note:
        caption += f" ({note})"
    return _table("reference", "Chip / CPU ratios: modeled vs published", ("ratio", "cimflow (modeled)", "reference"),
                  rows, (False, True, True), caption=caption)


def energy_shares(report: Mapping[str, Any]) -> list[EnergyShare]:
    """Energy components, largest first; fractions are of the sum of the components with a known value."""
    breakdown = field(report, "energy_breakdown")
    if not isinstance(breakdown, Mapping):
        return []
    joules = {str(name): as_number(value) for name, value in breakdown.items()}
    total = sum(value for value in joules.values() if value is not None)
    shares = [EnergyShare(name, value, value / total if value is not None and total > 0 else None)
              for name, value in joules.items()]
    return sorted(shares, key=lambda share: -share.joules if share.joules is not None else math.inf)


def energy_table(report: Mapping[str, Any]) -> ReportTable:
    """Energy per inference by component, in engineering units and as a share of the total."""
    shares = energy_shares(report)
    rows = [(share.component, format_si(share.joules, "J"), format_percent(share.fraction)) for share in shares]
    known = [share.joules for share in shares if share.joules is not None]
    if known:
        rows.append(("total", format_si(sum(known), "J"), format_percent(1.0)))
    caption = "total = sum of the components listed with a value." if len(known) < len(shares) else ""
    return _table("energy", "Energy per inference by component", ("component", "energy", "share"), rows,
                  (False, True, True), caption=caption)


def tier_names(report: Mapping[str, Any]) -> list[str]:
    """Every memory tier named by any table's placement or hit fractions, in first-seen order."""
    names: dict[str, None] = {}
    for tier in as_list(field(report, "tiers")):
        for key in ("placement", "hit_fraction"):
            mapping = field(tier, key)
            if isinstance(mapping, Mapping):
                names.update(dict.fromkeys(str(name) for name in mapping))
    return list(names)


def tiers_table(report: Mapping[str, Any]) -> ReportTable:
    """Per embedding table: size, the rows placed in each tier and the share of lookups that hit it."""
    names = tier_names(report)
    columns = ["table", "rows", "dim"]
    for name in names:
        columns += [f"{name} rows", f"{name} hits"]
    rows = []
    for tier in as_list(field(report, "tiers")):
        placement = field(tier, "placement")
        hits = field(tier, "hit_fraction")
        row = [as_text(field(tier, "table")), format_count(field(tier, "rows")), format_count(field(tier, "dim"))]
        for name in names:
            row += [format_count(field(placement, name)), format_percent(field(hits, name))]
        rows.append(row)
    return _table("tiers", "Embedding tables by memory tier", columns, rows, [False] + [True] * (len(columns) - 1),
                  caption="hits = share of the table's lookups served by that tier.")


def report_tables(report: Mapping[str, Any]) -> list[ReportTable]:
    """Every table of the report, in display order."""
    if not isinstance(report, Mapping):
        raise CimflowError(f"a run report must be a dict (as written to report.json), got {type(report).__name__}")
    head = headline_table(report)
    tables = ([head] if head is not None else []) + [model_table(report), accuracy_table(report), performance_table(report)]
    batches = cpu_batch_table(report)
    if batches is not None:
        tables.append(batches)
    tables.append(reference_table(report))
    sensitivity = sensitivity_table(report)
    if sensitivity is not None:
        tables.append(sensitivity)
    tables += [energy_table(report), tiers_table(report)]
    return tables


def text_items(report: Mapping[str, Any], key: str) -> list[str]:
    """The strings of a list field such as ``assumptions`` or ``notes`` (empty when missing)."""
    return [str(item) for item in as_list(field(report, key)) if item is not None]


def header_line(report: Mapping[str, Any]) -> str:
    """``created <time> · cimflow <version>``."""
    return f"created {as_text(field(report, 'created'))} · cimflow {as_text(field(report, 'cimflow_version'))}"


# --------------------------------------------------------------------------- terminal


def _rich_table(table: ReportTable) -> Table:
    """A rich Table; every cell is a Text so that brackets in labels are never read as markup."""
    rendered = Table(title=Text(table.title, style="bold"), title_justify="left", show_header=table.show_header)
    for name, numeric in zip(table.columns, table.numeric, strict=False):
        rendered.add_column(Text(name), justify="right" if numeric else "left")
    for row in table.rows:
        rendered.add_row(*(Text(cell) for cell in row))
    return rendered


def _print_list(console: Console, heading: str, items: list[str]) -> None:
    console.print(Text(heading, style="bold"))
    for item in items:
        console.print(Text(f"  • {item}"))


def print_run_report(report: Mapping[str, Any], console: Console) -> None:
    """Print the report of ``cimflow run``: model and chip, accuracy, performance (chip vs CPU, and
    the modeled ratios next to the published ones), energy by component, embedding tiers, assumptions."""
    tables = report_tables(report)
    console.rule(Text(as_text(field(report, "title")), style="bold"))
    console.print(Text(header_line(report), style="dim"))
    for table in tables:
        console.print()
        console.print(_rich_table(table))
        if table.caption:
            console.print(Text(table.caption, style="dim"))
    assumptions = text_items(report, "assumptions")
    console.print()
    _print_list(console, "Assumptions", assumptions or [MISSING])
    notes = text_items(report, "notes")
    if notes:
        console.print()
        _print_list(console, "Notes", notes)
