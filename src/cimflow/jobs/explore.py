"""``cimflow explore SPACE.yaml``: design-space search over chips and mappings with Optuna,
resumable, with parallel trials on Ray.

One trial is one design (:mod:`cimflow.jobs.explore_design`). A batch of trials (one per
worker) is asked of the Optuna sampler; their cost is computed first (cheap, analytic);
a design whose cost already breaks a constraint, or (when accuracy is only a constraint)
whose cost is dominated by a finished feasible design, is not simulated; the survivors'
accuracy is simulated. Each trial's record (parameters, plan, cost, accuracy) is written to
``OUT/trials/NNNN.json`` as it finishes, then the trial is told to the study.

Resume: the study lives in an Optuna storage (a journal file under ``--out`` by default,
or ``--storage``). Started again after a kill, the exploration takes over the trials the
dead run left RUNNING — it tells the study the record already written, or evaluates the
trial's stored parameters — and then asks only for the trials still missing, so every
planned trial is evaluated exactly once. A parameter set the sampler proposes a second
time is not evaluated again: that trial is marked PRUNED (``duplicate_of``) and does not
count. One driver runs a study at a time (a lock file under ``--out`` names its pid).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from cimflow.errors import CimflowError
from cimflow.fileio import atomic_write_text, write_json
from cimflow.jobs.explore_design import UNSIMULATED, evaluate_accuracy, evaluate_cost
from cimflow.jobs.explore_space import ACCURACY_OBJECTIVES, Space, load_space

MAX_WORKERS = 256
#: stop when this many proposals in a row repeat finished designs (the space is exhausted)
MAX_DUPLICATES_IN_A_ROW = 200
LOCK_NAME = ".explore.lock"
#: the constraint value of a bound the design has no number for (its accuracy was not simulated)
NO_NUMBER = 1e300


@dataclass
class ExploreOptions:
    trials: int | None = None  # the study's total (default: the space file's)
    storage: str | None = None  # sqlite:///file.db, a journal file path, or None (OUT/study.journal)
    workers: int = 1  # 1: in this process, without Ray
    address: str | None = None  # a running Ray cluster ("auto" or host:port); default: a local one
    out: Path = Path("explore-out")
    quiet: bool = False


# ------------------------------------------------------------------------------------ tasks
# Module-level functions of plain data: what Ray ships to its workers.

def _task(kind: str, space_data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Cost or accuracy of one design; a design the models refuse comes back as ``{"error": line}``."""
    import torch

    torch.set_num_threads(1)
    space = Space.model_validate(space_data)
    started = time.perf_counter()
    try:
        result = evaluate_cost(space, params) if kind == "cost" else evaluate_accuracy(space, params)
    except CimflowError as err:
        return {"error": str(err), "seconds": time.perf_counter() - started}
    result["seconds"] = time.perf_counter() - started
    return result


class _Runner:
    """Runs task batches in this process (workers 1) or on Ray."""

    def __init__(self, workers: int, address: str | None) -> None:
        self.workers = workers
        self._remote: Any = None
        self._started_ray = False
        if workers > 1 or address is not None:
            try:
                import ray
            except ImportError:
                raise CimflowError("--workers above 1 runs trials on Ray, which is not installed: pip install 'ray>=2.58,<3' "
                                   "(or use --workers 1)") from None
            if not ray.is_initialized():
                kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
                if address is None:
                    kwargs["num_cpus"] = workers
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, ValueError, RuntimeError) as err:
                    raise CimflowError(f"cannot start or reach Ray (address {address or 'local'}): {str(err).splitlines()[0]}") from None
                self._started_ray = True
            self._remote = ray.remote(num_cpus=1)(_task)

    def map(self, kind: str, space_data: dict[str, Any], params: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if not params:
            return []
        if self._remote is None:
            return [_task(kind, space_data, p) for p in params]
        import ray

        return list(ray.get([self._remote.remote(kind, space_data, p) for p in params]))

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()


# ---------------------------------------------------------------------------------- storage

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(out: Path) -> Path:
    """Refuse to run beside a live driver of the same output folder; returns the lock path."""
    lock = out / LOCK_NAME
    host = socket.gethostname()
    if lock.exists():
        try:
            owner = json.loads(lock.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            owner = {}
        pid = owner.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and owner.get("host") == host and _pid_alive(pid):
            raise CimflowError(f"another exploration (pid {pid}) is running in {out}; wait for it or give another --out")
    atomic_write_text(lock, json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}), "explore lock")
    return lock


