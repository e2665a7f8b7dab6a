"""User placement rules: which operators go where, by name, glob, regex or type."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cimflow.errors import CompileError

#: Targets a rule may name besides an array kind of the chip.
HOST = "host"
DIGITAL = "digital"  # the chip's digital CIM array kind (roles.digital)
DIGITAL_UNIT = "digital_unit"


def rule_matches(key: Any, name: str, type_names: tuple[str, ...]) -> bool:
    """Does rule ``key`` select the operator ``name`` whose type (and base types) are ``type_names``?

    ``key`` is a module type (class), ``"type:Linear"``, ``"re:<regex>"`` (full match), an
    exact name, or a glob (``"layer4.*"``).
    """
    if isinstance(key, type):
        return key.__name__ in type_names
    if not isinstance(key, str):
        raise CompileError(
            f"a placement rule's key must be a layer name, a glob, 're:<regex>', 'type:<Type>' or a module type; got {key!r}")
    if key.startswith("type:"):
        return key[5:] in type_names
    if key.startswith("re:"):
        try:
            return re.fullmatch(key[3:], name) is not None
        except re.error as err:
            raise CompileError(f"placement rule {key!r}: bad regular expression ({err})") from None
    return key == name or fnmatch.fnmatchcase(name, key)


def matching_rule(rules: Mapping[Any, Any], name: str, type_names: tuple[str, ...]) -> tuple[Any, Any] | None:
    """The last rule that matches (later rules override earlier ones), as (key, target)."""
    chosen = None
    for key, target in rules.items():
        if rule_matches(key, name, type_names):
            chosen = (key, target)
    return chosen


def refuse_unmatched_rules(rules: Mapping[Any, Any], operators: Sequence[tuple[str, tuple[str, ...]]]) -> None:
    """A CompileError naming every rule that selects none of ``operators`` ((name, type names)
    pairs) and the operators that exist: a misspelt rule must never be ignored silently."""
    names_present = {name for name, _ in operators}
    unmatched = [key for key in rules if not (isinstance(key, str) and key in names_present)
                 and not any(rule_matches(key, name, types) for name, types in operators)]
    if not unmatched:
        return
    names = [name for name, _ in operators]
    shown = ", ".join(names[:40]) + (f", ... ({len(names) - 40} more)" if len(names) > 40 else "")
    which = ", ".join(repr(key.__name__ if isinstance(key, type) else key) for key in unmatched)
    subject = f"placement rule {which} matches" if len(unmatched) == 1 else f"placement rules {which} match"
    raise CompileError(f"{subject} no operator of the model; its operators are: {shown or '(none)'} "
                       "(a rule is a name, a glob such as 'layer1.*', 're:<regex>' or 'type:<Type>')")
