"""BFCL (Berkeley Function Calling Leaderboard) entries -> `tool_call` records.

A BFCL entry is `{"id", "question": [[messages]], "function": [schemas]}`; its answer, in
`possible_answer/<same file name>`, is `{"id", "ground_truth": [{fname: {arg: [acceptable
values]}}]}`, where "" (or null, the parameter's default) among the values means the
argument may be left out. We turn that
into VERIFIER_CONTRACT.md's form: `{"name", "options": {arg: [values]}, "optional": [args]}`,
and set `"string_match": "normalized"` (BFCL's string rule), so a converted record scores as
the leaderboard's AST checker scores it. Schemas use BFCL's type names (dict, float, tuple,
any), which become JSON schema ones (object, number, array, no type).

Nested dict answers (`{arg: [{"k": [v1, v2], "j": ["", v3]}]}`, per-key options) are expanded
into every concrete dict (at most MAX_EXPANSIONS per argument). Not converted (reported as bad
rows): multi-turn entries, Java / JavaScript entries (their parameter types are not JSON
schema types), entries without an answer outside the irrelevance categories.
Enums are not enforced by BFCL's checker, so they move from the schema into the parameter's
description ("One of: ...") instead of failing calls that BFCL accepts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from nemo_rlvr.data.readers import RecordProblem

TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array", "any": None, "string": "string",
            "integer": "integer", "number": "number", "boolean": "boolean", "array": "array",
            "object": "object", "null": "null"}
MAX_EXPANSIONS = 256
_ABSENT = object()


def json_schema(schema: Any, where: str) -> Any:
    """A BFCL parameter schema as a JSON schema (types renamed, recursively)."""
    if isinstance(schema, list):
        return [json_schema(s, where) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "type" and isinstance(v, str):
            if v not in TYPE_MAP:
                raise RecordProblem(f"{where} has type {v!r}, which is not a JSON schema type (BFCL's Java and "
                                    f"JavaScript entries are not supported); expected one of "
                                    f"{', '.join(sorted(TYPE_MAP))}")
            if TYPE_MAP[v] is not None:
                out[k] = TYPE_MAP[v]
        elif k == "properties" and isinstance(v, Mapping):
            out[k] = {name: json_schema(s, f"{where}.{name}") for name, s in v.items()}
        elif k in ("items", "additionalProperties", "anyOf", "oneOf"):
            out[k] = json_schema(v, where)
        elif k != "enum":
            out[k] = v
    if isinstance(schema.get("enum"), list):  # BFCL's checker does not enforce enums: say them in words
        listed = ", ".join(json.dumps(e, ensure_ascii=False) for e in schema["enum"])
        out["description"] = f"{out.get('description', '')} One of: {listed}.".strip()
    return out


def _expand(value: Any, where: str) -> list[Any]:
    """Every concrete value a BFCL answer value stands for (nested dicts hold per-key options)."""
    if isinstance(value, Mapping):
        keys = list(value)
        choices = []
        for k in keys:
            opts = value[k] if isinstance(value[k], list) else [value[k]]
            concrete = [c for o in opts if o != "" for c in _expand(o, where)]
            choices.append(concrete + ([_ABSENT] if "" in opts else []))
        out = [{k: v for k, v in zip(keys, combo) if v is not _ABSENT} for combo in itertools.product(*choices)]
    elif isinstance(value, list):
        out = [list(combo) for combo in itertools.product(*(_expand(v, where) for v in value))]
    else:
        return [value]
    if len(out) > MAX_EXPANSIONS:
        raise RecordProblem(f"{where}: the nested answer stands for {len(out)} values; expected at most "
                            f"{MAX_EXPANSIONS}")
    return out


def expected_call(entry: Any, i: int, required: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One BFCL ground-truth call {fname: {arg: [values]}} in our options form. `required` (function
    name -> its required parameters): as in BFCL's checker, a required parameter is never optional,
    even where its answer lists ""."""
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise RecordProblem(f"ground_truth[{i}] is not {{function_name: {{arg: [acceptable values]}}}}")
    (name, args), = entry.items()
    if not isinstance(args, Mapping) or not all(isinstance(v, list) for v in args.values()):
        raise RecordProblem(f"ground_truth[{i}] ({name}) must map every argument to a list of acceptable values")
    options, optional = {}, []
    for arg, values in args.items():
        if ("" in values or None in values) and arg not in (required or {}).get(name, ()):
            optional.append(arg)  # null: the parameter's default, i.e. leaving it out
        options[arg] = [c for v in values if v != "" and v is not None
                        for c in _expand(v, f"ground_truth[{i}].{name}.{arg}")]
    return {"name": name, "options": options, "optional": optional}


def bfcl_record(entry: Any, answer: Any | None, *, irrelevance: bool) -> dict[str, Any]:
    """Our tool_call record for a BFCL entry and its possible answer (None: no call expected)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("question"), list) or not entry["question"]:
        raise RecordProblem("field 'question' is missing; expected a list of turns, each a list of messages")
    if len(entry["question"]) != 1:
        raise RecordProblem(f"field 'question' has {len(entry['question'])} turns; only single-turn entries are "
                            f"supported (multi-turn BFCL runs a stateful tool backend)")
    messages = entry["question"][0]
    if not (isinstance(messages, list) and messages
            and all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages)):
        raise RecordProblem("field 'question[0]' is not a list of messages {\"role\", \"content\"}")
    functions = entry.get("function")
    if functions is None and irrelevance:
        functions = []
    if not isinstance(functions, list) or not (functions or irrelevance):
        raise RecordProblem("field 'function' is missing; expected a list of function schemas")
    tools = []
    for j, fn in enumerate(functions):
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise RecordProblem(f"function[{j}] has no string 'name'")
        params = json_schema(fn.get("parameters", {"type": "object"}), f"function[{j}] ({fn['name']})")
        tools.append({"type": "function", "function": {**fn, "parameters": params}})
    if answer is None:
        if not irrelevance:
            raise RecordProblem("no possible answer for this entry; give the possible_answer file with --answers")
        expected: list[dict[str, Any]] = []
    else:
        truth = answer.get("ground_truth") if isinstance(answer, Mapping) else None
        if not isinstance(truth, list):
            raise RecordProblem("its possible answer has no 'ground_truth' list")
        required = {t["function"]["name"]: t["function"]["parameters"].get("required", []) for t in tools
                    if isinstance(t["function"].get("parameters"), Mapping)}
        expected = [expected_call(c, i, required) for i, c in enumerate(truth)]
    prompt: Any = [{"role": m.get("role", "user"), "content": m["content"]} for m in messages]
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        prompt = prompt[0]["content"]
    return {"id": entry.get("id"), "prompt": prompt, "env": "tool_call", "tools": tools,
            "expected_calls": expected, "string_match": "normalized"}
