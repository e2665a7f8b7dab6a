"""``cimflow <verb>``: a thin shell over :mod:`cimflow.api`.

Every user error is a :class:`~cimflow.errors.CimflowError`: the CLI prints its message
on one line and exits with status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cimflow.errors import CimflowError

app = typer.Typer(
    name="cimflow",
    help="Compile PyTorch models onto compute-in-memory chips; simulate accuracy and estimate cost.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
chips_app = typer.Typer(help="List the shipped chip presets, or show one (preset or YAML file).\n\nExample: cimflow chips show pcm-hermes-like")
app.add_typer(chips_app, name="chips")
console = Console()


@chips_app.callback(invoke_without_command=True)
def chips(ctx: typer.Context) -> None:
    """List presets. Example: cimflow chips"""
    if ctx.invoked_subcommand is not None:
        return
    from cimflow.chip import load_preset, preset_names

    table = Table(title="cimflow chip presets")
    for col in ("name", "node", "array kinds", "roles (mvm / embedding / digital)", "description"):
        table.add_column(col)
    for name in preset_names():
        chip = load_preset(name)
        kinds = ", ".join(f"{k}: {a.kind} {a.device.technology} {a.rows}x{a.cols}" for k, a in chip.arrays.items())
        roles = f"{chip.roles.mvm} / {chip.embedding_kind} / {chip.roles.digital or '-'}"
        table.add_row(name, f"{chip.technology.node_nm:g} nm", kinds, roles, chip.description)
    console.print(table)


@chips_app.command("show")
def chips_show(
    chip: str = typer.Argument(..., help="preset name or path to a chip YAML file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of YAML"),
) -> None:
    """Validate and print one chip description.

    Example: cimflow chips show pcm-hermes-like; cimflow chips show my_chip.yaml
    """
    from cimflow.chip import chip_to_yaml, resolve_chip

    spec = resolve_chip(chip)
    if as_json:
        typer.echo(json.dumps(spec.model_dump(mode="json", exclude_none=True), indent=2))
    else:
        typer.echo(chip_to_yaml(spec), nl=False)


@app.command("run")
def run(
    out: Path = typer.Option(Path("report.json"), "--out", help="where to write the JSON report"),
    instances: int = typer.Option(3, "--instances", min=1, help="chip instances (seeds) per preset"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The main job on built-in defaults.

    Example: cimflow run --instances 3
    """
    from cimflow.demo import run_digits_demo

    result = run_digits_demo(instances=instances, seed=seed, console=console)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the CLI; a CimflowError prints one line and exits 2."""
    try:
        app(args=argv, prog_name="cimflow")
    except CimflowError as err:
        print(f"cimflow: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cimflow: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
