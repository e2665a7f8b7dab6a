"""Reading and writing chip descriptions: YAML files, shipped presets, resolution.

YAML is read with the safe loader only, and bounded before anything walks it: the text's
size, then (on the parser's event stream, before a node is composed) the nesting depth,
the number of nodes and of aliases, recursive aliases; then (on the composed node graph,
each shared node counted once per reference but never copied) the size the aliases
expand to. Every error names the file, the field path, the line where the YAML gives it,
and what is allowed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cimflow.chip.spec import Chip
from cimflow.errors import ChipSpecError, DataError
from cimflow.readers import read_text_bounded

PRESET_PACKAGE = "cimflow.chip.presets"
#: Sub-folder of the presets that holds validation references (published chips under their
#: benchmark conditions, see cimflow.cost.validation); loaded as "validation/<name>".
VALIDATION_FOLDER = "validation"

#: Bounds on a chip description's YAML (the largest shipped preset is ~14 KB, ~1,000 nodes,
#: 7 levels deep, no aliases); checked before the document is composed, constructed or walked.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 50_000
MAX_YAML_ALIASES = 32
#: nodes the document holds once every alias is expanded (computed on the node graph, not by expanding)
MAX_YAML_EXPANDED_NODES = 100_000


def preset_names() -> list[str]:
    """Names of the presets shipped inside the package (validation references excluded)."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def validation_preset_names() -> list[str]:
    """Names of the shipped validation references, each as ``"validation/<name>"``."""
    folder = resources.files(PRESET_PACKAGE).joinpath(VALIDATION_FOLDER)
    if not folder.is_dir():
        return []
    return sorted(f"{VALIDATION_FOLDER}/{p.name[: -len('.yaml')]}" for p in folder.iterdir() if p.name.endswith(".yaml"))


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location, or of its nearest parent."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


#: pydantic's range-error types, as the message words them (the limit printed with %g, not 0.000000000001).
_BOUND_WORDS = {
    "greater_than": "greater than", "greater_than_equal": "greater than or equal to",
    "less_than": "less than", "less_than_equal": "less than or equal to",
}


def _bound_limit(item: Any) -> float | None:
    """The limit of a pydantic range error (``ctx`` holds one of gt, ge, lt, le), else None."""
    limits = [v for v in (item.get("ctx") or {}).values() if isinstance(v, (int, float))]
    return limits[0] if len(limits) == 1 else None


def _format_validation_error(err: ValidationError, origin: str, root: yaml.Node | None = None) -> str:
    parts = []
    for item in err.errors():
        loc = tuple(x for x in item["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        path = ".".join(str(x) for x in loc) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `cimflow chips show ideal` for every allowed key)"
        elif item["type"] == "literal_error":
            msg = f"{msg}, got {item.get('input')!r}"
        elif item["type"] == "missing":
            msg = "required field is missing"
        elif item["type"] in _BOUND_WORDS and _bound_limit(item) is not None:
            msg = (f"must be {_BOUND_WORDS[item['type']]} {_bound_limit(item):g} (see the spec bounds in docs/guide.md), "
                   f"got {item.get('input')!r}")
        msg = msg.removeprefix("Value error, ")
        line = _line_of(root, loc) if root is not None else None
        where = f"{origin}:{line}" if line else origin
        parts.append(f"{where}: {path}: {msg}")
    return "invalid chip description: " + "; ".join(parts)


def _bound_yaml_events(text: str, origin: str) -> None:
    """Refuse YAML too large, too deep, with too many nodes or aliases, or a recursive alias,
    from the parser's events alone (iterative: nothing is composed, nothing recursed into)."""
    if len(text) > MAX_YAML_BYTES:
        raise ChipSpecError(f"{origin}: the chip description is {len(text):,} characters; at most {MAX_YAML_BYTES:,} are allowed")
    open_anchors: list[str | None] = []  # anchor of each collection still open (None when it has none)
    nodes = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            open_anchors.pop()
            continue
        if not isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)):
            continue
        nodes += 1
        if nodes > MAX_YAML_NODES:
            raise ChipSpecError(
                f"{origin}:{line}: the chip description has more than {MAX_YAML_NODES:,} YAML nodes (keys and values); that is the limit")
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if event.anchor in open_anchors:
                raise ChipSpecError(f"{origin}:{line}: alias *{event.anchor} refers to a block that contains it (a recursive alias); "
                                    "write the values out instead")
            if aliases > MAX_YAML_ALIASES:
                raise ChipSpecError(
                    f"{origin}:{line}: the chip description uses more than {MAX_YAML_ALIASES} aliases (*name); that is the limit")
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            open_anchors.append(event.anchor)
            if len(open_anchors) > MAX_YAML_DEPTH:
                raise ChipSpecError(
                    f"{origin}:{line}: the chip description nests more than {MAX_YAML_DEPTH} levels deep; that is the limit")


