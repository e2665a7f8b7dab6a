"""The report of ``cimflow run``: terminal tables and the self-contained HTML file."""

from __future__ import annotations

import base64
import copy
import os
import re
import sys
from typing import Any

import pytest
from rich.console import Console

from cimflow.errors import CimflowError
from cimflow.report import html as html_report
from cimflow.report.html import NO_MATPLOTLIB_NOTE, write_html
from cimflow.report.run_report import (
    energy_shares,
    format_percent,
    format_ratio,
    format_si,
    print_run_report,
    report_tables,
)

IMG_PREFIX = '<img src="data:image/png;base64,'


def sample_report() -> dict[str, Any]:
    """A report shaped like the one ``cimflow run`` writes (numbers invented for the test)."""
    def points(means: list[float], std: float) -> list[dict[str, Any]]:
        times = (("1s", 1.0), ("1h", 3600.0), ("1d", 86400.0), ("1y", 31536000.0))
        return [{"t": t, "t_seconds": s, "mean": m, "std": std, "values": [m - std, m, m + std]}
                for (t, s), m in zip(times, means, strict=True)]

    return {
        "title": "DLRM on MovieLens-100k, hybrid RRAM/SRAM chip",
        "created": "2026-03-01T12:00:00+00:00",
        "cimflow_version": "0.1.0",
        "chip": {"name": "isscc2026-hybrid", "description": "28 nm hybrid RRAM/SRAM CIM (assumed internals)"},
        "model": {"name": "dlrm-small", "dataset": "movielens-100k", "parameters": 1234567, "tables": 3,
                  "train_seconds": 42.5, "cached": False, "hwa": True},
        "accuracy": {
            "metric": "AUC", "fp32": 0.79231, "instances": 5,
            "series": [
                {"label": "on chip", "points": points([0.7811, 0.7790, 0.7702, 0.7513], 0.0031)},
                {"label": "on chip + drift compensation", "points": points([0.7853, 0.7850, 0.7841, 0.7822], 0.0017)},
                {"label": "HWA fine-tuned", "points": points([0.7905, 0.7901, 0.7897, 0.7880], 0.0009)},
            ],
        },
        "performance": {
            "chip": {"qps": 1.234e6, "qps_per_w": 4.56e5, "energy_per_inference_j": 2.19e-6, "latency_s": 3.3e-4,
                     "batch": 256, "tops": 12.5, "tops_per_w": 31.7, "area_mm2": 18.4},
            "cpu": {"qps": 21300.0, "qps_per_w": 2510.0, "energy_per_inference_j": 3.98e-4, "latency_s": 0.0121,
                    "batch": 256, "power_w": 8.49, "power_source": "rapl", "threads": 8,
                    "per_batch": [{"batch": 1, "qps": 812.0, "latency_s": 1.23e-3, "qps_per_w": 95.6},
                                  {"batch": 256, "qps": 21300.0, "latency_s": 0.0121, "qps_per_w": 2510.0}]},
            "ratios": {"qps": 57.93, "qps_per_w": 181.67},
            "ratios_measured": {"qps": 57.93, "qps_per_w": 181.67},
        },
        "energy_breakdown": {"adc": 6.0e-7, "cells_lines": 2.5e-8, "dac_drivers": 1.2e-7, "adder_tree_shift_add": 8.0e-8,
                             "buffers": 1.5e-7, "interconnect": 4.0e-8, "dram": 9.0e-7, "digital_unit": 1.0e-7,
                             "host": 1.6e-7, "leakage": 1.5e-8},
        "tiers": [
            {"table": "user_id", "rows": 943, "dim": 16, "placement": {"sram_hot": 128, "rram": 815},
             "hit_fraction": {"sram_hot": 0.412, "rram": 0.588}},
            {"table": "item_id", "rows": 1682, "dim": 16, "placement": {"sram_hot": 256, "rram": 1426},
             "hit_fraction": {"sram_hot": 0.634, "rram": 0.366}},
            {"table": "genre", "rows": 19, "dim": 16, "placement": {"sram_hot": 19}, "hit_fraction": {"sram_hot": 1.0}},
        ],
        "sensitivity": [
            {"assumption": "as described", "value": "preset", "qps_per_w_ratio": 181.67, "qps_ratio": 57.93, "bound_by": "arrays"},
            {"assumption": "DRAM bandwidth", "value": "x0.5", "qps_per_w_ratio": 150.0, "qps_ratio": 40.0, "bound_by": "DRAM"},
            {"assumption": "DRAM bandwidth", "value": "x2", "qps_per_w_ratio": 190.0, "qps_ratio": 57.93, "bound_by": "arrays"},
        ],
        "reference": {"source": "ISSCC 2026 hybrid RRAM CIM chip", "qps_ratio": 66.0, "qps_per_w_ratio": 181.0,
                      "note": "the chip's internals are not public"},
        "assumptions": ["ADC energy 1.1 pJ per conversion (preset)", "hot rows chosen from training-set frequency"],
        "notes": ["trained with seed 0"],
    }


