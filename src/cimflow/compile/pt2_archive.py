"""Checks that a torch.export ``.pt2`` archive is data only, before torch reads it.

``torch.export.load`` (torch 2.13) can run code from the file it reads:

* payloads marked ``use_pickle`` (weights, constants), legacy ``<model>.pt`` weight and
  constant files, and ``opaque_obj_*``/``custom_obj_*`` constants are unpickled with
  ``torch.load(weights_only=False)``, ``pickle.loads`` or the TorchScript unpickler;
* the stored example inputs are read with ``weights_only=True`` first and, if that fails,
  again with ``weights_only=False`` (full unpickling);
* archives in the older (torch 2.7) layout are read through the same fallback;
* an AOTInductor package (``data/aotinductor/``) loads a compiled shared library;
* symbolic shape expressions in the graph are parsed by ``sympy.sympify`` (Python ``eval``);
* ``ExportedProgram.module()`` compiles the archive's ``guards_code`` with ``exec``, and the
  graph's call targets are looked up by name under ``torch``/``math``/``operator`` (so a
  target can name any function reachable from there), then run when the graph runs.

:func:`check_archive` refuses every one of these before torch sees the bytes, so a file
that passes is read with ``weights_only=True`` only, its expressions are plain arithmetic on
shape symbols, and its graph calls ATen/prims operators only. :func:`check_graph_targets`
checks the loaded graph once more. Callers load the module with ``check_guards=False``.
Every entry must be stored uncompressed (as ``torch.export.save`` writes them) and lie
inside the file, so nothing read can be larger than the file itself (no zip bombs).
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx

from cimflow.errors import CompileError

__all__ = ["UnsafeModelFileError", "check_archive", "check_graph_targets", "TRUST_HINT"]

#: How a user trusts a file on purpose (shown in every refusal).
TRUST_HINT = ("if you trust this file and its author, load it with trust=True "
              "(cimflow CLI: --trust-model-file), which lets torch unpickle and run its code")

_MAX_ENTRIES = 100_000
_MAX_JSON_BYTES = 256 * 1024 * 1024
_MAX_EXPRESSION_CHARS = 2_000
_MAX_LITERAL = 10**30

_FIXED_ENTRIES = frozenset({"archive_format", "archive_version", "byteorder", ".data/version",
                            ".data/serialization_id"})
_ALLOWED_NAMESPACES = frozenset({"aten", "prims", "higher_order"})
_REFUSED_ATEN = frozenset({"from_file"})  # reads (and with shared=True maps) a named file

# Calls and names a symbolic shape expression may use (sympy classes, torch's sympy
# functions as the export deserializer names them, and sympy's logic/relations).
_EXPRESSION_CALLS = frozenset("""
    Symbol Integer Float Rational Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge And Or Not
    StrictLessThan LessThan StrictGreaterThan GreaterThan Equality Unequality FloorDiv
    ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
    PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator
    TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity floor ceiling
""".split())
_EXPRESSION_NAMES = frozenset({"True", "False", "oo", "zoo", "nan", "int_oo", "true", "false"})
_EXPRESSION_KEYWORDS = frozenset({"positive", "negative", "integer", "real", "nonnegative",
                                  "nonpositive", "finite", "zero", "nonzero", "evaluate"})
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_SAFE_AST = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Add, ast.Sub,
             ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd, ast.Not, ast.And,
             ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Pow, ast.BitAnd,
             ast.BitOr, ast.Invert, ast.Load, ast.Call, ast.Name, ast.Constant, ast.keyword)


class UnsafeModelFileError(CompileError):
    """A model file would need code to run (unpickling, ``exec``) to be loaded."""


def _refuse(name: str, why: str) -> UnsafeModelFileError:
    return UnsafeModelFileError(f"refusing to load {name!r}: {why}; {TRUST_HINT}")


def check_archive(data: bytes, name: str) -> None:
    """Refuse a ``.pt2`` archive (its bytes) that torch could only load by running code.

    Raises:
        UnsafeModelFileError: the archive holds pickled objects, compiled code, code strings
            or calls outside ATen/prims, or is not a plain torch.export archive.
        CompileError: the bytes are not a readable zip archive.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CompileError(
            f"{name!r} is not a torch.export archive (not a readable zip file: {error}); create "
            "one with torch.export.save(torch.export.export(model, inputs), path)"
        ) from error
    if not infos or len(infos) > _MAX_ENTRIES:
        raise CompileError(f"{name!r} holds {len(infos)} entries; a torch.export archive holds "
                           f"between 1 and {_MAX_ENTRIES}")
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1 or any("/" not in info.filename for info in infos):
        raise _refuse(name, "it is not in the torch.export archive layout (one top folder), "
                            "e.g. an older-format archive that torch reads by unpickling")
    root = roots.pop() + "/"
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size \
                or info.header_offset + info.compress_size > len(data):
            raise _refuse(name, f"entry {info.filename!r} is compressed or larger than the file "
                                "(torch.export.save stores entries uncompressed)")
        relative = info.filename[len(root):]
        if relative.endswith("/"):
            continue
        _check_entry_name(relative, name)
        entries[relative] = info
    if "archive_version" not in entries or not any(e.startswith("models/") for e in entries):
        raise _refuse(name, "it has no archive_version or no models/*.json: not a torch.export "
                            "archive of the current format")

    def read(relative: str, limit: int | None = None) -> bytes:
        info = entries[relative]
        if limit is not None and info.file_size > limit:
            raise CompileError(f"{name!r}: entry {relative!r} is {info.file_size} bytes; "
                               f"cimflow reads at most {limit} bytes there")
        return archive.read(info)

    for relative in entries:
        if relative.startswith("models/"):
            _check_model_json(_json(read(relative, _MAX_JSON_BYTES), relative, name), relative, name)
        elif relative.endswith(("_weights_config.json", "_constants_config.json")):
            _check_payload_config(_json(read(relative, _MAX_JSON_BYTES), relative, name),
                                  relative, name)
        elif relative.startswith("data/sample_inputs/"):
            _check_sample_inputs(read(relative), relative, name)


