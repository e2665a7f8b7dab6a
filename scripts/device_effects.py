"""What each new device effect does to the digits CNN and the MovieLens DLRM after 1 s, 1 day, 1 year.

Usage: python scripts/device_effects.py [--out device_effects.json] [--instances 3] [--dlrm-test 10000]
       [--workloads digits,dlrm] [--markdown FILE]

For each workload and chip it builds a few variants of the chip through the public API (a preset,
its ``model_dump()`` changed field by field, validated again as a Chip), then programs
``--instances`` chip instances (seeds 0..N-1) and reads the accuracy (digits: top-1 on the held-out
quarter of scikit-learn's digits, 449 images; DLRM: AUC on a seeded subset of the MovieLens-100k
test split) 1 s, 1 day and 1 year after programming. No drift compensation.

Variants (each row of the tables says which apply):

- ``before``: the chip as it was before the device plug-ins: pcm-hermes-like with the generic
  device (one drift-exponent distribution nu ~ N(0.056, 0.009), the HERMES 2-device fit flattened
  at G/g_max = 0.5, t0 = 300 s, no accumulated 1/f noise: the preset before commit 606e363) and
  the ADC full scale ``per_array_max`` (the worst case, the default before 4d03661);
  rram-analog-generic with ``per_array_max``.
- ``pcm`` / ``rram`` model: pcm-hermes-like as shipped (HERMES fits by conductance); for RRAM the
  relaxation model replacing the generic drift (assumption: relaxation_sigma_per_decade 0.0172
  g_max, the broadening the RRAM presets' generic drift gives at G/g_max = 0.5:
  0.5 x 0.015 x ln(86400) / log10(86400); no mean shift).
- ADC ``expected`` (the new default: mean + 4 sigma of the expected column sums) against
  ``per_array_max`` (worst case).
- ``85 C``: temperature_k 358.15; drift activation energy 0.2 eV (pcm-hermes-like's own
  assumption; for the RRAM chips the same 0.2 eV is assumed, no measured value is used).
- ``yield``: 0.1 % (and 1 %) dead rows and dead columns per array, 4 spare rows per array.
  (hybrid-rram-sram-28nm runs its MLPs on digital SRAM and its embedding tables do not draw
  dead lines yet, so yield is not run there.)

Results are written after every (workload, chip, variant) through cimflow.fileio, so an
interrupted run resumes where it stopped (same --out, same settings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import cimflow
from cimflow.chip import Chip
from cimflow.errors import CimflowError
from cimflow.fileio import atomic_write_text, check_output_path, write_json
from cimflow.progress import progress_bar
from cimflow.readers import read_text_bounded

TIMES = (("1 s", 1.0), ("1 day", 86400.0), ("1 year", 365.25 * 86400.0))
PCM_FIELDS = ("drift_nu_mean", "drift_nu_std", "noise_q_s", "t_read_s")
RELAXATION_SIGMA = 0.5 * 0.015 * 11.366748 / 4.936514  # 0.0172 g_max per decade (see the module docstring)
HOT_C = 358.15
EA_EV = 0.2
ALL_CHIPS = ("hybrid-rram-sram-28nm", "pcm-hermes-like", "rram-analog-generic")

Edit = Callable[[dict[str, Any]], None]


def _device(array: str) -> Callable[[Callable[[dict[str, Any]], None]], Edit]:
    def wrap(fn: Callable[[dict[str, Any]], None]) -> Edit:
        return lambda chip: fn(chip["arrays"][array]["device"])
    return wrap


def generic_flat_pcm(array: str) -> Edit:
    """pcm-hermes-like's device before the PCM plug-in (commit 606e363^)."""
    def edit(dev: dict[str, Any]) -> None:
        for name in PCM_FIELDS:
            dev.pop(name, None)
        dev["model"] = "generic"
        dev["drift"] = {"nu_mean": 0.056, "nu_std": 0.009, "t0_s": 300.0, "activation_energy_ev": 0.0,
                        "source": "before 606e363: HERMES 2-device fit flattened at G/g_max = 0.5"}
    return _device(array)(edit)


def rram_relaxation(array: str) -> Edit:
    def edit(dev: dict[str, Any]) -> None:
        dev["model"] = "rram"
        dev["drift"] = {"nu_mean": 0.0, "nu_std": 0.0, "t0_s": dev["drift"]["t0_s"], "activation_energy_ev": 0.0}
        dev["relaxation_sigma_per_decade"] = {"pieces": [{"coefficients": [RELAXATION_SIGMA]}]}
        dev["relaxation_shift_per_decade"] = 0.0
    return _device(array)(edit)


