"""The space file of `cimflow explore`: what validates, what is refused (one line naming what is
wrong and what is allowed), and that any mapping or YAML text either parses or is refused with a
SpaceError — never another exception."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.errors import CimflowError
from cimflow.jobs.explore_space import (
    MAX_SPACE_BYTES,
    OBJECTIVES,
    PARAMETERS,
    SpaceError,
    load_space,
    parse_space_yaml,
    space_from_dict,
)

REPO = Path(__file__).resolve().parents[2]


def _space(**over: object) -> dict:
    data: dict = {"name": "t", "base": "hybrid-rram-sram-28nm", "workload": {"kind": "recsys"},
                  "parameters": [{"name": "adc_bits", "values": [6, 7]}], "objectives": [{"name": "qps_per_w"}]}
    data.update(over)
    return data


def test_a_valid_space_parses_with_default_directions_and_grid():
    space = space_from_dict(_space(parameters=[{"name": "adc_bits", "values": [6, 7]}, {"name": "cores", "low": 8, "high": 32, "step": 8}],
                                   objectives=[{"name": "qps_per_w"}, {"name": "auc_loss"}],
                                   constraints=[{"name": "area_mm2", "max": "base"}, {"name": "auc_loss", "max": 0.002}]))
    assert [o.sense for o in space.objectives] == ["maximize", "minimize"]
    assert space.grid_space() == {"adc_bits": [6, 7], "cores": [8, 16, 24, 32]}
    assert space.grid_size() == 8 == len(space.designs())
    assert space.needs_accuracy() and space.accuracy_is_objective()


@pytest.mark.parametrize(("over", "needle"), [
    ({"parameters": [{"name": "adc_bitz", "values": [4]}]}, "unknown parameter 'adc_bitz'; known parameters: adc_bits"),
    ({"parameters": [{"name": "adc_bits", "low": 8, "high": 4}]}, "empty range (low 8 > high 4)"),
    ({"parameters": [{"name": "adc_bits", "values": []}]}, "values is empty"),
    ({"parameters": [{"name": "adc_bits", "low": 0, "high": 40}]}, "outside the allowed [1, 16]"),
    ({"parameters": [{"name": "adc_bits", "low": 4.5, "high": 8}]}, "whole number"),
    ({"parameters": [{"name": "cores", "values": [8], "array": "digital"}]}, "applies to the whole chip"),
    ({"parameters": [{"name": "rules", "values": ["nope"]}]}, "'nope' is not in rule_sets"),
    ({"parameters": [{"name": "adc_bits", "values": [6]}, {"name": "adc_bits", "values": [7]}]}, "given twice"),
    ({"objectives": [{"name": "qpw"}]}, "unknown objective 'qpw'; known objectives: accuracy"),
    ({"objectives": [{"name": "top1"}]}, "'top1' does not exist for workload 'recsys'"),
    ({"constraints": [{"name": "area_mm2"}]}, "give max or min"),
    ({"constraints": [{"name": "areas", "max": 3}]}, "unknown constraint 'areas'"),
    ({"sampler": "cmaes"}, "sampler"),
    ({"extra": 1}, "extra"),
    ({"workload": {"kind": "model"}}, "needs file"),
])
def test_bad_spaces_get_one_line_naming_the_problem(over: dict, needle: str):
    with pytest.raises(SpaceError) as info:
        space_from_dict(_space(**over), "s.yaml")
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and message.startswith("s.yaml: invalid space file")


def test_yaml_bounds_and_duplicate_keys_are_refused():
    with pytest.raises(SpaceError, match="at most"):
        parse_space_yaml("x" * (MAX_SPACE_BYTES + 1), "big.yaml")
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                                                   for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    with pytest.raises(SpaceError, match="the space file"):
        parse_space_yaml(bomb, "bomb.yaml")
    with pytest.raises(SpaceError, match="appears twice"):
        parse_space_yaml("name: a\nname: b\n", "dup.yaml")
    with pytest.raises(SpaceError, match="malformed YAML"):
        parse_space_yaml("name: [", "bad.yaml")


def test_shipped_examples_parse(tmp_path: Path):
    for path in sorted((REPO / "examples").glob("explore_*.yaml")):
        space = load_space(path)
        assert space.parameters and space.objectives
    missing = tmp_path / "none.yaml"
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(missing)


VALUE = st.one_of(st.integers(-5, 70_000), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=6),
                  st.none())
PARAM = st.fixed_dictionaries({"name": st.one_of(st.sampled_from(sorted(PARAMETERS)), st.text(max_size=8))},
                              optional={"values": st.lists(VALUE, max_size=5), "low": VALUE, "high": VALUE, "step": VALUE,
                                        "log": st.booleans(), "array": st.sampled_from(["embedding", "digital", "x"])})
SPACE = st.fixed_dictionaries(
    {"name": st.one_of(st.just("s"), st.text(max_size=5)), "base": st.just("ideal"),
     "workload": st.fixed_dictionaries({"kind": st.sampled_from(["recsys", "digits", "model", "gpu"])}),
     "parameters": st.lists(PARAM, max_size=4),
     "objectives": st.lists(st.fixed_dictionaries({"name": st.one_of(st.sampled_from(sorted(OBJECTIVES)), st.text(max_size=5))},
                                                  optional={"direction": st.sampled_from(["maximize", "minimize", "up"])}),
                            max_size=3)},
    optional={"constraints": st.lists(st.fixed_dictionaries({"name": st.sampled_from(sorted(OBJECTIVES))},
                                                            optional={"max": VALUE, "min": VALUE}), max_size=3),
              "trials": VALUE, "seed": VALUE, "sampler": st.sampled_from(["auto", "grid", "nsga2", "x"])})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(SPACE)
def test_any_mapping_parses_or_is_refused_with_a_space_error(data: dict):
    try:
        space = space_from_dict(data, "fuzz.yaml")
    except SpaceError as err:
        assert "\n" not in str(err) and str(err).startswith("fuzz.yaml")
        return
    # what validates is bounded: every range within the parameter's physical limits, every value finite
    for p in space.parameters:
        _, _, lo, hi, _ = PARAMETERS[p.name]
        if p.low is not None and p.high is not None:
            assert lo <= p.low <= p.high <= hi
        for v in p.values or []:
            assert not (isinstance(v, float) and not math.isfinite(v))
    assert 1 <= space.trials <= 100_000
    grid = space.grid_size()
    assert grid is None or grid == math.prod(len(v) for v in space.grid_space().values())


@settings(max_examples=150, deadline=None, derandomize=True)
@given(SPACE)
def test_any_yaml_text_parses_or_is_refused_with_a_space_error(data: dict):
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        parse_space_yaml(text, "fuzz.yaml")
    except CimflowError as err:
        assert isinstance(err, SpaceError) and "\n" not in str(err)
