"""Reading and writing chip descriptions: YAML files, shipped presets, resolution.

YAML is read with the safe loader only. Every error names the file, the field path,
the line where the YAML gives it, and what is allowed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cimflow.chip.spec import Chip
from cimflow.errors import ChipSpecError

PRESET_PACKAGE = "cimflow.chip.presets"
#: Sub-folder of the presets that holds validation references (published chips under their
#: benchmark conditions, see cimflow.cost.validation); loaded as "validation/<name>".
VALIDATION_FOLDER = "validation"


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
        msg = msg.removeprefix("Value error, ")
        line = _line_of(root, loc) if root is not None else None
        where = f"{origin}:{line}" if line else origin
        parts.append(f"{where}: {path}: {msg}")
    return "invalid chip description: " + "; ".join(parts)


def _refuse_duplicate_keys(node: yaml.Node | None, origin: str) -> None:
    """The safe loader silently keeps the last of two equal keys: refuse them instead."""
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key, value in node.value:
            if getattr(key, "value", None) in seen:
                raise ChipSpecError(f"{origin}:{key.start_mark.line + 1}: key {key.value!r} appears twice in one block; keep one")
            seen.add(getattr(key, "value", None))
            _refuse_duplicate_keys(value, origin)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, origin)


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


def load_chip_yaml(text: str, origin: str = "<string>") -> Chip:
    """Parse YAML text (safe loader) into a validated :class:`Chip`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ChipSpecError(f"{where}: malformed YAML ({problem}); fix the syntax and try again") from None
    _refuse_duplicate_keys(root, origin)
    return chip_from_dict(data, origin, root)


def load_chip_file(path: str | Path) -> Chip:
    path = Path(path)
    if not path.is_file():
        raise ChipSpecError(f"chip file {str(path)!r} does not exist; give a preset name ({', '.join(preset_names())}) or a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ChipSpecError(f"cannot read chip file {str(path)!r}: {err}") from None
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


def resolve_chip(chip: "Chip | str | Path") -> Chip:
    """Accept a :class:`Chip`, a preset name (``"validation/<name>"`` for a validation reference)
    or a YAML path; return a validated Chip (a copy)."""
    if isinstance(chip, Chip):
        return chip.model_copy(deep=True)
    if isinstance(chip, str) and chip.startswith(f"{VALIDATION_FOLDER}/") and not chip.endswith((".yaml", ".yml")) and not Path(chip).exists():
        return load_preset(chip)
    if isinstance(chip, Path) or (isinstance(chip, str) and (chip.endswith((".yaml", ".yml")) or "/" in chip)):
        return load_chip_file(chip)
    if isinstance(chip, str):
        return load_preset(chip)
    raise ChipSpecError(f"a chip must be a preset name, a YAML path or a cimflow Chip, got {type(chip).__name__}")


def chip_to_yaml(chip: Chip) -> str:
    """Serialize a chip to YAML (round-trips through :func:`load_chip_yaml`)."""
    return yaml.safe_dump(chip.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
