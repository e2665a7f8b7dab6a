"""Compare the macro TOPS/W model with data-driven baselines on the same cross-validation folds.

Usage: python scripts/macro_baselines.py [CSV] [--seeds 10]   (CSV: default the shipped imc_macros.csv)

For each fold seed it runs :func:`cimflow.cost.macros.calibrate` (5 folds grouped by paper)
and, on exactly the same folds, three baselines fitted on the training rows' design parameters:
a constant (the median TOPS/W), a linear regression of ln TOPS/W on log features, and a random
forest on the same features. It prints the held-out median |predicted / reported - 1| of each,
per seed and averaged, then the model's error by class and how many rows it gets within 30 %
and 2x (first seed). The numbers in docs/cost_model.md come from this script.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

from cimflow.cost.macros import SHIPPED_MACROS_CSV, calibrate, compute_class, read_macro_csv

CLASSES = ("charge", "current", "current_nvm", "dimc", "digital")


def features(design) -> list[float]:
    """Log design parameters and class flags (missing values filled with neutral numbers)."""

    def log_or(value, default):
        return math.log(value) if value else math.log(default)

    kind = compute_class(design)
    return [
        math.log(design.node_m),
        math.log(design.supply_v),
        math.log(design.b_x),
        math.log(design.b_w),
        design.b_adc or 0.0,
        log_or(design.n_dot, 64.0),
        log_or(design.t_core_s, 1e-8),
        float(design.imc_processor),
    ] + [float(kind == name) for name in CLASSES]


def median_error(predicted: np.ndarray, reported: np.ndarray) -> float:
    return float(np.median(np.abs(predicted / reported - 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", default=SHIPPED_MACROS_CSV)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()

    rows = [r for r in read_macro_csv(args.csv) if r.design is not None and r.reported_tops_w is not None]
    x = np.array([features(r.design) for r in rows])
    target = np.log([r.reported_tops_w for r in rows])
    scores: dict[str, list[float]] = defaultdict(list)
    first = None
    for seed in range(args.seeds):
        result = calibrate(args.csv, k=5, seed=seed)
        held_out = result.held_out_tops_w
        assert [h["index"] for h in held_out] == [r.index for r in rows]
        first = first or held_out
        folds = np.array([h["fold"] for h in held_out])
        reported = np.exp(target)
        scores["this model"].append(median_error(np.array([h["predicted"] for h in held_out]), reported))
        baselines = {
            "constant (training median)": lambda: None,
            "linear regression, log features": LinearRegression,
            "random forest (300 trees), same features": lambda: RandomForestRegressor(
                300, min_samples_leaf=2, random_state=0
            ),
        }
        for name, make in baselines.items():
            predicted = np.empty(len(rows))
            for fold in range(result.k):
                train, test = folds != fold, folds == fold
                model = make()
                if model is None:
                    predicted[test] = np.median(target[train])
                else:
                    predicted[test] = model.fit(x[train], target[train]).predict(x[test])
            scores[name].append(median_error(np.exp(predicted), reported))

    print(f"{len(rows)} TOPS/W rows, 5 folds grouped by paper, seeds 0-{args.seeds - 1}\n")
    print("| predictor of TOPS/W | CV median, seed 0 | mean over seeds | range |")
    print("|---|---|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {values[0]:.3f} | {np.mean(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    print("\nthis model, seed 0, by class:")
    errors = np.array([abs(h["predicted"] / h["reported"] - 1.0) for h in first])
    kinds = np.array([h["compute_class"] for h in first])
    for name in CLASSES:
        mask = kinds == name
        if mask.any():
            print(f"  {name}: {np.median(errors[mask]):.2f} ({mask.sum()} rows)")
    within_2x = (np.abs(np.log([h["predicted"] / h["reported"] for h in first])) <= math.log(2)).sum()
    print(f"  within 30%: {(errors <= 0.3).sum()} rows; within 2x: {within_2x} rows")


if __name__ == "__main__":
    main()
