"""Built-in `tool_call` environment: the response's tool calls must be exactly the expected ones.

Fields: `tools` (OpenAI function schemas `{"type": "function", "function": {"name",
"parameters"}}`, or the bare `{"name", "parameters"}` form) and `expected_calls` (a list
of `{"name", "arguments"}`; `arguments` may also be a JSON-encoded string there, and the
OpenAI `{"function": {...}}` wrapper is accepted). Rules (VERIFIER_CONTRACT.md, "tool_call"):

- A call is exactly `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`: one JSON
  object (whitespace around it allowed) with exactly those two keys, a string name and an
  object of arguments. Anything else is a format failure and scores 0: key `parameters`,
  extra keys, an unclosed or nested tag, a tag variant (`<tool_call name=..>`,
  `<TOOL_CALL>`), text or a markdown fence inside the tag, invalid JSON (NaN, duplicate
  keys), or a call-shaped JSON object outside the tags (bare JSON, a ```json block).
- Calls compare as a multiset: order is free, a duplicate call is an extra call.
- Arguments must equal the expected ones exactly, compared as JSON values: strings,
  numbers, booleans, null, arrays (order kept) and objects (key order free) never match
  across types, so 3 != "3" and true != 1. A parameter the schema types `number` takes
  3 and 3.0 alike; one typed `integer` refuses 3.0 (a schema violation). Extra or missing
  arguments -> 0.
- Every call must name a tool in `tools` and satisfy its JSON schema (jsonschema).
- `expected_calls: []`: plain text scores 1; any call, well-formed or not, scores 0.
- Several acceptable answers (BFCL's form): an expected call may give `"options": {"arg":
  [v1, v2]}` instead of `"arguments"`; the call's value must equal one of them (same
  exactness). Arguments in `"optional": [...]` may be left out; any other argument outside
  `options` is extra. Each call pairs with a different expected call (a bipartite matching).
- `"string_match": "normalized"` (opt-in per record, for data converted from BFCL): strings,
  also inside arrays and objects, have spaces and ,./-_*^ removed, are lower-cased and ' becomes "
  on both sides before they compare; types must still match.

Components: `format_ok`, `schema_ok`, `names_match` (same multiset of tool names),
`args_match` (same multiset of calls). Reward 1 iff all four hold.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nemo_rlvr.envs.base import FieldSpec, Score, register_env

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_TAG = re.compile(r"<\s*/?\s*tool_call\w*[^<>]*>?", re.IGNORECASE)
_CALL_KEYS = {"name", "arguments"}
_ZERO = {"format_ok": 0.0, "schema_ok": 0.0, "names_match": 0.0, "args_match": 0.0}


class FieldError(ValueError):
    """A bad env field; the message names the field and the fix."""


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]


# ---------------------------------------------------------------- strict JSON


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def loads_strict(text: str) -> Any:
    """`json.loads` that refuses NaN/Infinity and duplicate object keys."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def canonical(value: Any) -> Any:
    """A hashable form of a JSON value; equal iff the JSON values are equal with types."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("number", value)  # 3 == 3.0 and hash alike: JSON has one number type
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    if isinstance(value, list):
        return ("array", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    raise TypeError(f"not a JSON value: {type(value).__name__}")


# ---------------------------------------------------------------- response parsing


def parse_calls(response: str) -> tuple[list[Call], str | None]:
    """The calls in a response, and why its format is wrong (None when it is right)."""
    calls: list[Call] = []
    pos, outside = 0, []
    tags = list(_TAG.finditer(response))
    for k, tag in enumerate(tags):
        if tag.group(0) not in (OPEN, CLOSE):
            return calls, f"malformed tag {tag.group(0)[:40]!r}"
        expect = OPEN if k % 2 == 0 else CLOSE
        if tag.group(0) != expect:
            return calls, f"{tag.group(0)} where {expect} was expected (nested, stray or unclosed tag)"
        if expect == OPEN:
            outside.append(response[pos : tag.start()])
        else:
            call, why = _parse_call(response[tags[k - 1].end() : tag.start()])
            if call is None:
                return calls, why
            calls.append(call)
        pos = tag.end()
    if len(tags) % 2:
        return calls, "unclosed <tool_call>"
    outside.append(response[pos:])
    if any(_has_bare_call(text) for text in outside):
        return calls, "a call-shaped JSON object outside <tool_call> tags"
    return calls, None


def _parse_call(body: str) -> tuple[Call | None, str | None]:
    try:
        obj = loads_strict(body.strip())
    except ValueError as e:
        return None, f"the text inside <tool_call> is not one JSON object ({e})"
    if not isinstance(obj, dict) or set(obj) != _CALL_KEYS:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        return None, f'a call must be {{"name": ..., "arguments": {{...}}}}, got keys {keys}'
    if not isinstance(obj["name"], str) or not isinstance(obj["arguments"], dict):
        return None, "a call needs a string 'name' and an object 'arguments'"
    return Call(obj["name"], obj["arguments"]), None


def _has_bare_call(text: str) -> bool:
    """Whether `text` holds a JSON object that looks like a call ({"name", "arguments"|"parameters"})."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{\s*\"", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and "name" in obj and ("arguments" in obj or "parameters" in obj):
            return True
    return False