def _expanded_size(root: yaml.Node, origin: str) -> int:
    """Nodes of the document with every alias expanded, counted on the (acyclic, bounded-depth)
    node graph: a shared node is sized once and its size reused, never copied."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        sizes[id(node)] = total
        return total

    total = size(root)
    if total > MAX_YAML_EXPANDED_NODES:
        raise ChipSpecError(f"{origin}: the chip description's aliases expand to {total:,} YAML nodes; at most "
                            f"{MAX_YAML_EXPANDED_NODES:,} are allowed (write the values out, or use fewer aliases)")
    return total


def _refuse_duplicate_keys(root: yaml.Node | None, origin: str) -> None:
    """The safe loader silently keeps the last of two equal keys: refuse them instead.
    Each node is checked once, however many aliases refer to it."""
    pending, visited = [root], set()
    while pending:
        node = pending.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise ChipSpecError(
                        f"{origin}:{key.start_mark.line + 1}: a key must be a plain name or number, not a list or a mapping")
                if getattr(key, "value", None) in seen:
                    raise ChipSpecError(f"{origin}:{key.start_mark.line + 1}: key {key.value!r} appears twice in one block; keep one")
                seen.add(getattr(key, "value", None))
                pending.append(value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)


def chip_from_dict(data: Any, origin: str = "<dict>", root: yaml.Node | None = None) -> Chip:
    """Validate a plain mapping as a :class:`Chip`; errors name ``origin`` and the field path."""
    if data is None:
        raise ChipSpecError(f"{origin}: the chip description is empty; see `cimflow chips show ideal` for a complete example")
    if not isinstance(data, dict):
        raise ChipSpecError(f"{origin}: a chip description must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return Chip.model_validate(data)
    except ValidationError as err:
        raise ChipSpecError(_format_validation_error(err, origin, root)) from None


def parse_yaml_bounded(text: str, origin: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text (safe loader) into plain data and its root node; the text is bounded (size,
    depth, nodes, aliases, expanded size; see ``MAX_YAML_*``) and duplicate keys are refused before
    anything is constructed. Every problem is one :class:`ChipSpecError` line. Chip files and
    space files (``cimflow explore``) are both read through here."""
    try:
        _bound_yaml_events(text, origin)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                _expanded_size(root, origin)
                _refuse_duplicate_keys(root, origin)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ChipSpecError(f"{where}: malformed YAML ({problem}); fix the syntax and try again") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer of more than 4,300 digits
        raise ChipSpecError(f"{origin}: a YAML value cannot be read ({str(err).splitlines()[0]})") from None
    return data, root


def load_chip_yaml(text: str, origin: str = "<string>") -> Chip:
    """Parse YAML text (safe loader) into a validated :class:`Chip`; the text is bounded (size,
    depth, nodes, aliases, expanded size; see ``MAX_YAML_*``) before anything walks it."""
    data, root = parse_yaml_bounded(text, origin)
    return chip_from_dict(data, origin, root)


def load_chip_file(path: str | Path) -> Chip:
    path = Path(path)
    if not path.is_file():
        raise ChipSpecError(f"chip file {str(path)!r} does not exist; give a preset name ({', '.join(preset_names())}) or a YAML file")
    try:
        text = read_text_bounded(path, MAX_YAML_BYTES, "chip file")
    except DataError as err:  # one bounded reader; a chip file's problems are chip-spec errors
        raise ChipSpecError(str(err)) from None
    return load_chip_yaml(text, str(path))


def load_preset(name: str) -> Chip:
    """Load a shipped preset by name, or a validation reference as ``"validation/<name>"``."""
    if name.startswith(f"{VALIDATION_FOLDER}/"):
        names = validation_preset_names()
        if name not in names:
            raise ChipSpecError(f"unknown validation preset {name!r}; validation presets are: {', '.join(names)}")
        text = resources.files(PRESET_PACKAGE).joinpath(VALIDATION_FOLDER, f"{name.split('/', 1)[1]}.yaml").read_text(encoding="utf-8")
        return load_chip_yaml(text, f"preset:{name}")
    names = preset_names()
    if name not in names:
        raise ChipSpecError(f"unknown chip preset {name!r}; presets are: {', '.join(names)} (or give a path to a YAML file)")
    text = resources.files(PRESET_PACKAGE).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return load_chip_yaml(text, f"preset:{name}")


def resolve_chip(chip: Chip | str | Path) -> Chip:
    """Accept a :class:`Chip`, a preset name (``"validation/<name>"`` for a validation reference)
    or a YAML path; return a validated Chip (a copy)."""
    if isinstance(chip, Chip):
        return chip.model_copy(deep=True)
    if (isinstance(chip, str) and chip.startswith(f"{VALIDATION_FOLDER}/") and not chip.endswith((".yaml", ".yml"))
            and not Path(chip).exists()):
        return load_preset(chip)
    if isinstance(chip, Path) or (isinstance(chip, str) and (chip.endswith((".yaml", ".yml")) or "/" in chip)):
        return load_chip_file(chip)
    if isinstance(chip, str):
        return load_preset(chip)
    raise ChipSpecError(f"a chip must be a preset name, a YAML path or a cimflow Chip, got {type(chip).__name__}")


def chip_to_yaml(chip: Chip) -> str:
    """Serialize a chip to YAML (round-trips through :func:`load_chip_yaml`)."""
    return yaml.safe_dump(chip.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
