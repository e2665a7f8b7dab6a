"""A placement rule that selects nothing is an error naming the rule and the operators; a plan
file is read bounded (size, nesting) and written atomically as strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import cimflow
from cimflow.compile import plan as plan_module
from cimflow.compile.plan import Plan
from cimflow.errors import CompileError


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.parametrize("rules, named", [({"fc9": "host"}, "'fc9'"), ({"type:Conv2d": "host"}, "'type:Conv2d'"),
                                          ({nn.Conv2d: "host", "0": "host"}, "'Conv2d'"), ({"re:layer.*": "host"}, "'re:layer.*'")])
def test_a_rule_that_matches_nothing_names_the_rule_and_the_operators(rules, named) -> None:
    with pytest.raises(CompileError) as info:
        cimflow.compile(_mlp(), "ideal", torch.randn(2, 16), rules=rules)
    message = str(info.value)
    assert named in message and "matches no operator" in message
    assert "0, 1, 2" in message  # the operators that exist
    assert "'0'" not in message  # the rule that matched is not blamed


def test_rules_that_match_still_apply() -> None:
    plan = cimflow.compile(_mlp(), "ideal", torch.randn(2, 16), rules={"type:Linear": "digital_unit", "2": "host"})  # the last match wins
    substrates = {o.name: o.substrate for o in plan.ops}
    assert substrates["2"] == "host" and substrates["0"] == "digital_unit"


def test_plan_file_is_strict_json_and_atomic(tmp_path: Path) -> None:
    plan = cimflow.compile(_mlp(), "ideal", torch.randn(2, 16))
    plan.warnings.append("x")
    plan.ops[1].latency_s = math.nan  # a bug upstream must not turn into a non-JSON file
    path = tmp_path / "plan.json"
    (tmp_path / "other.txt").write_text("keep")
    (tmp_path / "plan.json.tmp").symlink_to(tmp_path / "other.txt")
    plan.save(path)
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["ops"][1]["latency_s"] is None
    assert (tmp_path / "other.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt", "plan.json", "plan.json.tmp"]


def test_plan_load_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CompileError, match="nests too deeply"):
        Plan.load(deep)
    big = tmp_path / "big.json"
    big.write_text(" " * 2048 + "{}")
    monkeypatch.setattr(plan_module, "MAX_PLAN_BYTES", 2048)
    with pytest.raises(CompileError, match="larger than 2,048 bytes"):
        Plan.load(big)
    data = cimflow.compile(_mlp(), "ideal", torch.randn(2, 16)).to_dict()
    for key, bad in (("ops", "x"), ("ops", [1, 2]), ("placement", {"mesh": 3}), ("schedule", [])):
        with pytest.raises(CompileError, match="malformed plan"):
            Plan.from_json(json.dumps({**data, key: bad}))
