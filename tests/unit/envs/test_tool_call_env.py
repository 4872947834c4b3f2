"""`tool_call` environment against VERIFIER_CONTRACT.md ("tool_call"); expectations by hand."""

from __future__ import annotations

import json

import pytest

from nemo_rlvr.envs.registry import get_env
from nemo_rlvr.envs.tool_call import canonical, parse_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "temp": {"type": "number"},
                "metric": {"type": "boolean"},
                "hours": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["city"],
        },
    },
}
# The bare {"name", "parameters"} form, without the OpenAI wrapper.
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}
ECHO = {"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}  # untyped args
TOOLS = [WEATHER, TIME, ECHO]


@pytest.fixture(scope="module")
def env():
    return get_env("tool_call")


def call(name: str, arguments, **extra) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments, **extra}) + "</tool_call>"


def score(env, response: str, expected, tools=TOOLS):
    return env.score_record(response, {"tools": tools, "expected_calls": expected})


PARIS_ARGS = {"city": "Paris", "days": 3}
PARIS = {"name": "get_weather", "arguments": PARIS_ARGS}
UTC = {"name": "get_time", "arguments": {"tz": "UTC"}}


POSITIVE = {
    "single_call": (call("get_weather", {"city": "Paris", "days": 3}), [PARIS]),
    "whitespace_around_json": ('<tool_call>\n  {"name": "get_weather", '
                               '"arguments": {"days": 3, "city": "Paris"}}\n</tool_call>', [PARIS]),
    "text_before_call": ("Let me check.\n" + call("get_weather", {"city": "Paris", "days": 3}), [PARIS]),
    "two_calls_any_order": (call("get_time", {"tz": "UTC"}) + call("get_weather", PARIS_ARGS), [PARIS, UTC]),
    # a `number` parameter: 5 and 5.0 are the same number (VERIFIER_CONTRACT.md, "Numbers")
    "int_for_float_number_schema": (call("get_weather", {"city": "Paris", "temp": 5}),
                                    [{"name": "get_weather", "arguments": {"city": "Paris", "temp": 5.0}}]),
    "float_for_int_number_schema": (call("get_weather", {"city": "Paris", "temp": 5.0}),
                                    [{"name": "get_weather", "arguments": {"city": "Paris", "temp": 5}}]),
    "no_call_expected_plain_text": ("It is sunny in Paris today.", []),
    "no_call_expected_empty": ("", []),
    "expected_arguments_as_json_string": (call("get_time", {"tz": "UTC"}),
                                          [{"name": "get_time", "arguments": '{"tz": "UTC"}'}]),
    "expected_in_openai_wrapper": (call("get_time", {"tz": "UTC"}),
                                   [{"type": "function", "function": UTC}]),
    "nested_object_key_order_free": (call("echo", {"x": {"b": [1, {"c": None}], "a": "s"}}),
                                     [{"name": "echo",
                                       "arguments": {"x": {"a": "s", "b": [1, {"c": None}]}}}]),
    "array_same_order": (call("get_weather", {"city": "Paris", "hours": [1, 2]}),
                         [{"name": "get_weather", "arguments": {"city": "Paris", "hours": [1, 2]}}]),
}


@pytest.mark.parametrize("response,expected", POSITIVE.values(), ids=POSITIVE.keys())
def test_exact_calls_score_one(env, response, expected):
    s = score(env, response, expected)
    assert s.error is None
    assert s.reward == 1.0
    assert s.components == {"format_ok": 1.0, "schema_ok": 1.0, "names_match": 1.0, "args_match": 1.0}


