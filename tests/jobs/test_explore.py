"""`cimflow explore` end to end on tiny spaces: the Pareto front, pruning by cost, the outputs other
verbs accept, resuming after `kill -9` with every trial evaluated exactly once, and bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cimflow.chip.io import load_chip_file
from cimflow.cli import main
from cimflow.errors import CimflowError
from cimflow.jobs.explore import ExploreOptions, pareto_front, run_explore
from cimflow.jobs.explore_design import apply_design
from cimflow.jobs.explore_space import space_from_dict

REPO = Path(__file__).resolve().parents[2]

MODEL = '''
import time
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

def example_inputs():
    torch.manual_seed(1)
    return (torch.randn(8, 16),)
'''
SLOW_EVALUATE = '''
def evaluate(m):
    time.sleep(0.4)
    with torch.no_grad():
        x = example_inputs()[0]
        return -float((m(x) - REF(x)).pow(2).mean())

_REF = model().eval()
def REF(x):
    return _REF(x)
'''


def _write_space(tmp_path: Path, *, model_text: str = MODEL, parameters: str | None = None, extra: str = "",
                 objectives: str = "[{name: qps_per_w}, {name: accuracy}]") -> Path:
    (tmp_path / "tiny_model.py").write_text(model_text)
    parameters = parameters or "[{name: adc_bits, array: rram, values: [4, 8]}, {name: adc_sharing, array: rram, values: [2, 8]}]"
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(f"""\
        name: tiny
        base: rram-analog-generic
        workload: {{kind: model, file: tiny_model.py}}
        accuracy: {{instances: 1, times: [1s]}}
        parameters: {parameters}
        objectives: {objectives}
        """) + extra)
    return space


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*.json"))]


def test_small_exploration_writes_a_front_and_a_chip_other_verbs_accept(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    space = _write_space(tmp_path)
    out = tmp_path / "out"
    summary = run_explore(space, ExploreOptions(out=out, quiet=True))
    records = _records(out)
    assert summary["trials"]["complete"] == len(records) == 4  # the whole 2 x 2 grid, each design once
    assert len({json.dumps(r["params"], sort_keys=True) for r in records}) == 4
    # the front: every entry feasible, none dominated by any evaluated design
    senses = ["maximize", "maximize"]
    front = {e["trial"] for e in summary["pareto"]}
    assert front == {r["trial"] for r in pareto_front(records, senses)}
    # ADC energy grows with resolution: at equal sharing the 4-bit design is never less efficient
    by = {(r["params"]["rram.adc_bits"], r["params"]["rram.adc_sharing"]): r["metrics"] for r in records}
    for sharing in (2, 8):
        assert by[(4, sharing)]["qps_per_w"] >= by[(8, sharing)]["qps_per_w"]
    # the outputs: pareto.json, a self-contained HTML page, chip YAMLs that load and run through other verbs
    data = json.loads((out / "pareto.json").read_text())
    assert data["best"]["trial"] == summary["pareto"][0]["trial"]
    page = (out / "explore.html").read_text()
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js itself is embedded ...
    assert not re.search(r"<script[^>]*\ssrc=", page) and not re.search(r"<link[^>]*href=[\"']http", page)  # ... nothing is fetched
    best = load_chip_file(out / "best_chip.yaml")
    assert best.arrays["rram"].adc is not None
    assert best.arrays["rram"].adc.bits == data["best"]["params"]["rram.adc_bits"]
    for verb in (["compile"], ["estimate", "--no-data"]):
        with pytest.raises(SystemExit) as info:
            main([*verb, str(REPO / "examples" / "mlp_model.py"), "--chip", str(out / "best_chip.yaml")])
        assert info.value.code == 0, capsys.readouterr().err
    # a second run on the same folder has nothing left to do and evaluates nothing again
    again = run_explore(space, ExploreOptions(out=out, quiet=True))
    assert again["run"]["evaluated_in_this_run"] == 0 and len(_records(out)) == 4


def test_designs_breaking_a_cost_constraint_are_not_simulated(tmp_path: Path):
    space = _write_space(tmp_path, extra="constraints: [{name: area_mm2, max: 0.001}]\n")
    out = tmp_path / "out"
    summary = run_explore(space, ExploreOptions(out=out, quiet=True))
    records = _records(out)
    assert records and all(not r["simulated"] and r["pruned"].startswith("breaks area_mm2 <=") for r in records)
    assert summary["pareto"] == [] and summary["best"] is None


def test_accuracy_only_as_a_constraint_prunes_designs_dominated_on_cost(tmp_path: Path):
    space = _write_space(tmp_path, objectives="[{name: qps_per_w}]", extra="constraints: [{name: accuracy_loss, max: 1.0}]\n",
                         parameters="[{name: adc_bits, array: rram, values: [3, 4, 5, 6, 7, 8]}]")
    out = tmp_path / "out"
    run_explore(space, ExploreOptions(out=out, quiet=True))
    records = {r["trial"]: r for r in _records(out)}
    for r in records.values():
        if r.get("pruned"):  # pruned only by a finished, simulated, feasible design at least as good on cost
            other = records[int(r["pruned"].rsplit(" ", 1)[1])]
            assert other["simulated"] and other["metrics"]["qps_per_w"] >= r["metrics"]["qps_per_w"]
    assert any(r["simulated"] for r in records.values())


def test_killed_exploration_resumes_with_every_trial_exactly_once(tmp_path: Path):
    parameters = "[{name: adc_bits, array: rram, low: 3, high: 8}, {name: adc_sharing, array: rram, values: [1, 2, 4, 8]}]"
    space = _write_space(tmp_path, model_text=MODEL + SLOW_EVALUATE, extra="sampler: random\ntrials: 8\n", parameters=parameters)
    out = tmp_path / "out"
    script = ("from pathlib import Path\nfrom cimflow.jobs.explore import ExploreOptions, run_explore\n"
              f"run_explore({str(space)!r}, ExploreOptions(out=Path({str(out)!r}), quiet=True))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list((out / "trials").glob("*.json"))) < 2 and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)  # land inside a trial's evaluation (evaluate() sleeps 0.4 s)
        written_at_kill = len(list((out / "trials").glob("*.json")))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the exploration finished before it could be killed"
    assert 1 <= written_at_kill < 8

    import optuna
    from optuna.trial import TrialState

    from cimflow.jobs.explore import open_storage

    left = optuna.load_study(study_name="tiny", storage=open_storage(None, out)).get_trials(deepcopy=False)
    orphans = sum(t.state == TrialState.RUNNING for t in left)  # the trial the kill interrupted (almost always one)
    summary = run_explore(space, ExploreOptions(out=out, quiet=True))
    assert summary["run"]["resumed_running_trials"] + summary["run"]["told_from_written_record"] == orphans

    study = optuna.load_study(study_name="tiny", storage=open_storage(None, out))
    trials = study.get_trials(deepcopy=False)
    evaluated = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL) and t.user_attrs.get("evaluated")]
    assert len(evaluated) == 8 == summary["run"]["trials_done"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in evaluated}) == 8
    assert len({json.dumps(t.params, sort_keys=True) for t in evaluated}) == 8  # no design evaluated twice
    records = _records(out)
    assert sorted(r["trial"] for r in records) == sorted(t.number for t in evaluated)  # one record per trial, none lost
    for t in evaluated:
        assert json.loads((out / "trials" / f"{t.number:05d}.json").read_text())["params"] == t.params


def test_a_different_space_on_the_same_storage_and_a_live_driver_are_refused(tmp_path: Path):
    space = _write_space(tmp_path, extra="trials: 1\n")
    out = tmp_path / "out"
    run_explore(space, ExploreOptions(out=out, quiet=True))
    changed = tmp_path / "space2.yaml"
    changed.write_text(space.read_text().replace("values: [2, 8]", "values: [2, 16]"))
    with pytest.raises(CimflowError, match="different space file"):
        run_explore(changed, ExploreOptions(out=out, quiet=True))
    moved = tmp_path.parent / (tmp_path.name + "-moved")  # the whole folder moved: the study still resumes
    shutil.copytree(tmp_path, moved)
    resumed = run_explore(moved / "space.yaml", ExploreOptions(out=moved / "out", quiet=True))
    assert resumed["run"]["evaluated_in_this_run"] == 0 and resumed["run"]["trials_done"] == 1
    (out / ".explore.lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
    with pytest.raises(CimflowError, match=f"another exploration \\(pid {os.getppid()}\\)"):
        run_explore(space, ExploreOptions(out=out, quiet=True))


def test_storage_urls(tmp_path: Path):
    from cimflow.jobs.explore import open_storage

    journal = tmp_path / "j" / "study.log"
    with pytest.raises(CimflowError, match="does not exist"):
        open_storage(f"journal:{journal}", tmp_path)
    journal.parent.mkdir()
    journal.write_bytes(b'{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}\n{"op_code": 4, "wor')
    open_storage(str(journal), tmp_path)  # a half-written last line (a killed writer) is dropped before Optuna reads it
    assert journal.read_bytes().endswith(b"]}\n")
    with pytest.raises(CimflowError, match="cannot open it"):
        open_storage(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", tmp_path)


def test_bad_command_lines_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    space = _write_space(tmp_path)
    for args, needle in ((["--workers", "0"], "--workers"), (["--trials", "0"], "--trials"),
                         (["--storage", "redis://x"], "--storage"), (["--out", str(space)], "is a file")):
        with pytest.raises(SystemExit) as info:
            main(["explore", str(space), *args])
        err = capsys.readouterr().err
        assert info.value.code == 2 and needle in err and err.count("\n") == 1


def test_a_bad_space_file_is_one_line_from_a_real_process_without_torch(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: ideal\nworkload: {kind: digits}\nparameters: [{name: adc_bitz, values: [4]}]\n"
                   "objectives: [{name: top1}]\n")
    code = ("import sys\nfrom cimflow.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print(sorted(m for m in ('torch', 'optuna', 'ray') if m in sys.modules))\n    raise\n")
    result = subprocess.run([sys.executable, "-c", code, "explore", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout.strip() == "[]"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown parameter 'adc_bitz'; known parameters: adc_bits" in lines[0]


def test_recsys_cost_only_exploration_on_sqlite_passes_the_mapping_through(tmp_path: Path):
    space = tmp_path / "recsys.yaml"
    space.write_text(textwrap.dedent("""\
        name: rs
        base: hybrid-rram-sram-28nm
        workload: {kind: recsys, shape: custom, tables: [20000, 5000], dim: 16, pooling: 2, batch: 32, sample_queries: 256}
        parameters: [{name: hot_tier_fraction, values: [0.0, 1.0]}, {name: replicate, values: [true, false]}]
        objectives: [{name: qps_per_w}, {name: area_mm2}]
        """))
    out = tmp_path / "out"
    summary = run_explore(space, ExploreOptions(out=out, quiet=True, storage=f"sqlite:///{tmp_path / 'study.db'}"))
    assert (tmp_path / "study.db").exists() and not (out / "study.journal").exists()
    records = _records(out)
    assert len(records) == 4 and summary["trials"]["complete"] == 4
    for r in records:
        sram_rows = sum(t["placement"].get("sram", 0) for t in r["cost"]["detail"]["tiers"])
        assert (sram_rows == 0) == (r["params"]["hot_tier_fraction"] == 0.0)
        assert any(op["substrate"] == "array" for op in r["cost"]["detail"]["plan"])  # the plan is in the record
        assert not r["simulated"] and r["metrics"]["area_mm2"] > 0
    assert set(summary["importances"]) == {"qps_per_w", "area_mm2"}


@pytest.mark.slow
def test_digits_workload_accuracy_falls_with_a_one_bit_adc():
    from cimflow.jobs.explore_design import evaluate_accuracy, evaluate_cost

    space = space_from_dict({"name": "dg", "base": "rram-analog-generic", "workload": {"kind": "digits"},
                             "accuracy": {"instances": 1, "times": ["1s"]},
                             "parameters": [{"name": "adc_bits", "values": [1, 8]}], "objectives": [{"name": "top1"}]})
    cost = evaluate_cost(space, {"adc_bits": 8})["metrics"]
    assert cost["qps"] > 0 and cost["qps_per_w"] > 0 and cost["area_mm2"] > 0
    fine, coarse = (evaluate_accuracy(space, {"adc_bits": b}) for b in (8, 1))
    for acc in (fine, coarse):
        m = acc["metrics"]
        assert 0 <= m["top1"] <= 1 and m["top1_loss"] == pytest.approx(acc["detail"]["fp32"] - m["top1"])
    # 10 classes: a 1-bit converter leaves the CNN far below the 8-bit design (chance is 0.1)
    assert fine["metrics"]["top1"] > 0.8 and coarse["metrics"]["top1"] < fine["metrics"]["top1"] - 0.3


@pytest.mark.slow
def test_recsys_accuracy_is_the_worst_time_of_the_movielens_auc_and_falls_with_a_coarse_adc():
    from cimflow.jobs.explore_design import evaluate_accuracy

    space = space_from_dict({"name": "ra", "base": "hybrid-rram-sram-28nm", "workload": {"kind": "recsys"},
                             "accuracy": {"instances": 2, "times": ["1s", "1d"]},
                             "parameters": [{"name": "adc_bits", "values": [3, 7]}], "objectives": [{"name": "auc_loss"}]})
    shipped, coarse = (evaluate_accuracy(space, {"adc_bits": b}) for b in (7, 3))
    for acc in (shipped, coarse):
        m, d = acc["metrics"], acc["detail"]
        assert m["auc"] == min(p["mean"] for p in d["per_time"].values())  # the worst time after programming
        assert m["auc_loss"] == pytest.approx(d["fp32"] - m["auc"]) and len(d["per_time"]["1d"]["values"]) == 2
    assert 0 <= shipped["metrics"]["auc_loss"] < 0.01  # the preset's 7-bit ADC digitizes pooled sums exactly
    assert coarse["metrics"]["auc_loss"] > shipped["metrics"]["auc_loss"] + 0.02


def test_designs_change_the_named_fields_and_bad_designs_are_one_line():
    space = space_from_dict({"name": "d", "base": "hybrid-rram-sram-28nm", "workload": {"kind": "recsys"},
                             "parameters": [{"name": "adc_bits", "values": [5]}, {"name": "cell_bits", "values": [3]},
                                            {"name": "cores", "values": [8]}, {"name": "dac_bits", "array": "digital", "values": [4]},
                                            {"name": "adc_sharing", "values": [4096]}, {"name": "technology", "values": ["pcm"]},
                                            {"name": "hot_tier_fraction", "low": 0, "high": 1}],
                             "objectives": [{"name": "qps_per_w"}]})
    chip, mapping = apply_design(space, {"adc_bits": 5, "cell_bits": 3, "cores": 8, "digital.dac_bits": 4, "technology": "pcm",
                                         "hot_tier_fraction": 0.25})
    emb = chip.arrays["rram_emb"]
    assert emb.adc is not None and emb.adc.bits == 5 and emb.adc.energy_quoted_at_bits == 7  # energy moves along the ADC law
    assert emb.device.n_levels == 8 and emb.device.technology == "pcm"
    assert chip.cores.count == 8 and chip.arrays["sram_dcim"].input_encoding.bits == 4
    assert mapping.hot_tier_fraction == 0.25 and mapping.replicate
    with pytest.raises(CimflowError, match="columns_per_adc"):
        apply_design(space, {"adc_sharing": 4096})
    # another base preset with role-named arrays, and a named rule set
    other = space_from_dict({"name": "p", "base": "hybrid-rram-sram-28nm", "workload": {"kind": "digits"},
                             "parameters": [{"name": "preset", "values": ["pcm-hermes-like", "rram-analog-generic"]},
                                            {"name": "adc_bits", "array": "mvm", "values": [5]},
                                            {"name": "rules", "values": ["plain", "fc_digital"]}],
                             "rule_sets": {"plain": {}, "fc_digital": {"fc*": "digital"}},
                             "objectives": [{"name": "top1"}]})
    chip, mapping = apply_design(other, {"preset": "rram-analog-generic", "mvm.adc_bits": 5, "rules": "fc_digital"})
    assert chip.arrays[chip.roles.mvm].adc is not None and chip.arrays[chip.roles.mvm].adc.bits == 5
    assert "rram-analog-generic" in chip.description and mapping.rules == {"fc*": "digital"}


def test_recsys_hot_tier_fraction_moves_rows_out_of_sram():
    from cimflow.jobs.recsys_config import RecsysConfig, check_config, run_recsys_config

    kw = {"tables": (20000, 5000), "dim": 16, "pooling": 2, "batch": 32, "sample_queries": 256, "quiet": True}
    full = run_recsys_config(RecsysConfig(**kw))
    none = run_recsys_config(RecsysConfig(hot_tier_fraction=0.0, **kw))
    assert sum(t["placement"].get("sram", 0) for t in full["tiers"]) > 0
    assert sum(t["placement"].get("sram", 0) for t in none["tiers"]) == 0
    with pytest.raises(CimflowError, match="hot_tier_fraction"):
        check_config(RecsysConfig(hot_tier_fraction=1.5))


@pytest.mark.slow
def test_two_ray_workers_give_the_same_designs_as_one_process(tmp_path: Path):
    import ray  # noqa: F401 - a dev dependency: missing, this test fails rather than skips
    space = _write_space(tmp_path, objectives="[{name: qps_per_w}]")
    one = run_explore(space, ExploreOptions(out=tmp_path / "one", quiet=True))
    two = run_explore(space, ExploreOptions(out=tmp_path / "two", quiet=True, workers=2))
    assert two["run"]["workers"] == 2
    by_one = {json.dumps(r["params"], sort_keys=True): r["metrics"]["qps_per_w"] for r in _records(tmp_path / "one")}
    by_two = {json.dumps(r["params"], sort_keys=True): r["metrics"]["qps_per_w"] for r in _records(tmp_path / "two")}
    assert by_one.keys() == by_two.keys() and len(by_one) == 4
    for key, value in by_one.items():
        assert by_two[key] == pytest.approx(value, rel=1e-9)
    assert one["best"]["params"] == two["best"]["params"]