def hot(array: str) -> Edit:
    def edit(dev: dict[str, Any]) -> None:
        dev["temperature_k"] = HOT_C
        if not dev["drift"].get("activation_energy_ev"):
            dev["drift"]["activation_energy_ev"] = EA_EV
    return _device(array)(edit)


def dead_lines(array: str, rate: float = 1e-3) -> Edit:
    def edit(dev: dict[str, Any]) -> None:
        dev["array_yield"] = {"dead_row_rate": rate, "dead_col_rate": rate, "spare_rows": 4}
    return _device(array)(edit)


def adc_range(array: str, mode: str) -> Edit:
    def edit(chip: dict[str, Any]) -> None:
        adc = chip["arrays"][array]["adc"]
        adc["range"] = mode
        if mode != "fixed":
            adc.pop("full_scale", None)
    return edit


def variants(chip: str) -> list[tuple[str, list[Edit]]]:
    """(label, edits) for each variant of ``chip``; edits apply to the preset's model_dump()."""
    if chip == "pcm-hermes-like":
        a = "pcm"
        return [
            ("before: generic flat drift, ADC worst case", [generic_flat_pcm(a), adc_range(a, "per_array_max")]),
            ("PCM model, ADC worst case", [adc_range(a, "per_array_max")]),
            ("PCM model, ADC expected (preset now)", []),
            ("PCM model, ADC expected, 85 C", [hot(a)]),
            ("PCM model, ADC expected, 0.1 % dead rows/cols, 4 spare rows", [dead_lines(a)]),
            ("PCM model, ADC expected, 1 % dead rows/cols, 4 spare rows", [dead_lines(a, 1e-2)]),
        ]
    if chip == "rram-analog-generic":
        a = "rram"
        return [
            ("before: generic drift, ADC worst case", [adc_range(a, "per_array_max")]),
            ("generic drift, ADC expected (preset now)", []),
            ("RRAM relaxation model, ADC expected", [rram_relaxation(a)]),
            ("RRAM relaxation model, ADC expected, 85 C (Ea 0.2 eV assumed)", [rram_relaxation(a), hot(a)]),
            ("RRAM relaxation model, ADC expected, 0.1 % dead rows/cols, 4 spare rows", [rram_relaxation(a), dead_lines(a)]),
            ("RRAM relaxation model, ADC expected, 1 % dead rows/cols, 4 spare rows", [rram_relaxation(a), dead_lines(a, 1e-2)]),
        ]
    if chip == "hybrid-rram-sram-28nm":
        a = "rram_emb"
        return [
            ("preset now: generic drift, ADC fixed (one step per level)", []),
            ("RRAM relaxation model, ADC fixed", [rram_relaxation(a)]),
            ("RRAM relaxation model, ADC fixed, 85 C (Ea 0.2 eV assumed)", [rram_relaxation(a), hot(a)]),
            ("RRAM relaxation model, ADC expected", [rram_relaxation(a), adc_range(a, "expected")]),
            ("RRAM relaxation model, ADC worst case", [rram_relaxation(a), adc_range(a, "per_array_max")]),
        ]
    raise CimflowError(f"no variants for chip {chip!r}")


def build_chip(name: str, edits: list[Edit]) -> Chip:
    data = cimflow.load_chip(name).model_dump(mode="json")
    for edit in edits:
        edit(data)
    return Chip.model_validate(data)


# ----------------------------------------------------------------------------- workloads
class Digits:
    name = "digits CNN (top-1)"
    chips = ("pcm-hermes-like", "rram-analog-generic")

    def __init__(self, seed: int, weights: dict[str, list] | None = None) -> None:
        from cimflow.vision import load_digits_data, small_cnn, train_classifier

        torch.manual_seed(seed)  # the initial weights, as in cimflow.jobs.digits (train_classifier seeds only the training)
        self.data = load_digits_data(seed=seed)
        if weights is None:  # a resumed run reuses the weights it trained first
            self.model = train_classifier(small_cnn(), self.data, seed=seed).eval()
        else:
            self.model = small_cnn().eval()
            self.model.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in weights.items()})
        self.size = len(self.data.y_test)
        self.fp32 = self.score(self.model)

    def score(self, model: torch.nn.Module) -> float:
        from cimflow.vision import accuracy

        return accuracy(model, self.data.x_test, self.data.y_test)

    def convert(self, chip: Chip) -> torch.nn.Module:
        return cimflow.convert(self.model, chip)