PARIS_JSON = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "days": 3}})
NEGATIVE = {
    # Other shapes -> 0.
    "key_parameters": (call("get_weather", PARIS_ARGS).replace('"arguments"', '"parameters"'), [PARIS]),
    "extra_key_in_call": (call("get_weather", {"city": "Paris", "days": 3}, id="1"), [PARIS]),
    "unclosed_tag": ("<tool_call>" + PARIS_JSON, [PARIS]),
    "bare_json": (PARIS_JSON, [PARIS]),
    "markdown_block": ("```json\n" + PARIS_JSON + "\n```", [PARIS]),
    "markdown_inside_tag": ("<tool_call>```json\n" + PARIS_JSON + "\n```</tool_call>", [PARIS]),
    "trailing_text_inside_tag": ("<tool_call>" + PARIS_JSON + " done</tool_call>", [PARIS]),
    "nested_tags": ("<tool_call><tool_call>" + PARIS_JSON + "</tool_call></tool_call>", [PARIS]),
    "stray_close_tag": (call("get_weather", {"city": "Paris", "days": 3}) + "</tool_call>", [PARIS]),
    "tag_with_attribute": ('<tool_call name="get_weather">' + PARIS_JSON + "</tool_call>", [PARIS]),
    "upper_case_tag": ("<TOOL_CALL>" + PARIS_JSON + "</TOOL_CALL>", [PARIS]),
    "arguments_as_string": (call("get_weather", json.dumps(PARIS_ARGS)), [PARIS]),
    "arguments_as_list": (call("get_weather", ["Paris", 3]), [PARIS]),
    "nan_argument": ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": NaN}}'
                     "</tool_call>", [PARIS]),
    "duplicate_json_key": ('<tool_call>{"name": "get_weather", "arguments": '
                           '{"city": "Rome", "city": "Paris", "days": 3}}</tool_call>', [PARIS]),
    "valid_call_plus_bare_json_call": (call("get_weather", PARIS_ARGS) + "\n" + PARIS_JSON, [PARIS]),
    # Multiset: duplicates count as extra calls; missing calls fail.
    "duplicate_call": (call("get_weather", {"city": "Paris", "days": 3}) * 2, [PARIS]),
    "extra_call": (call("get_weather", PARIS_ARGS) + call("get_time", {"tz": "UTC"}), [PARIS]),
    "missing_call": (call("get_weather", {"city": "Paris", "days": 3}), [PARIS, UTC]),
    "no_call_when_one_expected": ("The weather in Paris is nice.", [PARIS]),
    # Arguments equal exactly, JSON types matching.
    "string_for_int": (call("get_weather", {"city": "Paris", "days": "3"}), [PARIS]),
    # an `integer` parameter: 3.0 is not an integer as written (VERIFIER_CONTRACT.md, "Numbers")
    "float_for_integer_schema": (call("get_weather", {"city": "Paris", "days": 3.0}), [PARIS]),
    "bool_for_int": (call("get_weather", {"city": "Paris", "days": True}),
                     [{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}]),
    "int_for_bool": (call("get_weather", {"city": "Paris", "metric": 1}),
                     [{"name": "get_weather", "arguments": {"city": "Paris", "metric": True}}]),
    "string_for_int_untyped_schema": (call("echo", {"x": "3"}), [{"name": "echo", "arguments": {"x": 3}}]),
    "bool_for_int_untyped_schema": (call("echo", {"x": True}), [{"name": "echo", "arguments": {"x": 1}}]),
    "null_for_zero_untyped_schema": (call("echo", {"x": None}), [{"name": "echo", "arguments": {"x": 0}}]),
    "nested_object_differs": (call("echo", {"x": {"a": [1, {"b": False}]}}),
                              [{"name": "echo", "arguments": {"x": {"a": [1, {"b": 0}]}}}]),
    "reordered_array": (call("get_weather", {"city": "Paris", "hours": [2, 1]}),
                        [{"name": "get_weather", "arguments": {"city": "Paris", "hours": [1, 2]}}]),
    "extra_argument": (call("get_weather", {"city": "Paris", "days": 3, "metric": True}), [PARIS]),
    "missing_argument": (call("get_weather", {"city": "Paris"}), [PARIS]),
    "wrong_value_case": (call("get_weather", {"city": "paris", "days": 3}), [PARIS]),
    "unknown_tool": (call("get_wether", {"city": "Paris", "days": 3}), [PARIS]),
    # expected_calls == []: any call scores 0.
    "call_when_none_expected": (call("get_time", {"tz": "UTC"}), []),
    "bare_json_when_none_expected": (json.dumps(UTC), []),
    "unclosed_tag_when_none_expected": ("<tool_call>", []),
}


@pytest.mark.parametrize("response,expected", NEGATIVE.values(), ids=NEGATIVE.keys())
def test_wrong_or_malformed_calls_score_zero(env, response, expected):
    s = score(env, response, expected)
    assert s.error is None
    assert s.reward == 0.0


def test_schema_violation_scores_zero_even_when_equal_to_expected(env):
    # The expected call itself is checked against the schema, so a schema-violating call
    # can only equal a bad expected call -> that is reported as an env-field error instead.
    s = score(env, call("get_weather", {"days": 3}), [{"name": "get_weather", "arguments": {"days": 3}}])
    assert s.reward == 0.0 and "expected_calls[0]" in s.error and "schema" in s.error


def test_schema_checked_for_calls_to_known_tools(env):
    s = score(env, call("get_weather", {"city": 5}) + call("get_time", {"tz": "UTC"}), [UTC])
    assert s.reward == 0.0 and s.components["schema_ok"] == 0.0


def test_components_separate_names_from_arguments(env):
    s = score(env, call("get_weather", {"city": "Paris", "days": 4}), [PARIS])
    assert s.components == {"format_ok": 1.0, "schema_ok": 1.0, "names_match": 1.0, "args_match": 0.0}


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"expected_calls": []}, "'tools'"),
        ({"tools": TOOLS}, "'expected_calls'"),
        ({"tools": {"name": "x"}, "expected_calls": []}, "'tools'"),
        ({"tools": [{"parameters": {}}], "expected_calls": []}, "tools[0]"),
        ({"tools": [{"name": "t", "parameters": {"type": "objekt"}}], "expected_calls": []}, "tools[0]"),
        ({"tools": TOOLS, "expected_calls": {"name": "get_time"}}, "'expected_calls'"),
        ({"tools": TOOLS, "expected_calls": [{"name": "nope", "arguments": {}}]}, "expected_calls[0]"),
        ({"tools": TOOLS, "expected_calls": [{"name": "get_time", "arguments": [1]}]}, "expected_calls[0]"),
        ({"tools": "not json", "expected_calls": []}, "'tools'"),
    ],
)
def test_bad_env_fields_are_errors(env, fields, needle):
    s = env.score_record(call("get_time", {}), fields)
    assert s.reward == 0.0 and s.error is not None and needle in s.error


def test_tools_and_expected_calls_may_be_json_strings(env):
    fields = {"tools": json.dumps(TOOLS), "expected_calls": json.dumps([UTC])}
    s = env.score_record(call("get_time", {"tz": "UTC"}), fields)
    assert s.reward == 1.0


def test_canonical_is_type_strict():
    assert canonical({"a": [1, 2]}) == canonical({"a": [1.0, 2]})
    assert canonical(1) != canonical(True) and canonical(0) != canonical(False)
    assert canonical(3) != canonical("3") and canonical([1, 2]) != canonical([2, 1])
    assert canonical(None) != canonical(0) and canonical({}) != canonical([])


def test_parse_calls_reports_why():
    calls, why = parse_calls("hi " + call("a", {"x": 1}) + " bye")
    assert [c.name for c in calls] == ["a"] and why is None
    assert parse_calls("<tool_call>{}")[1] is not None
