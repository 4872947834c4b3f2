"""Built-in `instruction` environment: IFEval-style typed checks on the response text.

Field `instructions`: a list of `{"type": NAME, ...params}`. The types and their exact
rules are INSTRUCTION_TYPES.md; each check below is a line-by-line transcription of its
table row. Reward 1.0 iff every instruction holds (an empty list holds vacuously);
component `fraction` = the share that hold, plus one 0/1 component per instruction named
by its type (`min_words`, a second `min_words` is `min_words#2`).

An unknown type, a missing parameter, or a parameter of the wrong JSON type scores 0 with
`error` naming the instruction and the fix; it is never ignored. Parameters are strictly
typed: an int parameter must be a JSON integer (not 3.0, not true), a str a JSON string,
a list of str a JSON array of strings. Extra keys next to the parameters are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from nemo_rlvr.envs.base import FieldSpec, Score, register_env

_BULLET = re.compile(r"^\s*[*-]\s+\S")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_TITLE = re.compile(r"<<[^\n<>]+>>")
_RELATIONS = {"at_least": lambda a, b: a >= b, "at_most": lambda a, b: a <= b, "exactly": lambda a, b: a == b}


def word_count(r: str) -> int:
    """Words are maximal runs of non-whitespace (`len(R.split())`)."""
    return len(r.split())


def whole_word(phrase: str) -> re.Pattern[str]:
    """Case-insensitive whole-word pattern: (?<!\\w) phrase (?!\\w), Unicode \\w."""
    return re.compile(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", re.IGNORECASE)


def count_matches(r: str, keyword: str) -> int:
    """Non-overlapping whole-word matches of `keyword` in `r`."""
    return len(whole_word(keyword).findall(r))


def is_json_response(r: str) -> bool:
    """`json_format`: the stripped response is one JSON value, or one ``` / ```json fenced block of it."""
    s = r.strip()
    if s.startswith("```"):
        lines = s.split("\n")
        first, last = lines[0].rstrip(), lines[-1].rstrip()
        if len(lines) < 2 or first.lower() not in ("```", "```json") or last != "```":
            return False
        s = "\n".join(lines[1:-1])
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def count_bullets(r: str) -> int:
    """Lines matching ^\\s*[*-]\\s+\\S, checked one line at a time (a match never spans lines)."""
    return sum(1 for line in r.split("\n") if _BULLET.match(line))


def count_paragraphs(r: str) -> int:
    """Non-empty pieces of R.strip() split on blank / whitespace-only lines."""
    return sum(1 for piece in _PARAGRAPH_BREAK.split(r.strip()) if piece.strip())


# type -> (params {name: kind}, check(response, params) -> bool)
Check = Callable[[str, Mapping[str, Any]], bool]
CHECKS: dict[str, tuple[dict[str, str], Check]] = {
    "min_words": ({"n": "int"}, lambda r, p: word_count(r) >= p["n"]),
    "max_words": ({"n": "int"}, lambda r, p: word_count(r) <= p["n"]),
    "no_commas": ({}, lambda r, p: "," not in r),
    "all_lowercase": ({}, lambda r, p: r == r.lower()),
    "all_uppercase": ({}, lambda r, p: r == r.upper()),
    "include_keywords": ({"keywords": "list[str]"},
                         lambda r, p: all(whole_word(k).search(r) for k in p["keywords"])),
    "forbidden_words": ({"words": "list[str]"},
                        lambda r, p: not any(whole_word(w).search(r) for w in p["words"])),
    "keyword_frequency": ({"keyword": "str", "relation": "relation", "n": "int"},
                          lambda r, p: _RELATIONS[p["relation"]](count_matches(r, p["keyword"]), p["n"])),
    "json_format": ({}, lambda r, p: is_json_response(r)),
    "num_bullets": ({"n": "int"}, lambda r, p: count_bullets(r) == p["n"]),
    "starts_with": ({"phrase": "str"}, lambda r, p: r.lstrip().startswith(p["phrase"])),
    "ends_with": ({"phrase": "str"}, lambda r, p: r.rstrip().endswith(p["phrase"])),
    "num_paragraphs": ({"n": "int"}, lambda r, p: count_paragraphs(r) == p["n"]),
    "wrapped_in_quotes": ({}, lambda r, p: len(s := r.strip()) >= 2 and s[0] == '"' and s[-1] == '"'),
    "has_title": ({}, lambda r, p: _TITLE.search(r) is not None),
}


def _param_error(kind: str, value: Any) -> str | None:
    """Why `value` is not of parameter kind `kind`, or None."""
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be a JSON integer"
    if kind == "str":
        return None if isinstance(value, str) else "must be a JSON string"
    if kind == "list[str]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "must be a JSON array of strings"
    if kind == "relation":
        return None if value in _RELATIONS else f"must be one of {', '.join(map(repr, _RELATIONS))}"
    raise AssertionError(kind)


def check_instruction(i: int, inst: Any) -> str | None:
    """Why instructions[i] cannot be checked (unknown type, missing/ill-typed parameter), or None."""
    if not isinstance(inst, dict):
        return f"instructions[{i}] must be an object {{\"type\": NAME, ...params}}, got {type(inst).__name__}"
    kind = inst.get("type")
    if not isinstance(kind, str) or kind not in CHECKS:
        return (f"instructions[{i}].type={kind!r} is not a known instruction type; use one of "
                f"{', '.join(sorted(CHECKS))} (INSTRUCTION_TYPES.md)")
    for name, param_kind in CHECKS[kind][0].items():
        if name not in inst:
            return f"instructions[{i}] ({kind}) is missing parameter {name!r}; add it next to 'type'"
        why = _param_error(param_kind, inst[name])
        if why:
            return f"instructions[{i}] ({kind}) parameter {name!r}={inst[name]!r:.60} {why}"
    return None


@register_env("instruction")
class InstructionEnv:
    """Reward 1 iff every instruction in `instructions` holds for the response."""

    name = "instruction"
    fields = {"instructions": FieldSpec((list, str), 'a list of {"type": NAME, ...params} objects '
                                        "(INSTRUCTION_TYPES.md), or that list JSON-encoded")}

    @staticmethod
    def check_fields(fields: Mapping[str, Any]) -> str | None:
        insts = fields["instructions"]
        if isinstance(insts, str):
            try:
                insts = json.loads(insts)
            except ValueError:
                return "field 'instructions' is a string that is not valid JSON; expected a list of instructions"
        if not isinstance(insts, list):
            return f"field 'instructions' is a JSON {type(insts).__name__}; expected a list of instructions"
        return next(filter(None, (check_instruction(i, inst) for i, inst in enumerate(insts))), None)

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        if "instructions" not in fields:
            return Score(0.0, {"fraction": 0.0}, "missing env field 'instructions': give a list of "
                         '{"type": NAME, ...params} objects (INSTRUCTION_TYPES.md)')
        insts = fields["instructions"]
        if isinstance(insts, str):  # a JSON-encoded list, as some datasets store it
            try:
                insts = json.loads(insts)
            except ValueError:
                pass
        if not isinstance(insts, list):
            return Score(0.0, {"fraction": 0.0}, f"env field 'instructions' must be a list of "
                         f"{{\"type\": NAME, ...params}} objects, got {type(insts).__name__}")
        for i, inst in enumerate(insts):
            why = check_instruction(i, inst)
            if why:
                return Score(0.0, {"fraction": 0.0}, why)
        if not isinstance(response, str):
            return Score(0.0, {"fraction": 0.0}, f"response must be a string, got {type(response).__name__}")
        comps: dict[str, float] = {}
        held = 0
        for inst in insts:
            ok = bool(CHECKS[inst["type"]][1](response, inst))
            held += ok
            key, k = inst["type"], 1
            while key in comps or key == "fraction":
                k += 1
                key = f"{inst['type']}#{k}"
            comps[key] = float(ok)
        fraction = held / len(insts) if insts else 1.0
        return Score(float(held == len(insts)), {"fraction": fraction, **comps})