def _check_entry_name(relative: str, name: str) -> None:
    folder, _, leaf = relative.rpartition("/")
    allowed = (
        relative in _FIXED_ENTRIES
        or (folder == "models" and leaf.endswith(".json"))
        or (folder == "data/weights" and (leaf.startswith("weight_") or leaf.endswith(
            "_weights_config.json")) and not leaf.endswith(".pt"))
        or (folder == "data/constants" and (leaf.startswith("tensor_") or leaf.endswith(
            "_constants_config.json")) and not leaf.endswith(".pt"))
        or (folder == "data/sample_inputs" and leaf.endswith(".pt"))
        or relative.startswith("extra/")
    )
    if allowed:
        return
    if relative.startswith("data/aotinductor/"):
        why = "it holds an AOTInductor package (compiled code that torch would load)"
    elif leaf.startswith(("opaque_obj_", "custom_obj_")):
        why = f"constant {leaf!r} is a pickled Python/TorchScript object"
    elif leaf.endswith(".pt"):
        why = f"entry {relative!r} is a legacy pickled weight or constant file"
    else:
        why = f"entry {relative!r} is not part of a plain torch.export archive"
    raise _refuse(name, why)


def _json(data: bytes, relative: str, name: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CompileError(f"{name!r}: entry {relative!r} is not valid JSON "
                           f"({type(error).__name__})") from error


def _check_payload_config(config: Any, relative: str, name: str) -> None:
    payloads = config.get("config") if isinstance(config, dict) else None
    if not isinstance(payloads, dict):
        raise CompileError(f"{name!r}: {relative!r} has no 'config' mapping")
    for fqn, payload in payloads.items():
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
            raise _refuse(name, f"{relative!r} stores {str(fqn)[:80]!r} as a pickled object")
        path = payload.get("path_name")
        prefix = "weight_" if "weights" in relative else "tensor_"
        if not isinstance(path, str) or not path.startswith(prefix) or "/" in path:
            raise _refuse(name, f"{relative!r} points {str(fqn)[:80]!r} at {path!r}, which is "
                                f"not a raw tensor payload ({prefix}*)")


def _check_sample_inputs(data: bytes, relative: str, name: str) -> None:
    if not data:
        return
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - any failure means torch would unpickle fully
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise _refuse(name, f"its example inputs ({relative!r}) cannot be read with "
                            f"weights_only=True ({type(error).__name__}: {first}), and torch would "
                            "then unpickle them fully") from error
    if not isinstance(value, (tuple, dict)):
        raise _refuse(name, f"its example inputs ({relative!r}) are a {type(value).__name__}, "
                            "not (args, kwargs)")


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(key, value, parent) for every value inside a JSON document (iteratively)."""
    stack: list[tuple[str, Any, Any]] = [(key, value, None)]
    while stack:
        current_key, current, parent = stack.pop()
        yield current_key, current, parent
        if isinstance(current, dict):
            stack.extend((str(k), v, current) for k, v in current.items())
        elif isinstance(current, list):
            stack.extend((current_key, v, current) for v in current)


def _check_model_json(model: Any, relative: str, name: str) -> None:
    if not isinstance(model, dict) or not isinstance(model.get("graph_module"), dict):
        raise CompileError(f"{name!r}: {relative!r} is not a serialized ExportedProgram")
    guards = model.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) for g in guards):
        raise _refuse(name, f"{relative!r} has malformed guards_code")
    ranges = model.get("range_constraints") or {}
    if not isinstance(ranges, dict):
        raise _refuse(name, f"{relative!r} has malformed range_constraints")
    for symbol, bounds in ranges.items():
        _check_expression(symbol, relative, name)
        values = [bounds.get("min_val"), bounds.get("max_val")] if isinstance(bounds, dict) else [""]
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
            raise _refuse(name, f"{relative!r}: the range of {symbol[:40]!r} is not integers")
    for key, value, parent in _walk(model["graph_module"]):
        if key == "expr_str" and isinstance(parent, dict):
            if not isinstance(value, str):
                raise _refuse(name, f"{relative!r} has a non-string shape expression")
            _check_expression(value, relative, name)
        elif key == "target" and isinstance(parent, dict) and "inputs" in parent \
                and "outputs" in parent:
            _check_target_name(value, relative, name)


def _check_expression(text: str, relative: str, name: str) -> None:
    """A symbolic shape expression must be plain arithmetic on symbols (sympy evals it)."""
    def bad(why: str) -> UnsafeModelFileError:
        return _refuse(name, f"{relative!r} has the shape expression {text[:60]!r}, which {why}")

    if len(text) > _MAX_EXPRESSION_CHARS:
        raise bad(f"is longer than {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise bad("is not an expression") from error
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_AST):
            raise bad(f"uses {type(node).__name__}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _EXPRESSION_CALLS:
                raise bad("calls something other than a sympy arithmetic function")
        elif isinstance(node, ast.Name):
            if node.id not in _EXPRESSION_CALLS | _EXPRESSION_NAMES and (
                    not _SYMBOL.match(node.id) or node.id.startswith("_")):
                raise bad(f"names {node.id[:40]!r}")
        elif isinstance(node, ast.keyword):
            if node.arg not in _EXPRESSION_KEYWORDS:
                raise bad(f"passes keyword {node.arg!r}")
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and not _SYMBOL.match(value):
                raise bad("holds a string that is not a symbol name")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    not math.isfinite(value) or abs(value) > _MAX_LITERAL):
                raise bad("holds a number out of range")
            if not isinstance(value, (str, int, float, bool)):
                raise bad("holds a constant that is not a number or a symbol name")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (isinstance(exponent, ast.Constant) and isinstance(exponent.value, int)
                    and 0 <= exponent.value <= 64):
                raise bad("raises to a power other than a small integer")


def _check_target_name(target: Any, relative: str, name: str) -> None:
    if not isinstance(target, str):
        raise _refuse(name, f"{relative!r} has a node whose target is not a name")
    parts = target.split(".")
    if target.startswith("torch.ops."):
        ok = len(parts) >= 4 and parts[2] in _ALLOWED_NAMESPACES and parts[3] not in _REFUSED_ATEN
    elif target.startswith("_operator."):
        ok = len(parts) == 2 and hasattr(operator, parts[1])
    elif target.startswith("math."):
        ok = len(parts) == 2 and callable(getattr(math, parts[1], None))
    else:
        ok = len(parts) == 2 and parts[0] == "torch" and parts[1].startswith(("sym_", "_sym_"))
    if not ok:
        raise _refuse(name, f"its graph calls {target[:80]!r}; cimflow loads graphs that call "
                            "ATen/prims operators only")


def check_graph_targets(module: fx.GraphModule, name: str) -> None:
    """After loading: every call in the graph (and its subgraphs) is an ATen/prims/
    higher-order operator, an ``operator``/``math`` function or a ``torch.sym_*`` helper."""
    for submodule in module.modules():
        graph = getattr(submodule, "graph", None)
        if not isinstance(graph, fx.Graph):
            continue
        for node in graph.nodes:
            if node.op in ("call_method", "call_module"):
                if node.op == "call_module" and str(node.target).startswith("_guards"):
                    continue
                if node.op == "call_module" and isinstance(
                        submodule.get_submodule(str(node.target)), fx.GraphModule):
                    continue
                raise _refuse(name, f"its graph has a {node.op} node {node.name!r}")
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
                namespace = getattr(target, "namespace", "")
                ok = namespace in ("aten", "prims") and _canonical(target) not in _REFUSED_ATEN
            elif isinstance(target, torch._ops.HigherOrderOperator):
                ok = True
            else:
                module_name = getattr(target, "__module__", "") or ""
                ok = module_name in ("_operator", "math", "operator") or (
                    module_name.startswith("torch") and getattr(target, "__name__", "").startswith(
                        ("sym_", "_sym_")))
            if not ok:
                raise _refuse(name, f"its graph calls {target!r}; cimflow loads graphs that call "
                                    "ATen/prims operators only")


def _canonical(target: Any) -> str:
    """``aten.from_file.default`` -> ``from_file``."""
    if isinstance(target, torch._ops.OpOverload):
        return target._opname
    return str(getattr(target, "_qualified_op_name", target)).split("::")[-1]