def render(report: dict[str, Any]) -> str:
    console = Console(record=True, width=160)
    print_run_report(report, console)
    return console.export_text()


def cells(text: str, label: str) -> list[str]:
    """The cells of the first table row whose first cell is ``label`` (box-drawing separators)."""
    for line in text.splitlines():
        parts = [part.strip() for part in re.split(r"[│┃]", line)]
        if len(parts) > 2 and parts[1] == label:
            return parts[1:-1]
    raise AssertionError(f"no row {label!r} in:\n{text}")


def html_cells(document: str, label: str) -> list[str]:
    """The cells of the first HTML table row whose first cell is ``label``."""
    for row in re.findall(r"<tr>(.*?)</tr>", document, flags=re.S):
        found = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)
        if found and found[0] == label:
            return found
    raise AssertionError(f"no row {label!r}")


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (1.23e-11, "J", "12.3 pJ"), (2.19e-6, "J", "2.19 uJ"), (4.0e-8, "J", "40 nJ"), (0.0121, "s", "12.1 ms"),
    (1.234e6, "", "1.23M"), (999.96, "", "1k"), (0.5, "", "500m"), (0.0, "J", "0 J"), (None, "J", "-"),
    (float("nan"), "J", "-"), (True, "", "-"),
])
def test_format_si_picks_the_prefix_that_leaves_one_to_999(value: Any, unit: str, expected: str) -> None:
    assert format_si(value, unit) == expected


def test_ratio_and_percent_formats() -> None:
    ratios = [format_ratio(x) for x in (66.0, 181.0, 57.93, 0.5, 1234.4, None)]
    assert ratios == ["66x", "181x", "57.9x", "0.5x", "1,234x", "-"]
    assert [format_percent(x) for x in (0.634, 1.0, None)] == ["63.4%", "100.0%", "-"]


def test_energy_shares_sum_to_one_and_are_sorted() -> None:
    shares = energy_shares(sample_report())
    assert sum(share.fraction for share in shares) == pytest.approx(1.0, abs=1e-12)
    assert [share.joules for share in shares] == sorted((share.joules for share in shares), reverse=True)
    assert shares[0].component == "dram"


# --------------------------------------------------------------------------- terminal


def test_terminal_report_shows_the_key_numbers() -> None:
    report = sample_report()
    text = render(report)
    assert report["title"] in text
    assert "0.7923" in text  # fp32 AUC at 4 decimals
    assert cells(text, "QPS (inferences/s)")[:4] == ["QPS (inferences/s)", "1.23M", "21.3k", "57.9x"]
    assert cells(text, "QPS/W")[1:4] == ["456k", "2.51k", "182x"]
    assert cells(text, "energy / inference")[1:3] == ["2.19 uJ", "398 uJ"]
    assert cells(text, "QPS") == ["QPS", "57.9x", "66x"]  # modeled vs reference, side by side
    assert "181x" in text
    assert "8 threads" in text and "RAPL" in text
    for tier in ("sram_hot", "rram"):
        assert f"{tier} rows" in text and f"{tier} hits" in text
    assert cells(text, "item_id")[1:] == ["1,682", "16", "256", "63.4%", "1,426", "36.6%"]
    for assumption in report["assumptions"]:
        assert assumption in text


