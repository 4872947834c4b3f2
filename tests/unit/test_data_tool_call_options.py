"""tool_call's several acceptable answers (options / optional) and opt-in BFCL string matching,
against VERIFIER_CONTRACT.md "tool_call"; expectations by hand."""

from __future__ import annotations

import json

import pytest

from nemo_rlvr.envs.registry import get_env
from nemo_rlvr.envs.tool_call import normalize_strings

AREA = {"type": "function", "function": {"name": "area", "parameters": {
    "type": "object", "properties": {"base": {"type": "integer"}, "unit": {"type": "string"},
                                     "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["base"]}}}
# The contract's example.
EXAMPLE = {"name": "area", "options": {"base": [10], "unit": ["units", "cm"]}, "optional": ["unit"]}


@pytest.fixture(scope="module")
def env():
    return get_env("tool_call")


def call(args, name="area") -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def reward(env, response, expected, **extra):
    s = env.score_record(response, {"tools": [AREA], "expected_calls": expected, **extra})
    assert s.error is None, s.error
    return s.reward


@pytest.mark.parametrize("args,want", [
    ({"base": 10}, 1.0),                          # optional unit left out
    ({"base": 10, "unit": "cm"}, 1.0),            # one of unit's options
    ({"base": 10, "unit": "units"}, 1.0),
    ({"base": "10"}, 0.0),                        # types must match
    ({"base": 10, "unit": "mm"}, 0.0),            # not an option
    ({"unit": "cm"}, 0.0),                        # base is neither optional nor given
    ({"base": 10, "tags": []}, 0.0),              # tags: in neither options nor optional -> extra
    ({"base": 10, "unit": "CM"}, 0.0),            # exact strings by default
])
def test_contract_example(env, args, want):
    assert reward(env, call(args), [EXAMPLE]) == want


def test_optional_without_options_must_be_absent(env):
    exp = {"name": "area", "options": {"base": [10], "unit": []}, "optional": ["unit"]}
    assert reward(env, call({"base": 10}), [exp]) == 1.0
    assert reward(env, call({"base": 10, "unit": "cm"}), [exp]) == 0.0


def test_arrays_keep_their_order_among_options(env):
    exp = {"name": "area", "options": {"base": [1], "tags": [["a", "b"], ["c"]]}}
    assert reward(env, call({"base": 1, "tags": ["a", "b"]}), [exp]) == 1.0
    assert reward(env, call({"base": 1, "tags": ["b", "a"]}), [exp]) == 0.0


def test_each_call_pairs_with_a_different_expected_call(env):
    # Greedy pairing would give call 1 (base 1) to the first pattern (base 1 or 2) and find no
    # pattern for call 2; a matching pairs call 1 with pattern 2 and call 2 with pattern 1.
    wide = {"name": "area", "options": {"base": [1, 2]}}
    narrow = {"name": "area", "options": {"base": [1]}}
    both = call({"base": 1}) + call({"base": 2})
    assert reward(env, both, [wide, narrow]) == 1.0
    assert reward(env, call({"base": 1}) + call({"base": 1}), [wide, narrow]) == 1.0
    assert reward(env, call({"base": 2}) + call({"base": 2}), [wide, narrow]) == 0.0
    assert reward(env, call({"base": 1}), [wide, narrow]) == 0.0   # a call missing


def test_normalized_strings_are_bfcls_rule(env):
    exp = {"name": "area", "options": {"base": [1], "unit": ["April 1, 2024"], "tags": [["New York"]]}}
    args = {"base": 1, "unit": "april 1 2024", "tags": ["new-york"]}
    assert reward(env, call(args), [exp]) == 0.0                                   # exact by default
    assert reward(env, call(args), [exp], string_match="normalized") == 1.0
    assert reward(env, call({**args, "unit": "April 2, 2024"}), [exp], string_match="normalized") == 0.0
    # types still must match after normalization: the number 1 is not the string "1"
    exp_s = {"name": "area", "options": {"base": [1], "unit": ["1"]}}
    assert reward(env, call({"base": 1, "unit": "1"}), [exp_s], string_match="normalized") == 1.0
    # ' becomes ", then both compare: "it's" matches 'it"s' but not "its"
    assert normalize_strings(["It's A_b/c*d^e", {"k": "x.y"}]) == ['it"sabcde', {"k": "xy"}]


@pytest.mark.parametrize("expected,msg", [
    ([{"name": "area", "options": {"base": 10}}], r'options must be an object \{"arg": \[acceptable values'),
    ([{"name": "area", "options": {"base": [10]}, "optional": "unit"}], r"optional must be a list of argument"),
    ([{"name": "area", "options": {"base": []}}], r"options\['base'\] is empty and 'base' is not optional"),
    ([{"name": "area", "options": {"base": ["10"]}}], r"option '10' of 'base' does not satisfy the schema"),
    ([{"name": "area", "options": {"base": [1]}, "arguments": {"base": 1}}], r"both 'arguments' and 'options'"),
])
def test_bad_options_are_field_errors(env, expected, msg):
    import re

    s = env.score_record(call({"base": 10}), {"tools": [AREA], "expected_calls": expected})
    assert s.reward == 0.0 and re.search(msg, s.error), s.error


def test_unknown_string_match_is_an_error(env):
    s = env.score_record(call({"base": 10}), {"tools": [AREA], "expected_calls": [EXAMPLE],
                                              "string_match": "fuzzy"})
    assert s.reward == 0.0 and "string_match" in s.error