# ---------------------------------------------------------------- env fields


def _as_json(value: Any, field: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise FieldError(f"env field {field!r} is a string that is not valid JSON; give a JSON "
                             f"list (or a JSON-encoded list)") from None
    return value


def load_tools(value: Any) -> dict[str, Any]:
    """tool name -> a jsonschema validator for its parameters."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    tools = _as_json(value, "tools")
    if not isinstance(tools, list):
        raise FieldError(f"env field 'tools' must be a list of function schemas "
                         f'[{{"type": "function", "function": {{"name", "parameters"}}}}], '
                         f"got {type(tools).__name__}")
    out: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise FieldError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': str, "
                             f"'parameters': {{json schema}}}}}} or {{'name', 'parameters'}}")
        schema = fn.get("parameters", {"type": "object"})
        if not isinstance(schema, dict):
            raise FieldError(f"tools[{i}].parameters must be a JSON schema object")
        if fn["name"] in out:
            raise FieldError(f"tools[{i}]: tool name {fn['name']!r} appears twice; names must be unique")
        cls = validator_for(schema)
        try:
            cls.check_schema(schema)
        except SchemaError as e:
            raise FieldError(f"tools[{i}].parameters is not a valid JSON schema: {e.message}") from None
        out[fn["name"]] = _strict_integers(cls)(schema)
    return out


def _strict_integers(cls: type) -> type:
    """The validator class with `integer` meaning a JSON integer as written: 5.0 is not one
    (jsonschema's drafts accept any number with a zero fraction; VERIFIER_CONTRACT.md, "Numbers").
    `number` still takes 5 and 5.0 alike."""
    from jsonschema.validators import extend

    checker = cls.TYPE_CHECKER.redefine("integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return extend(cls, type_checker=checker)


@dataclass(frozen=True)
class ExpectedCall:
    """An expected call: the acceptable values of each argument (canonical forms) and the
    arguments that may be left out. `{"arguments": {...}}` is one option per argument, none optional."""

    name: str
    options: dict[str, list[Any]]
    optional: frozenset[str]


def _check_option(tool: Any, arg: str, value: Any, where: str, name: str) -> None:
    """An option must fit the tool's schema for its argument (other arguments aside)."""
    errors = [e for e in tool.iter_errors({arg: value}) if list(e.path)[:1] == [arg]]
    if errors:
        raise FieldError(f"{where} option {value!r:.60} of {arg!r} does not satisfy the schema of {name!r}: "
                         f"{errors[0].message}; fix the expected call or the schema")


def _expected_options(fn: Mapping[str, Any], i: int, tool: Any) -> ExpectedCall:
    where = f"expected_calls[{i}]"
    options, optional = fn.get("options"), fn.get("optional", [])
    if not isinstance(options, dict) or not all(isinstance(v, list) for v in options.values()):
        raise FieldError(f'{where}.options must be an object {{"arg": [acceptable values, ...]}}')
    if not isinstance(optional, list) or not all(isinstance(a, str) for a in optional):
        raise FieldError(f"{where}.optional must be a list of argument names")
    for arg, values in options.items():
        if not values and arg not in optional:
            raise FieldError(f"{where}.options[{arg!r}] is empty and {arg!r} is not optional: no call can match")
    for arg, values in options.items():
        for v in values:
            _check_option(tool, arg, v, where, fn["name"])
    return ExpectedCall(fn["name"], {a: list(v) for a, v in options.items()}, frozenset(optional))


def load_expected(value: Any, tools: Mapping[str, Any]) -> list[ExpectedCall]:
    expected = _as_json(value, "expected_calls")
    if not isinstance(expected, list):
        raise FieldError('env field \'expected_calls\' must be a list of {"name", "arguments"} (or {"name", '
                         '"options", "optional"}) objects ([] when no call is expected)')
    calls = []
    for i, c in enumerate(expected):
        fn = c.get("function", c) if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise FieldError(f'expected_calls[{i}] must be {{"name": str, "arguments": {{...}}}} or '
                             f'{{"name": str, "options": {{"arg": [values]}}, "optional": [args]}}')
        if fn["name"] not in tools:
            raise FieldError(f"expected_calls[{i}] calls {fn['name']!r}, which is not in 'tools'; "
                             f"add its schema to 'tools'")
        if "options" in fn:
            if "arguments" in fn:
                raise FieldError(f"expected_calls[{i}] has both 'arguments' and 'options'; give one of them")
            calls.append(_expected_options(fn, i, tools[fn["name"]]))
            continue
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = loads_strict(args)
            except ValueError:
                args = None
        if not isinstance(args, dict):
            raise FieldError(f"expected_calls[{i}].arguments must be a JSON object")
        err = next(iter(tools[fn["name"]].iter_errors(args)), None)
        if err is not None:
            raise FieldError(f"expected_calls[{i}].arguments do not satisfy the schema of "
                             f"{fn['name']!r}: {err.message}; fix the expected call or the schema")
        calls.append(ExpectedCall(fn["name"], {a: [v] for a, v in args.items()}, frozenset()))
    return calls


_BFCL_STRIP = re.compile(r"[ ,./\-_*^]")


def normalize_strings(value: Any) -> Any:
    """BFCL's string rule on every string in a JSON value: spaces and ,./-_*^ removed,
    lower-cased, ' -> ". Object keys are left alone."""
    if isinstance(value, str):
        return _BFCL_STRIP.sub("", value).lower().replace("'", '"')
    if isinstance(value, list):
        return [normalize_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize_strings(v) for k, v in value.items()}
    return value


def _key(value: Any, normalized: bool) -> Any:
    return canonical(normalize_strings(value) if normalized else value)


def call_matches(call: Call, exp: ExpectedCall, *, normalized: bool = False) -> bool:
    """Whether `call` is one that `exp` accepts (VERIFIER_CONTRACT.md "tool_call")."""
    if call.name != exp.name or not set(call.arguments) <= set(exp.options):
        return False
    if any(a not in call.arguments for a in exp.options if a not in exp.optional):
        return False
    return all(_key(v, normalized) in {_key(o, normalized) for o in exp.options[a]}
               for a, v in call.arguments.items())


def calls_match(calls: Sequence[Call], expected: Sequence[ExpectedCall], *, normalized: bool) -> bool:
    """A one-to-one pairing of calls and expected calls exists (a multiset match; order free)."""
    if len(calls) != len(expected):
        return False
    fits = [[j for j, e in enumerate(expected) if call_matches(c, e, normalized=normalized)] for c in calls]
    owner: dict[int, int] = {}   # expected index -> call index (Kuhn's augmenting paths)

    def assign(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(assign(i, set()) for i in range(len(calls)))


STRING_MODES = ("exact", "normalized")


def string_mode(fields: Mapping[str, Any]) -> str:
    """The record's `string_match` ("exact" when absent or null)."""
    mode = fields.get("string_match")
    if mode is None:
        return "exact"
    if mode not in STRING_MODES:
        raise FieldError(f"env field 'string_match'={mode!r:.40} is not allowed; expected \"exact\" (the "
                         f"default) or \"normalized\" (BFCL's string rule)")
    return mode


# ---------------------------------------------------------------- environment


@register_env("tool_call")
class ToolCallEnv:
    """Reward 1 iff the well-formed calls equal `expected_calls` as a multiset (module docstring)."""

    name = "tool_call"
    fields = {"tools": FieldSpec((list, str), 'a list of function schemas [{"type": "function", "function": '
                                 '{"name", "parameters"}}] (or that list JSON-encoded)'),
              "expected_calls": FieldSpec((list, str), 'a list of {"name", "arguments"} or {"name", "options", '
                                          '"optional"} objects, [] when no call is expected'),
              "string_match": FieldSpec((str,), '"exact" or "normalized"', required=False)}

    @staticmethod
    def check_fields(fields: Mapping[str, Any]) -> str | None:
        try:
            load_expected(fields["expected_calls"], load_tools(fields["tools"]))
            string_mode(fields)
        except FieldError as e:
            return str(e)
        return None

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        for key in ("tools", "expected_calls"):
            if key not in fields:
                return Score(0.0, dict(_ZERO), f"missing env field {key!r}: tool_call records need "
                             f"'tools' (function schemas) and 'expected_calls' (list, [] for none)")
        try:
            tools = load_tools(fields["tools"])
            expected = load_expected(fields["expected_calls"], tools)
            normalized = string_mode(fields) == "normalized"
        except FieldError as e:
            return Score(0.0, dict(_ZERO), str(e))
        if not isinstance(response, str):
            return Score(0.0, dict(_ZERO), f"response must be a string, got {type(response).__name__}")

        # With expected_calls == [] any call scores 0 through these same checks: a well-formed
        # call is an extra call (names differ), any other attempt is a format failure.
        calls, format_error = parse_calls(response)
        format_ok = format_error is None
        schema_ok = all(c.name in tools and tools[c.name].is_valid(c.arguments) for c in calls)
        names_match = Counter(c.name for c in calls) == Counter(c.name for c in expected)
        args_match = format_ok and calls_match(calls, expected, normalized=normalized)
        comps = {"format_ok": float(format_ok), "schema_ok": float(schema_ok),
                 "names_match": float(names_match), "args_match": float(args_match)}
        return Score(float(all(comps.values())), comps)