def test_terminal_accuracy_rows_are_variants_times_times_with_the_drop() -> None:
    report = sample_report()
    text = render(report)
    series = report["accuracy"]["series"]
    rows = [line for line in text.splitlines() if "±" in line and "│" in line]
    assert len(rows) == sum(len(s["points"]) for s in series)
    first = series[0]["points"][0]
    drop = report["accuracy"]["fp32"] - first["mean"]
    assert f"{first['mean']:.4f} ± {first['std']:.4f}" in text
    assert f"{drop:.4f}" in cells(text, "on chip")


def test_terminal_energy_breakdown_in_engineering_units_and_percent() -> None:
    report = sample_report()
    text = render(report)
    total = sum(report["energy_breakdown"].values())
    dram = cells(text, "dram")
    assert dram[1] == "900 nJ"
    assert dram[2] == f"{100 * 0.9e-6 / total:.1f}%"
    assert cells(text, "total")[1:] == [format_si(total, "J"), "100.0%"]


def test_none_values_render_as_dash() -> None:
    report = sample_report()
    report["accuracy"]["fp32"] = None
    report["performance"]["chip"]["qps"] = None
    report["performance"]["chip"]["tops"] = None
    report["performance"]["ratios"]["qps"] = None
    report["performance"]["ratios_measured"]["qps"] = None
    report["performance"]["cpu"]["threads"] = None
    report["energy_breakdown"]["adc"] = None
    report["tiers"][0]["hit_fraction"]["rram"] = None
    report["model"]["train_seconds"] = None
    text = render(report)
    assert cells(text, "QPS (inferences/s)")[1:4] == ["-", "21.3k", "-"]
    assert cells(text, "bound by")[1] == "-"
    assert cells(text, "adc")[1:] == ["-", "-"]
    assert cells(text, "user_id")[-1] == "-"
    assert cells(text, "on chip")[-1] == "-"  # no drop without fp32
    assert cells(text, "QPS")[1] == "-"


def test_missing_optional_and_whole_sections_are_tolerated() -> None:
    report = sample_report()
    for key in ("notes", "tiers", "energy_breakdown", "reference", "assumptions"):
        del report[key]
    del report["performance"]["cpu"]["per_batch"]
    del report["performance"]["chip"]["area_mm2"]
    text = render(report)
    assert "Notes" not in text
    assert cells(text, "area per chip")[1] == "-"
    assert "0.7923" in text
    minimal = render({"title": "empty"})
    assert "empty" in minimal


def test_labels_are_not_read_as_rich_markup() -> None:
    report = sample_report()
    report["accuracy"]["series"][0]["label"] = "[bold]on chip[/bold]"
    assert "[bold]on chip[/bold]" in render(report)


def test_a_report_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(CimflowError, match="must be a dict"):
        print_run_report(["not", "a", "report"], Console(record=True))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- HTML


