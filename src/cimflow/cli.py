"""``cimflow <verb>``: a thin shell over :mod:`cimflow.api`.

Every user error is a :class:`~cimflow.errors.CimflowError`: the CLI prints its message
on one line and exits with status 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from typer.core import TyperCommand

from cimflow.cli_common import (  # the flag bounds are re-exported: cimflow.cli.MAX_* is how tests and docs name them
    MAX_BATCH,
    MAX_FOLDS,
    MAX_HOST_WATTS,
    MAX_INSTANCES,
    MAX_SEED,
    MAX_THREADS,
    MAX_TIMES,
    _check_outputs,
    _check_range,
    _check_times,
    _write_json,
    _write_text,
    console,
)
from cimflow.cli_validate import validate_app
from cimflow.errors import CimflowError

app = typer.Typer(
    name="cimflow",
    help="Compile PyTorch models onto compute-in-memory chips; simulate accuracy and estimate cost.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
chips_app = typer.Typer(
    help="List the shipped chip presets, or show one (preset or YAML file).\n\nExample: cimflow chips show pcm-hermes-like")
app.add_typer(chips_app, name="chips")


@chips_app.callback(invoke_without_command=True)
def chips(ctx: typer.Context) -> None:
    """List presets. Example: cimflow chips"""
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape

    from cimflow.chip import load_preset, preset_names
    from cimflow.chip.io import validation_preset_names

    table = Table(title="cimflow chip presets")
    for col in ("name", "node", "array kinds", "roles (mvm / embedding / digital)", "description"):
        table.add_column(col)
    for name in preset_names():
        chip = load_preset(name)
        kinds = ", ".join(f"{k}: {a.kind} {a.device.technology} {a.rows}x{a.cols}" for k, a in chip.arrays.items())
        roles = f"{chip.roles.mvm} / {chip.embedding_kind} / {chip.roles.digital or '-'}"
        table.add_row(name, f"{chip.technology.node_nm:g} nm", kinds, roles, escape(chip.description))
    console.print(table)
    references = Table(title="validation references (published chips; see `cimflow validate chips`)")
    for col in ("name", "node", "array kinds", "description"):
        references.add_column(col)
    for name in validation_preset_names():
        chip = load_preset(name)
        kinds = ", ".join(f"{k}: {a.kind} {a.device.technology} {a.rows}x{a.cols}" for k, a in chip.arrays.items())
        references.add_row(name, f"{chip.technology.node_nm:g} nm", kinds, escape(chip.description))
    console.print(references)


@chips_app.command("show")
def chips_show(
    chip: str = typer.Argument(..., help="preset name (validation/<name> for a validation reference) or path to a chip YAML file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of YAML"),
) -> None:
    """Validate and print one chip description.

    Example: cimflow chips show pcm-hermes-like; cimflow chips show validation/neurram; cimflow chips show my_chip.yaml
    """
    from cimflow.chip import chip_to_yaml, resolve_chip

    spec = resolve_chip(chip)
    if as_json:
        from cimflow.fileio import dumps_json

        typer.echo(dumps_json(spec.model_dump(mode="json", exclude_none=True), indent=2))
    else:
        typer.echo(chip_to_yaml(spec), nl=False)


_MODEL_HELP = ("a Python file exposing model() and example_inputs() (it is imported, i.e. RUN: only give files you "
               "would run yourself), a torch.export .pt2, or an ONNX file (both read as data)")
_TRUST_HELP = ("load a .pt2 even if torch must unpickle objects or run code from it (refused by default); only for "
               "files whose author you trust")


def _parse_rules(rules: list[str]) -> dict[str, str]:
    parsed = {}
    for rule in rules:
        key, sep, target = rule.partition("=")
        if not sep or not key or not target:
            raise CimflowError(f"--rule {rule!r}: write PATTERN=TARGET, e.g. --rule 'fc3=digital' or --rule 'type:Conv2d=host'")
        parsed[key] = target
    return parsed


@app.command("compile")
def compile_cmd(
    model: Path = typer.Argument(..., help=_MODEL_HELP),
    trust_model_file: bool = typer.Option(False, "--trust-model-file", help=_TRUST_HELP),
    chip: str = typer.Option("hybrid-rram-sram-28nm", "--chip", help="preset name or chip YAML file"),
    rule: list[str] = typer.Option([], "--rule", help=(
        "placement rule PATTERN=TARGET (name, glob, re:REGEX or type:Type = digital | host | digital_unit | ARRAY_KIND); repeatable")),
    mode: str = typer.Option("pipelined", "--mode", help="pipelined | layer_by_layer"),
    explain: bool = typer.Option(False, "--explain", help="show why each op went where, with source locations, and list host ops"),
    out: Path | None = typer.Option(None, "--out", help="write the plan as JSON"),
) -> None:
    """Compile a model onto a chip and print the plan.

    Example: cimflow compile examples/mlp_model.py --chip pcm-hermes-like --rule 'fc3=digital' --explain --out plan.json
    """
    from cimflow.api import compile as compile_model
    from cimflow.compile.capture import load_model_file
    from cimflow.report.plan_table import print_plan

    _check_outputs(out=out)
    module, example_inputs = load_model_file(model, trust=trust_model_file)
    plan = compile_model(module, chip, example_inputs, rules=_parse_rules(rule), mode=mode)
    plan.model_name = model.stem
    print_plan(plan, console, explain=explain)
    if explain:
        host = [o for o in plan.ops if o.kind == "host"]
        listed = ", ".join(f"{o.name} [{o.op_type}] at {o.source_location}" for o in host) if host else "none"
        console.print("operators on the host (unknown to cimflow): " + listed)
    if out is not None:
        _write_text(out, plan.to_json(), "plan")
        console.print(f"wrote {out}")


@app.command("estimate")
def estimate_cmd(
    model: Path = typer.Argument(..., help=_MODEL_HELP),
    trust_model_file: bool = typer.Option(False, "--trust-model-file", help=_TRUST_HELP),
    chip: str = typer.Option("hybrid-rram-sram-28nm", "--chip", help="preset name or chip YAML file"),
    rule: list[str] = typer.Option([], "--rule", help="placement rule PATTERN=TARGET (see `cimflow compile --help`); repeatable"),
    data_dependent: bool = typer.Option(
        True, "--data/--no-data", help="simulate the example inputs and weight energies by the measured activity"),
    host: str | None = typer.Option(
        None, "--host", help="host preset for operators left on the host (default: the chip's host block, else server-cpu-2s)"),
    all_ops: bool = typer.Option(False, "--all-ops", help="list every operator, not only those that cost energy"),
    out: Path | None = typer.Option(None, "--out", help="write the cost report as JSON"),
) -> None:
    """Energy, latency, area and throughput of a model on a chip, per operator and per component.

    Example: cimflow estimate examples/mlp_model.py --chip pcm-hermes-like --out cost.json
    """
    from cimflow.api import compile as compile_model
    from cimflow.api import gather_stats, simulate
    from cimflow.compile.capture import load_model_file
    from cimflow.cost import estimate, print_cost

    _check_outputs(out=out)
    module, example_inputs = load_model_file(model, trust=trust_model_file)
    plan = compile_model(module, chip, example_inputs, rules=_parse_rules(rule))
    plan.model_name = model.stem
    stats = None
    if data_dependent:
        batch = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        stats = gather_stats(simulate(plan, module, seed=0, allow_host=True), [batch])
    report = estimate(plan, stats=stats, host=host)
    print_cost(report, console, all_ops=all_ops)
    if out is not None:
        _write_json(out, report.to_dict())
        console.print(f"wrote {out}")


@app.command("recsys")
def recsys_cmd(
    shape: str = typer.Option("custom", "--shape", help="custom | criteo-kaggle | dlrm-v2 (MLPerf DLRM-v2: 26 tables, 204M rows x 128)"),
    tables: str = typer.Option("1000000,1000000,1000000,1000000", "--tables", help="custom shape: rows of each table, comma-separated"),
    dim: int = typer.Option(64, "--dim", help="custom shape: embedding width (1-4096)"),
    pooling: int = typer.Option(4, "--pooling", help="custom shape: lookups per table per sample (1-10000)"),
    skew: float = typer.Option(1.05, "--skew", help="Zipf exponent of row accesses (0 = uniform, at most 5)"),
    trace: Path | None = typer.Option(None, "--trace", help=(
        "access trace (.npz / .pt, TorchRec KJT layout: indices, offsets or lengths, batch_size) instead of --skew; "
        "its first half places rows, its second half measures hits")),
    chip: str = typer.Option("hybrid-rram-sram-28nm", "--chip", help="preset name or chip YAML file"),
    chips: int | None = typer.Option(None, "--chips", help="number of chips (default: the fewest that hold the model)"),
    sharding: str = typer.Option("auto", "--sharding", help="auto | table_wise | row_wise | column_wise"),
    batch: int = typer.Option(256, "--batch", help="queries per inference for the estimate and the CPU reference"),
    sample_queries: int = typer.Option(4096, "--sample-queries", help="queries in each access sample (placement, held out)"),
    host: str = typer.Option("server-cpu-2s", "--host", help="host preset for the CPU reference roofline"),
    cpu: str = typer.Option(
        "roofline", "--cpu", help="roofline | measured (also time plain PyTorch on this machine; the ratios then use it)"),
    out: Path | None = typer.Option(
        None, "--out", help="write the result as JSON (top level: qps, qps_per_w, chips, bound_by, utilization, tiers, ...)"),
) -> None:
    """Estimate a recommendation configuration on one or several chips: sharding, tiers, the
    binding resource, QPS and QPS/W against a CPU.

    Example: cimflow recsys --shape dlrm-v2 --skew 1.1 --out dlrmv2.json
    """
    from cimflow.fileio import check_output_path, write_json
    from cimflow.jobs.recsys_config import RecsysConfig, check_config, run_recsys_config

    try:
        sizes = tuple(int(t) for t in tables.split(",") if t.strip())
    except ValueError:
        raise CimflowError(f"--tables {tables!r}: give row counts separated by commas, e.g. 1000000,500000") from None
    cfg = RecsysConfig(shape=shape, tables=sizes, dim=dim, pooling=pooling, skew=skew, chip=chip, batch=batch, host=host, chips=chips,
                       sharding=sharding, trace=trace, cpu=cpu, sample_queries=sample_queries)
    check_config(cfg)
    if out is not None:
        check_output_path(out, "--out")
    result = run_recsys_config(cfg, console)
    if out is not None:
        write_json(out, result)
        console.print(f"wrote {out}")


app.add_typer(validate_app, name="validate")


def _cache_help() -> str:
    """Where the trained-model cache lives (for --help texts)."""
    from cimflow.recsys.cache import CACHE_DIR_ENV, default_cache_dir

    return f"trained models are cached in {default_cache_dir()} (set {CACHE_DIR_ENV} to move it; delete it to clear it)"


#: Stands for :func:`_cache_help` in a --help text until the help is shown: finding the cache imports the
#: recsys stack (torch), which the CLI must not pay for at import (``cimflow --help``, one-line errors).
_CACHE_HELP = "<where the trained-model cache lives>"


class _CacheHelpCommand(TyperCommand):
    """A verb whose --help says where the trained-model cache lives, looked up when the help is shown."""

    def format_help(self, ctx: Any, formatter: Any) -> None:  # typer's click types (vendored as typer._click)
        for param in self.params:
            text = getattr(param, "help", None)
            if isinstance(text, str) and _CACHE_HELP in text:
                param.help = text.replace(_CACHE_HELP, _cache_help())  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


@app.command("run", cls=_CacheHelpCommand)
def run(
    chip: str = typer.Option("hybrid-rram-sram-28nm", "--chip", help="preset name or chip YAML file"),
    instances: int = typer.Option(5, "--instances", help=f"chip instances (programming seeds), 1 to {MAX_INSTANCES}"),
    times: str = typer.Option("1s,1d", "--times", help="times after programming, comma-separated (1s, 1h, 1d, 1mo, 1y; at most 1000y)"),
    batch: int = typer.Option(64, "--batch", help=f"batch for the cost estimate and the CPU comparison, 1 to {MAX_BATCH}"),
    host_watts: float | None = typer.Option(
        None, "--host-watts", help="CPU power in watts, > 0 (default: RAPL when readable, else the preset)"),
    out: Path = typer.Option(Path("report.json"), "--out", help="JSON report"),
    html: Path | None = typer.Option(Path("report.html"), "--html", help="HTML report"),
    seed: int = typer.Option(0, "--seed"),
    workload: str = typer.Option("recsys", "--workload", help="recsys (DLRM on MovieLens) | digits (a CNN on every preset)"),
    hwa: bool = typer.Option(
        False, "--hwa", help="fine-tune the DLRM for the chip (HWA) when no fine-tuned model is cached; a cached one is always used"),
    no_cache: bool = typer.Option(False, "--no-cache", help=f"train afresh, neither reading nor writing the cache; {_CACHE_HELP}"),
) -> None:
    """The main job on built-in defaults: DLRM accuracy on MovieLens-100k over chip instances and
    time on the hybrid RRAM/SRAM chip, and QPS and QPS/W on the Criteo-Kaggle shape against a server
    CPU's roofline and this CPU measured.

    Example: cimflow run --instances 5 --times 1s,1d
    """
    _check_range("--instances", instances, 1, MAX_INSTANCES)
    _check_range("--batch", batch, 1, MAX_BATCH)
    _check_range("--seed", seed, 0, MAX_SEED)
    if host_watts is not None and not 0 < host_watts <= MAX_HOST_WATTS:
        raise CimflowError(f"--host-watts {host_watts!r}: give the CPU's power in watts, a number above 0 and at most {MAX_HOST_WATTS:g}")
    if workload not in ("recsys", "digits"):
        raise CimflowError(f"--workload {workload!r} is not one of: recsys, digits")
    _check_times(times)
    _check_outputs(out=out, html=html if workload == "recsys" else None)
    if workload == "digits":
        from cimflow.jobs.digits import run_digits_demo

        result = run_digits_demo(instances=instances, seed=seed, console=console)
        _write_json(out, result)
        console.print(f"wrote {out}")
        return
    if workload != "recsys":
        raise CimflowError(f"--workload {workload!r} is not one of: recsys, digits")
    from cimflow.jobs.recsys import RunConfig, run_recsys
    from cimflow.recsys.data import movielens_100k_dir

    movielens_100k_dir()  # MovieLens-100k comes from the recbole wheel: if it is missing, say how to install it before any work

    labels = tuple(t.strip() for t in times.split(",") if t.strip())
    config = RunConfig(chip=chip, instances=instances, times=labels, seed=seed, batch=batch, host_watts=host_watts, out=out, html=html,
                       hwa=hwa, cache=not no_cache)
    run_recsys(config, console)
    console.print(f"wrote {out}" + (f" and {html}" if html else ""))


@app.command("train-hwa", cls=_CacheHelpCommand)
def train_hwa_cmd(
    seed: int = typer.Option(0, "--seed", help="seed of the float DLRM (and its data split) to fine-tune"),
    retrain: bool = typer.Option(False, "--retrain", help=f"fine-tune again even when a fine-tuned model is cached; {_CACHE_HELP}"),
    threads: int = typer.Option(1, "--threads", help=f"torch threads while training, 1 to {MAX_THREADS}"),
) -> None:
    """Hardware-aware fine-tuning of the MovieLens DLRM for the hybrid RRAM/SRAM chip; the result is cached
    and `cimflow run` uses it (with before/after AUC series).

    Example: cimflow train-hwa && cimflow run --times 1s,1d
    """
    from cimflow.jobs.hwa_dlrm import HWASettings, hwa_movielens_dlrm
    from cimflow.progress import progress_bar

    _check_range("--seed", seed, 0, MAX_SEED)
    _check_range("--threads", threads, 1, MAX_THREADS)
    settings = HWASettings()
    with progress_bar(console) as progress:
        task = progress.add_task(f"HWA fine-tuning the DLRM on {settings.chip}", total=1)
        _, info = hwa_movielens_dlrm(seed=seed, settings=settings, cache=True, threads=threads, retrain=retrain,
                                     progress=lambda step, steps: progress.update(task, completed=step, total=steps))
    if info.cached:
        state = "loaded from the cache"
    else:
        state = f"fine-tuned in {info.seconds:.0f} s ({info.steps} steps, best step {info.best_step})"
    console.print(f"HWA DLRM {state}: fp32 test AUC {info.fp32_test_auc:.4f} (float model {info.base_fp32_test_auc:.4f}), "
                  f"on-chip validation AUC at {settings.validation_time} {info.validation_auc_on_chip:.4f}; {info.cache_path}")


@app.command("explore")
def explore_cmd(
    space: Path = typer.Argument(..., help="space file (YAML): base chip, workload, parameters, objectives, constraints"),
    trials: int | None = typer.Option(None, "--trials", help="trials in the study, all runs together (default: the space file's)"),
    storage: str | None = typer.Option(
        None, "--storage", help="Optuna storage: sqlite:///FILE.db or a journal file (default: OUT/study.journal); resumes"),
    workers: int = typer.Option(1, "--workers", help="parallel trials on Ray (1: in this process, without Ray)"),
    address: str | None = typer.Option(None, "--address", help="a running Ray cluster (auto or HOST:PORT); default: a local one"),
    out: Path = typer.Option(Path("explore-out"), "--out", help="folder for trials/, pareto.json, explore.html, best_chip.yaml"),
) -> None:
    """Search chip designs and mappings for the Pareto front of accuracy, QPS/W, QPS, energy and area
    (Optuna; resumable: run it again with the same --out to finish a killed search).

    Example: cimflow explore examples/explore_hybrid_recsys.yaml --trials 60 --out explore-hybrid
    """
    from cimflow.jobs.explore import ExploreOptions, run_explore

    if trials is not None:
        _check_range("--trials", trials, 1, 100_000)
    _check_range("--workers", workers, 1, 256)
    run_explore(space, ExploreOptions(trials=trials, storage=storage, workers=workers, address=address, out=out), console)


@app.command("simulate")
def simulate_cmd(
    model: Path = typer.Argument(..., help=_MODEL_HELP + "; a Python file may also define evaluate(model) -> float"),
    trust_model_file: bool = typer.Option(False, "--trust-model-file", help=_TRUST_HELP),
    chip: str = typer.Option("pcm-hermes-like", "--chip", help="preset name or chip YAML file"),
    times: str = typer.Option("1s,1h,1d,1mo,1y", "--times", help="times after programming, comma-separated (1s, 1h, 1d, 1mo, 1y)"),
    instances: int = typer.Option(5, "--instances", help=f"chip instances (programming seeds), 1 to {MAX_INSTANCES}"),
    compensation: str = typer.Option(
        "global", "--compensation", help="drift compensation to compare with none: global | per_column | none"),
    seed: int = typer.Option(0, "--seed", help="first instance seed"),
    out: Path | None = typer.Option(None, "--out", help="write the results as JSON"),
    html: Path | None = typer.Option(None, "--html", help="write an HTML page with a plot of the metric vs time"),
) -> None:
    """Accuracy over time after programming: the model's metric (its evaluate(), else the relative output error
    vs the float model on example_inputs()) on several chip instances, without and with drift compensation.

    Example: cimflow simulate examples/mlp_model.py --chip pcm-hermes-like --times 1s,1d,1y --compensation global --out t.json --html t.html
    """
    from cimflow.compile.capture import load_model_file
    from cimflow.progress import progress_bar
    from cimflow.train.over_time import accuracy_over_time, parse_times

    _check_range("--instances", instances, 1, MAX_INSTANCES)
    _check_range("--seed", seed, 0, MAX_SEED)
    _check_times(times)
    _check_outputs(out=out, html=html)
    module, example_inputs = load_model_file(model, trust=trust_model_file)
    evaluate = _model_file_function(model, "evaluate")
    points = parse_times(times)
    mode = None if compensation == "none" else compensation
    with progress_bar(console) as progress:
        task = progress.add_task("simulating chip instances", total=instances * len(points))
        result = accuracy_over_time(module, chip, [label for label, _ in points], instances=instances, compensation=mode,
                                    evaluate=evaluate, example_inputs=example_inputs, seed=seed, progress=lambda: progress.advance(task))
    table = Table(title=f"{model.name} on {result.chip}: {result.metric} ({'higher' if result.higher_is_better else 'lower'} is better), "
                        f"mean ± std over {instances} instances; float model {result.fp32:.4f}")
    table.add_column("time after programming")
    for series in result.series:
        table.add_column(series["label"], justify="right")
    for i, (label, _) in enumerate(points):
        table.add_row(label, *(f"{s['points'][i]['mean']:.4f} ± {s['points'][i]['std']:.4f}" for s in result.series))
    console.print(table)
    data = {"model": str(model), **result.to_dict()}
    if out is not None:
        _write_json(out, data)
        console.print(f"wrote {out}")
    if html is not None:
        from cimflow.report.time_plot import write_time_html

        write_time_html(data, html, title=f"cimflow simulate {model.name} --chip {result.chip}")
        console.print(f"wrote {html}")


def _model_file_function(path: Path, name: str):  # noqa: ANN202 - returns the user's callable or None
    """A function the model file defines (after load_model_file imported it), or None."""
    resolved = path.resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == resolved:
            fn = getattr(module, name, None)
            if fn is None:
                return None
            if not callable(fn):
                raise CimflowError(f"{path.name}: {name} must be a function {name}(model) -> float")
            return _user_metric(fn, path, name)
    return None


def _user_metric(fn: Callable[[Any], Any], path: Path, name: str) -> Callable[[Any], float]:
    """``fn`` as a metric: a float, and any error it raises as one CimflowError line."""

    def call(model: Any) -> float:
        try:
            return float(fn(model))
        except CimflowError:
            raise
        except Exception as error:  # noqa: BLE001 - user code
            raise CimflowError(f"{path.name}: {name}(model) raised {type(error).__name__}: {error}") from error

    return call


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI. A CimflowError, and a flag typer cannot parse (a usage error),
    print one line and exit 2."""
    from typer.exceptions import Abort, Exit, TyperException

    try:
        code = app(args=argv, prog_name="cimflow", standalone_mode=False)
    except CimflowError as err:
        print(f"cimflow: error: {err}", file=sys.stderr)
        sys.exit(2)
    except TyperException as err:  # typer's usage errors (bad flag value, unknown option, missing argument)
        message = " ".join(err.format_message().split())
        if message:  # an empty message: typer already printed the help (e.g. `cimflow` alone)
            print(f"cimflow: error: {message} (see cimflow --help)", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2) or 2)
    except Exit as done:
        sys.exit(done.exit_code)
    except (KeyboardInterrupt, Abort):
        print("cimflow: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["MAX_BATCH", "MAX_FOLDS", "MAX_HOST_WATTS", "MAX_INSTANCES", "MAX_SEED", "MAX_THREADS", "MAX_TIMES", "app", "main"]

if __name__ == "__main__":
    main()
