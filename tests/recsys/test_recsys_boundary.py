"""recsys is a workload: it must not import the CIM layers (design rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import cimflow.recsys

FORBIDDEN = ("chip", "physics", "mapping", "compile", "sim", "cost")


def test_recsys_imports_no_cim_layer() -> None:
    package = Path(cimflow.recsys.__file__).parent
    offenders = []
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "cimflow" and len(parts) > 1 and parts[1] in FORBIDDEN:
                    offenders.append(f"{source.name}:{node.lineno} imports {name}")
    assert not offenders, offenders