def test_html_has_three_charts_and_the_tables(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    report = sample_report()
    path = tmp_path / "report.html"
    write_html(report, path)
    document = path.read_text(encoding="utf-8")
    assert document.count(IMG_PREFIX) == 4  # accuracy, performance, sensitivity, energy
    for encoded in re.findall(re.escape(IMG_PREFIX) + r'([A-Za-z0-9+/=]+)"', document):
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    assert NO_MATPLOTLIB_NOTE not in document
    assert html_cells(document, "QPS (inferences/s)")[:4] == ["QPS (inferences/s)", "1.23M", "21.3k", "57.9x"]
    assert html_cells(document, "QPS") == ["QPS", "57.9x", "66x"]
    assert html_cells(document, "QPS/W")[1:4] == ["456k", "2.51k", "182x"]
    assert "0.7923" in document and "181x" in document
    assert html_cells(document, "dram")[1] == "900 nJ"
    assert html_cells(document, "item_id")[1:] == ["1,682", "16", "256", "63.4%", "1,426", "36.6%"]
    assert "<script" not in document.lower()


def test_html_escapes_all_text(tmp_path: Any) -> None:
    report = sample_report()
    report["title"] = "<script>alert('x')</script> & co"
    report["accuracy"]["series"][0]["label"] = "on chip <b>"
    report["assumptions"].append("rows < 10 & hot")
    path = tmp_path / "report.html"
    write_html(report, path)
    document = path.read_text(encoding="utf-8")
    assert "<script" not in document.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in document
    assert "on chip &lt;b&gt;" in document and "<b>" not in document
    assert "rows &lt; 10 &amp; hot" in document


def test_html_without_matplotlib_has_tables_and_a_note(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    path = tmp_path / "report.html"
    write_html(sample_report(), path)
    document = path.read_text(encoding="utf-8")
    assert IMG_PREFIX not in document
    assert NO_MATPLOTLIB_NOTE.replace("'", "&#x27;") in document
    assert html_cells(document, "QPS") == ["QPS", "57.9x", "66x"]


def test_html_with_none_values_and_missing_keys(tmp_path: Any) -> None:
    report = sample_report()
    report["accuracy"]["fp32"] = None
    report["accuracy"]["series"][1]["points"][0]["std"] = None
    report["performance"]["chip"]["qps"] = None
    report["performance"]["ratios"] = {"qps": None, "qps_per_w": None}
    report["performance"]["ratios_measured"] = {"qps": None, "qps_per_w": None}
    report["energy_breakdown"] = {name: None for name in report["energy_breakdown"]}
    for key in ("notes", "tiers", "reference"):
        del report[key]
    path = tmp_path / "report.html"
    write_html(report, path)
    document = path.read_text(encoding="utf-8")
    assert html_cells(document, "QPS (inferences/s)")[1:4] == ["-", "21.3k", "-"]
    assert html_cells(document, "QPS")[1:] == ["-", "-"]
    if _has_matplotlib():
        assert document.count(IMG_PREFIX) == 3  # no energy chart without any known component


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_html_write_is_atomic(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.html"
    path.write_text("old report", encoding="utf-8")
    report = sample_report()
    monkeypatch.setattr(html_report, "_charts", lambda _report: ({}, None))  # keep this test fast

    def fail(_source: Any, _target: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(html_report.os, "replace", fail)
    with pytest.raises(CimflowError, match="cannot write the HTML report"):
        write_html(report, path)
    assert path.read_text(encoding="utf-8") == "old report"
    assert os.listdir(tmp_path) == ["report.html"]  # the temporary file is gone
    monkeypatch.undo()
    monkeypatch.setattr(html_report, "_charts", lambda _report: ({}, None))
    write_html(report, path)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert os.listdir(tmp_path) == ["report.html"]


def test_tables_are_shared_between_terminal_and_html(tmp_path: Any) -> None:
    report = sample_report()
    report_copy = copy.deepcopy(report)
    tables = report_tables(report)
    assert report == report_copy  # reports read, never modify
    assert {t.key for t in tables} >= {"model", "accuracy", "performance", "reference", "energy", "tiers"}
    for table in tables:
        assert all(len(row) == len(table.columns) == len(table.numeric) for row in table.rows)


def leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every scalar in a nested dict/list."""
    if isinstance(node, dict):
        return [path for key, value in node.items() for path in leaf_paths(value, prefix + (key,))]
    if isinstance(node, list):
        return [path for index, value in enumerate(node) for path in leaf_paths(value, prefix + (index,))]
    return [prefix]


def set_none(report: dict[str, Any], path: tuple[Any, ...]) -> None:
    node: Any = report
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = None


def test_terminal_survives_any_single_value_being_none() -> None:
    paths = leaf_paths(sample_report())
    assert len(paths) > 100
    for path in paths:
        report = sample_report()
        set_none(report, path)
        assert "Assumptions" in render(report), path


def test_html_survives_every_value_being_none(tmp_path: Any) -> None:
    report = sample_report()
    for path in leaf_paths(report):
        set_none(report, path)
    path = tmp_path / "report.html"
    write_html(report, path)
    document = path.read_text(encoding="utf-8")
    assert IMG_PREFIX not in document  # nothing to draw
    assert html_cells(document, "QPS (inferences/s)")[1:] == ["-"] * 5


def test_sensitivity_table_lists_each_moved_assumption() -> None:
    text = render(sample_report())
    assert "Sensitivity of the chip / CPU ratios" in text
    assert cells(text, "DRAM bandwidth")[1:5] == ["x0.5", "150x", "40x", "DRAM"]