def _repair_journal(path: Path) -> None:
    """After a killed run (no live driver): drop a half-written last line and a stale file lock."""
    stale = Path(str(path) + ".lock")
    if stale.exists():
        stale.unlink()
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


def open_storage(storage: str | None, out: Path) -> Any:
    """An Optuna storage: ``sqlite:///FILE``, another SQLAlchemy URL, a journal file path
    (``journal:PATH`` or a path), or None for ``OUT/study.journal``."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if storage is None or storage.startswith("journal:") or "://" not in storage:
        path = out / "study.journal" if storage is None else Path(storage.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise CimflowError(f"--storage {path}: the directory {path.parent} does not exist")
        _repair_journal(path)
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)
    if storage.startswith(("sqlite:", "postgresql", "mysql")):
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy raises many kinds
            raise CimflowError(f"--storage {storage}: cannot open it ({str(err).splitlines()[0]})") from None
    raise CimflowError(f"--storage {storage!r}: give sqlite:///FILE.db, a database URL, or a journal file path")


def sampler_kind(space: Space, trials: int) -> str:
    """The sampler ``auto`` stands for: the whole grid when it fits in the trials, else NSGA-II
    (several objectives) or TPE (one)."""
    kind = space.sampler
    grid = space.grid_size()
    if kind == "auto":
        kind = "grid" if grid is not None and grid <= trials else ("nsga2" if len(space.objectives) > 1 else "tpe")
    if kind == "grid" and grid is None:
        raise CimflowError("sampler grid needs every parameter discrete (values, or integer / stepped ranges)")
    return kind


def _sampler(space: Space, trials: int) -> Any:
    """The Optuna sampler. A grid is enqueued into the study instead (:func:`_enqueue_grid`: Optuna's
    GridSampler stops the study from inside ``tell``, which ask-and-tell cannot take); random fills up."""
    import optuna

    kind = sampler_kind(space, trials)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed, population_size=max(4, min(50, trials // 4)))
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=max(4, min(10, trials // 4)), multivariate=True)
    return optuna.samplers.RandomSampler(seed=space.seed)


def _enqueue_grid(study: Any, space: Space, trials: int) -> None:
    """Put the designs of a grid (in a seeded random order, at most ``trials``) in the study's queue;
    designs some trial already has are skipped, so a resumed run never queues one twice."""
    import random

    designs = space.designs()
    random.Random(space.seed).shuffle(designs)
    for design in designs[:trials]:
        study.enqueue_trial(design, skip_if_exists=True)


def _suggest(trial: Any, space: Space) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in space.parameters:
        if p.values is not None:
            params[p.key] = trial.suggest_categorical(p.key, list(p.values))
        elif p.integer:
            assert p.low is not None and p.high is not None
            params[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            assert p.low is not None and p.high is not None
            params[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return params


def _design_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


# ------------------------------------------------------------------------------- constraints

def constraint_values(space: Space, metrics: dict[str, Any], base: dict[str, Any]) -> list[tuple[str, str, float]]:
    """``(name, label, value)`` per bound, value <= 0 when it holds (Optuna's convention, relative to the
    bound); a value the design has no number for (accuracy not simulated) does not hold (inf)."""
    out = []
    for c in space.constraints:
        for side, bound in (("max", c.max), ("min", c.min)):
            if bound is None:
                continue
            limit = float(base[c.name]) if bound == "base" else float(bound)
            value = metrics.get(c.name)
            label = f"{c.name} {'<=' if side == 'max' else '>='} {limit:.6g}"
            if value is None:
                out.append((c.name, label, NO_NUMBER))
                continue
            diff = (value - limit) if side == "max" else (limit - value)
            out.append((c.name, label, diff / max(abs(limit), 1e-12)))
    return out


def objective_values(space: Space, metrics: dict[str, Any]) -> list[float]:
    return [float(metrics[o.name]) if o.name in metrics else UNSIMULATED[o.name] for o in space.objectives]


def _dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """a is at least as good as b in every objective and better in one."""
    better = False
    for x, y, s in zip(a, b, senses, strict=True):
        if (x < y) if s == "maximize" else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(records: Sequence[dict[str, Any]], senses: Sequence[str]) -> list[dict[str, Any]]:
    """The non-dominated records (each with ``values``), in trial order."""
    return [r for r in records if not any(_dominates(o["values"], r["values"], senses) for o in records if o is not r)]


# ------------------------------------------------------------------------------------ driver

@dataclass
class _Context:
    space: Space
    space_data: dict[str, Any]
    base: dict[str, Any]
    out: Path
    runner: _Runner
    study: Any

    @property
    def trials_dir(self) -> Path:
        return self.out / "trials"


def _baseline(space: Space, out: Path, runner: _Runner) -> dict[str, Any]:
    """Cost (and accuracy, when the space needs it) of the base chip as it is; cached in OUT/baseline.json."""
    path = out / "baseline.json"
    digest = space.digest()
    if path.exists():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("digest") == digest:
                return cached["metrics"]
        except (OSError, ValueError, KeyError):
            pass
    data = space.model_dump(mode="json")
    cost = runner.map("cost", data, [{}])[0]
    if "error" in cost:
        raise CimflowError(f"the base chip {space.base} cannot run the workload: {cost['error']}")
    metrics = dict(cost["metrics"])
    if space.needs_accuracy():
        acc = runner.map("accuracy", data, [{}])[0]
        if "error" in acc:
            raise CimflowError(f"the base chip {space.base} cannot be simulated: {acc['error']}")
        metrics.update(acc["metrics"])
    write_json(path, {"digest": digest, "base": space.base, "metrics": metrics}, "explore baseline")
    return metrics


def _record(ctx: _Context, number: int, params: dict[str, Any], cost: dict[str, Any], acc: dict[str, Any] | None,
            pruned: str | None) -> dict[str, Any]:
    space = ctx.space
    if "error" in cost:
        return {"trial": number, "params": params, "state": "FAIL", "error": cost["error"], "simulated": False}
    metrics = dict(cost["metrics"])
    record: dict[str, Any] = {"trial": number, "params": params, "cost": cost, "simulated": acc is not None and "error" not in acc}
    if acc is not None:
        record["accuracy"] = acc
        if "error" in acc:
            return {**record, "state": "FAIL", "error": acc["error"]}
        metrics.update(acc["metrics"])
    record.update(state="COMPLETE", metrics=metrics, values=objective_values(space, metrics),
                  constraints=constraint_values(space, metrics, ctx.base), pruned=pruned)
    return record


def _tell(ctx: _Context, trial: Any, record: dict[str, Any]) -> None:
    """Tell the study a finished trial: its constraints, one ``outcome`` attribute (simulated or
    why not, the main metrics, the error of a refused design), ``evaluated`` last before the state."""
    import optuna

    outcome: dict[str, Any] = {"simulated": bool(record.get("simulated"))}
    if record.get("pruned"):
        outcome["not_simulated_because"] = record["pruned"]
    if record["state"] == "FAIL":
        outcome["error"] = record["error"][:500]
    else:
        for _, label, value in record["constraints"]:
            trial.set_constraint(label, min(value, NO_NUMBER))
        outcome.update({k: record["metrics"][k] for k in ("qps", "qps_per_w", "area_mm2", "energy_per_inference_j", "accuracy",
                                                          "accuracy_loss") if k in record["metrics"]})
    trial.set_user_attr("outcome", outcome)
    trial.set_user_attr("evaluated", True)
    if record["state"] == "FAIL":
        ctx.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        ctx.study.tell(trial, record["values"])


def _evaluate_batch(ctx: _Context, batch: list[tuple[Any, dict[str, Any]]], finished: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cost of every design of the batch, then accuracy of the survivors; records written and told."""
    space = ctx.space
    costs = ctx.runner.map("cost", ctx.space_data, [p for _, p in batch])
    senses = [o.sense for o in space.objectives]
    need_acc = space.needs_accuracy()
    acc_objective = space.accuracy_is_objective()
    reasons: list[str | None] = []
    for cost in costs:
        reason = None
        if "error" not in cost and need_acc:
            cost_only = dict(cost["metrics"])
            broken = [label for name, label, v in constraint_values(space, cost_only, ctx.base)
                      if v > 0 and name not in ACCURACY_OBJECTIVES]
            if broken:
                reason = "breaks " + ", ".join(broken) + " on cost"
            elif not acc_objective:
                mine = objective_values(space, cost_only)
                dom = next((r for r in finished if r.get("simulated") and _feasible(r)
                            and _dominates(r["values"], mine, senses)), None)
                if dom is not None:
                    reason = f"dominated on cost by trial {dom['trial']}"
        reasons.append(reason)
    survivors = [i for i, (c, r) in enumerate(zip(costs, reasons, strict=True)) if "error" not in c and need_acc and r is None]
    accs = ctx.runner.map("accuracy", ctx.space_data, [batch[i][1] for i in survivors])
    acc_of = dict(zip(survivors, accs, strict=True))
    records = []
    for i, (trial, params) in enumerate(batch):
        record = _record(ctx, trial.number, params, costs[i], acc_of.get(i), reasons[i])
        write_json(ctx.trials_dir / f"{trial.number:05d}.json", record, f"trial {trial.number} record")
        _tell(ctx, trial, record)
        records.append(record)
    return records


