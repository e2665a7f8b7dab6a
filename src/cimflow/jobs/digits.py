"""The digits job behind ``cimflow run --workload digits``: a small CNN
trained on scikit-learn's digits, simulated on every shipped preset."""

from __future__ import annotations

import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from cimflow.api import convert, drift, program
from cimflow.chip import preset_names
from cimflow.progress import progress_bar
from cimflow.vision import accuracy, load_digits_data, small_cnn, train_classifier

TIMES = (("1s", 1.0), ("1d", 86400.0))


def run_digits_demo(instances: int = 3, seed: int = 0, console: Console | None = None) -> dict:
    """Train the digits CNN, then for each preset program ``instances`` chip instances and
    measure test accuracy at 1 s and 1 day after programming. Returns the results."""
    console = console or Console()
    torch.manual_seed(seed)
    start = time.perf_counter()
    data = load_digits_data(seed=seed)
    model = train_classifier(small_cnn(), data, seed=seed)
    fp32 = accuracy(model, data.x_test, data.y_test)
    console.print(f"digits CNN trained in {time.perf_counter() - start:.1f} s: fp32 test accuracy {fp32:.4f} ({len(data.y_test)} images)")
    results: dict = {"workload": "digits-cnn", "fp32_accuracy": fp32, "instances": instances, "presets": {}}
    presets = preset_names()
    with progress_bar(console) as progress:
        task = progress.add_task("simulating presets", total=len(presets) * instances)
        for name in presets:
            cim = convert(model, name)
            per_time: dict[str, list[float]] = {label: [] for label, _ in TIMES}
            for k in range(instances):
                program(cim, seed=seed + k)
                for label, t in TIMES:
                    drift(cim, t)
                    per_time[label].append(accuracy(cim, data.x_test, data.y_test))
                progress.advance(task)
            results["presets"][name] = {
                label: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "values": v} for label, v in per_time.items()
            }
    table = Table(title=f"digits CNN on each preset ({instances} chip instances; fp32 {fp32:.4f})")
    table.add_column("preset")
    for label, _ in TIMES:
        table.add_column(f"accuracy @ {label}", justify="right")
        table.add_column(f"% of fp32 @ {label}", justify="right")
    for name, per in results["presets"].items():
        row = [name]
        for label, _ in TIMES:
            row += [f"{per[label]['mean']:.4f} ± {per[label]['std']:.4f}", f"{100 * per[label]['mean'] / fp32:.1f}"]
        table.add_row(*row)
    console.print(table)
    return results