class DLRM:
    name = "MovieLens DLRM (AUC)"
    chips = ("hybrid-rram-sram-28nm", "pcm-hermes-like", "rram-analog-generic")

    def __init__(self, seed: int, test_size: int) -> None:
        from cimflow.recsys.data import load_movielens_100k
        from cimflow.recsys.train import train_movielens_dlrm

        self.model, _ = train_movielens_dlrm(seed=seed, cache=True)
        self.model.eval()
        test = load_movielens_100k(seed=seed).test
        if test_size < len(test):
            pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:test_size]
            test = test.subset(pick.sort().values, name="test subset")
        self.test = test
        self.size = len(test)
        self.fp32 = self.score(self.model)

    def score(self, model: torch.nn.Module) -> float:
        from cimflow.recsys.train import evaluate_auc

        return evaluate_auc(model, self.test)

    def convert(self, chip: Chip) -> torch.nn.Module:
        return cimflow.convert(self.model, chip)


# ----------------------------------------------------------------------------- run
def _load(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    if not out.exists():
        return {"settings": settings, "workloads": {}, "rows": {}, "digits_weights": None}
    done = json.loads(read_text_bounded(out, 16 << 20, "device-effects results"))
    if done.get("settings") != settings:
        raise CimflowError(f"{out} holds results of other settings ({done.get('settings')}); "
                           "use another --out or the same settings to resume")
    return done


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = check_output_path(args.out, "results")
    settings = {"instances": args.instances, "seed": args.seed, "dlrm_test": args.dlrm_test,
                "times_s": [t for _, t in TIMES]}
    results = _load(out, settings)
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(wanted) - {"digits", "dlrm"})
    if unknown:
        raise CimflowError(f"unknown workloads {unknown}: allowed digits, dlrm")
    with progress_bar() as progress:
        for key in wanted:
            work: Digits | DLRM
            if key == "digits":
                work = Digits(args.seed, results.get("digits_weights"))
                results["digits_weights"] = {k: v.tolist() for k, v in work.model.state_dict().items()}
            else:
                work = DLRM(args.seed, args.dlrm_test)
            results["workloads"][key] = {"name": work.name, "fp32": work.fp32, "eval_size": work.size}
            todo = [(chip, label, edits) for chip in work.chips for label, edits in variants(chip)
                    if f"{key}|{chip}|{label}" not in results["rows"]]
            task = progress.add_task(f"{work.name}: {len(todo)} variants", total=len(todo) * args.instances)
            for chip_name, label, edits in todo:
                started = time.perf_counter()
                cim = work.convert(build_chip(chip_name, edits))
                per_t: dict[str, list[float]] = {t: [] for t, _ in TIMES}
                for k in range(args.instances):
                    cimflow.program(cim, seed=args.seed + k)
                    for t_label, t in TIMES:
                        cimflow.drift(cim, t)
                        per_t[t_label].append(work.score(cim))
                    progress.advance(task)
                results["rows"][f"{key}|{chip_name}|{label}"] = {
                    "workload": key, "chip": chip_name, "variant": label, "seconds": time.perf_counter() - started,
                    "points": {t: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "values": v} for t, v in per_t.items()}}
                write_json(out, results, "device-effects results")
    return results


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for key, info in results["workloads"].items():
        order = {(c, label): i for i, (c, label) in enumerate((c, label) for c in ALL_CHIPS for label, _ in variants(c))}
        rows = sorted((r for r in results["rows"].values() if r["workload"] == key),
                      key=lambda r: order.get((r["chip"], r["variant"]), len(order)))
        n = results["settings"]["instances"]
        lines += [f"**{info['name']}**: fp32 {info['fp32']:.4f} on {info['eval_size']:,} held-out samples; "
                  f"mean ± std over {n} chip instances; no drift compensation.", "",
                  "| chip | variant | " + " | ".join(t for t, _ in TIMES) + " |", "|---|---|" + "---:|" * len(TIMES)]
        for r in rows:
            cells = [f"{r['points'][t]['mean']:.4f} ± {r['points'][t]['std']:.4f}" for t, _ in TIMES]
            lines.append(f"| {r['chip']} | {r['variant']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="device_effects.json", help="results JSON (resumed when it exists)")
    parser.add_argument("--instances", type=int, default=3, help="chip instances (seeds) per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dlrm-test", type=int, default=10000, help="DLRM test samples (a seeded subset)")
    parser.add_argument("--workloads", default="digits,dlrm", help="comma-separated: digits, dlrm")
    parser.add_argument("--markdown", default=None, help="also write the tables as Markdown here")
    args = parser.parse_args(argv)
    try:
        if args.instances < 1 or args.dlrm_test < 100:
            raise CimflowError("--instances must be >= 1 and --dlrm-test >= 100")
        started = time.perf_counter()
        results = run(args)
        text = markdown(results)
        print(text)
        if args.markdown:
            atomic_write_text(args.markdown, text + "\n", "Markdown tables")
        print(f"done in {time.perf_counter() - started:.0f} s")
    except CimflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