def _feasible(record: dict[str, Any]) -> bool:
    return record.get("state") == "COMPLETE" and all(c[-1] <= 0 for c in record.get("constraints", []))


def run_explore(space_path: str | Path, options: ExploreOptions, console: Console | None = None,
                on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) an exploration; returns the summary also written to ``OUT/pareto.json``."""
    console = console or Console()
    space = load_space(space_path)  # a bad space file is one line before anything heavy is imported
    trials = options.trials if options.trials is not None else space.trials
    if not 1 <= trials <= 100_000:
        raise CimflowError(f"--trials {trials}: give 1 to 100000 trials")
    if not 1 <= options.workers <= MAX_WORKERS:
        raise CimflowError(f"--workers {options.workers}: give 1 to {MAX_WORKERS}")
    grid = space.grid_size()
    if grid is not None and trials > grid:
        console.print(f"note: the space holds {grid} designs; exploring all of them instead of {trials} trials")
        trials = grid
    out = options.out
    if out.exists() and not out.is_dir():
        raise CimflowError(f"--out {out} is a file: give a folder for the exploration's outputs")
    if not out.parent.is_dir():
        raise CimflowError(f"--out {out}: the folder {out.parent} does not exist (create it first)")
    import optuna

    from cimflow.jobs.explore_report import write_outputs
    from cimflow.progress import progress_bar

    out.mkdir(exist_ok=True)
    (out / "trials").mkdir(exist_ok=True)
    lock = _take_lock(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runner = _Runner(options.workers, options.address)
    try:
        storage = open_storage(options.storage, out)
        directions = [o.sense for o in space.objectives]
        study = optuna.create_study(study_name=space.name, storage=storage, directions=directions, sampler=_sampler(space, trials),
                                    load_if_exists=True)
        digest = study.user_attrs.get("space_digest")
        if digest is not None and digest != space.digest():
            raise CimflowError(f"the storage already holds a study {space.name!r} from a different space file; "
                               "give another --out / --storage, or rename the space")
        if digest is None:
            study.set_user_attr("space_digest", space.digest())
            study.set_user_attr("objectives", [o.name for o in space.objectives])
        if sampler_kind(space, trials) == "grid":
            _enqueue_grid(study, space, trials)
        space_data = space.model_dump(mode="json")
        base = _baseline(space, out, runner)
        ctx = _Context(space, space_data, base, out, runner, study)
        summary = _loop(ctx, trials, options, console, progress_bar, on_trial)
        return write_outputs(ctx.space, study, base, out, console, quiet=options.quiet, run=summary)
    finally:
        runner.close()
        lock.unlink(missing_ok=True)


def _finished_records(ctx: _Context) -> list[dict[str, Any]]:
    records = []
    for path in sorted(ctx.trials_dir.glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return records


def _loop(ctx: _Context, trials: int, options: ExploreOptions, console: Console, progress_bar: Any,
          on_trial: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    study = ctx.study
    all_trials = study.get_trials(deepcopy=False)
    done_trials = [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.FAIL) and t.user_attrs.get("evaluated")]
    seen = {_design_key(t.params): t.number for t in done_trials}
    done_numbers = {t.number for t in done_trials}
    finished = [r for r in _finished_records(ctx) if r.get("trial") in done_numbers]
    n_done = len(done_trials)
    # trials a killed run left RUNNING: finish them from their record, or evaluate their parameters
    orphans = [t for t in all_trials if t.state == TrialState.RUNNING]
    resumed = told_from_record = 0
    started = time.perf_counter()
    evaluated_here = 0
    duplicates_in_a_row = 0
    with progress_bar(console) as progress:
        task = progress.add_task(f"exploring {ctx.space.name}", total=trials)
        progress.update(task, completed=min(n_done, trials))
        pending: list[Any] = [optuna.trial.Trial(study, t._trial_id) for t in orphans]
        while n_done < trials or pending:
            batch: list[tuple[Any, dict[str, Any]]] = []
            while len(batch) < ctx.runner.workers and (pending or n_done + len(batch) < trials):
                is_orphan = bool(pending)
                trial = pending.pop(0) if pending else study.ask()
                path = ctx.trials_dir / f"{trial.number:05d}.json"
                if is_orphan and path.exists():  # evaluated and written, not yet told
                    record = json.loads(path.read_text(encoding="utf-8"))
                    _tell(ctx, trial, record)
                    told_from_record += 1
                    n_done += 1
                    progress.advance(task)
                    finished.append(record)
                    seen[_design_key(record["params"])] = trial.number
                    continue
                params = _suggest(trial, ctx.space)
                key = _design_key(params)
                twin = seen.get(key)
                if twin is None:
                    twin = next((t.number for t, p in batch if _design_key(p) == key), None)
                if twin is not None:
                    trial.set_user_attr("duplicate_of", twin)
                    study.tell(trial, state=TrialState.PRUNED)
                    duplicates_in_a_row += 1
                    if duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                        break
                    continue
                duplicates_in_a_row = 0
                resumed += is_orphan
                batch.append((trial, params))
            if not batch:
                if duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                    console.print(f"note: {MAX_DUPLICATES_IN_A_ROW} proposals in a row repeated finished designs; "
                                  f"stopping at {n_done} trials (the sampler has little left to find)")
                    break
                continue
            for record in _evaluate_batch(ctx, batch, finished):
                finished.append(record)
                seen[_design_key(record["params"])] = record["trial"]
                n_done += 1
                evaluated_here += 1
                progress.advance(task)
                if on_trial is not None:
                    on_trial(record)
    elapsed = time.perf_counter() - started
    return {"trials_planned": trials, "trials_done": n_done, "evaluated_in_this_run": evaluated_here,
            "resumed_running_trials": resumed, "told_from_written_record": told_from_record, "seconds": elapsed,
            "workers": ctx.runner.workers}


__all__ = ["ExploreOptions", "constraint_values", "objective_values", "open_storage", "pareto_front", "run_explore"]
