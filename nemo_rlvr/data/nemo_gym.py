"""NeMo Gym / Nemotron RL rows -> our records (`nemo-rlvr data prepare --from nemo_gym`, and
`data.format=nemo_gym|auto` on load).

A NeMo Gym row holds the prompt in `responses_create_params.input` (OpenAI Responses
messages, or one string) with optional `responses_create_params.tools`, and the verifier's
fields at the top level. Which of our environments a row maps to is decided by those fields:

    expected_answer (+ question)            -> math         answer
    verifier_metadata.unit_tests (asserts)   -> code         tests
    ground_truth (list of calls)            -> tool_call    expected_calls, tools
    instruction_id_list + kwargs (IFEval)    -> instruction  instructions (mapped, below)

Messages keep their roles (`developer` becomes `system`); content parts
`{"type": "input_text", "text"}` are joined. A single user message becomes a plain string
prompt, so it works without a chat template. Tools in the Responses form
`{"type": "function", "name", "parameters"}` become OpenAI chat tools.

Not converted (the row is reported as bad, with the reason): code rows whose unit tests are
stdin/stdout pairs (`{"inputs", "outputs"}`; the code env runs Python tests), IFEval
instructions without an exact counterpart in INSTRUCTION_TYPES.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemo_rlvr.data.readers import RecordProblem
from nemo_rlvr.envs.registry import json_type

SUPPORTED_FIELDS = ("expected_answer (math), verifier_metadata.unit_tests (code), ground_truth (tool calls), "
                    "instruction_id_list + kwargs (instruction following)")


def _relation(kw: Mapping[str, Any]) -> str:
    rel = kw.get("relation")
    if rel not in ("at least", "less than"):
        raise RecordProblem(f"kwargs relation={rel!r}; expected 'at least' or 'less than'")
    return rel


def _words(kw: Mapping[str, Any]) -> dict[str, Any]:
    n = kw["num_words"]
    return {"type": "min_words", "n": n} if _relation(kw) == "at least" else {"type": "max_words", "n": n - 1}


def _frequency(kw: Mapping[str, Any]) -> dict[str, Any]:
    n = kw["frequency"]
    rel = ("at_least", n) if _relation(kw) == "at least" else ("at_most", n - 1)
    return {"type": "keyword_frequency", "keyword": kw["keyword"], "relation": rel[0], "n": rel[1]}


# IFEval instruction id -> our instruction (INSTRUCTION_TYPES.md); only exact counterparts.
# "less than N" is "at most N - 1" on integer counts.
IFEVAL_TYPES = {
    "length_constraints:number_words": _words,
    "punctuation:no_comma": lambda kw: {"type": "no_commas"},
    "change_case:english_lowercase": lambda kw: {"type": "all_lowercase"},
    "change_case:english_capital": lambda kw: {"type": "all_uppercase"},
    "keywords:existence": lambda kw: {"type": "include_keywords", "keywords": kw["keywords"]},
    "keywords:forbidden_words": lambda kw: {"type": "forbidden_words", "words": kw["forbidden_words"]},
    "keywords:frequency": _frequency,
    "detectable_format:json_format": lambda kw: {"type": "json_format"},
    "detectable_format:number_bullet_lists": lambda kw: {"type": "num_bullets", "n": kw["num_bullets"]},
    "detectable_format:title": lambda kw: {"type": "has_title"},
    "startend:end_checker": lambda kw: {"type": "ends_with", "phrase": kw["end_phrase"]},
    "startend:quotation": lambda kw: {"type": "wrapped_in_quotes"},
}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RecordProblem(f"{where}.content is a JSON {json_type(content)}; expected a string or a list of "
                        f'{{"type": "input_text", "text": str}} parts')


def _prompt(params: Mapping[str, Any]) -> str | list[dict[str, str]]:
    inp = params.get("input")
    if isinstance(inp, str) and inp.strip():
        return inp
    if not isinstance(inp, list) or not inp:
        raise RecordProblem(f"field 'responses_create_params.input' is a JSON {json_type(inp)}; expected a "
                            f"non-empty list of messages {{\"role\", \"content\"}} (or a string)")
    messages = []
    for i, m in enumerate(inp):
        where = f"responses_create_params.input[{i}]"
        if not isinstance(m, Mapping) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise RecordProblem(f"{where} is not a message; expected {{\"role\": system|developer|user|"
                                f"assistant, \"content\": ...}}")
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _text(m.get("content"), where)})
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return messages


def _tools(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = params.get("tools") or []
    if not isinstance(tools, list):
        raise RecordProblem(f"field 'responses_create_params.tools' is a JSON {json_type(tools)}; expected a list")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping) or not isinstance(t.get("function", t).get("name"), str):
            raise RecordProblem(f"responses_create_params.tools[{i}] is not a function tool; expected "
                                f'{{"type": "function", "name", "parameters"}}')
        fn = t.get("function") or {k: t[k] for k in ("name", "description", "parameters") if k in t}
        out.append({"type": "function", "function": dict(fn)})
    return out


def _instructions(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    ids, kwargs = row["instruction_id_list"], row.get("kwargs") or [{} for _ in row["instruction_id_list"]]
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
        raise RecordProblem("fields 'instruction_id_list' and 'kwargs' must be lists of the same length")
    out = []
    for i, (iid, kw) in enumerate(zip(ids, kwargs)):
        if iid not in IFEVAL_TYPES:
            raise RecordProblem(f"instruction_id_list[{i}]={iid!r} has no exact counterpart in the instruction "
                                f"env; expected one of {', '.join(sorted(IFEVAL_TYPES))}")
        kw = {k: v for k, v in (kw or {}).items() if v is not None}
        try:
            out.append(IFEVAL_TYPES[iid](kw))
        except KeyError as e:
            raise RecordProblem(f"kwargs[{i}] of {iid!r} lacks {e.args[0]!r}") from None
    return out


def nemo_gym_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """Our record for one NeMo Gym row; RecordProblem naming the field when it cannot be mapped."""
    params = row.get("responses_create_params")
    if not isinstance(params, Mapping):
        raise RecordProblem(f"field 'responses_create_params' is a JSON {json_type(params)}; expected an "
                            f"object with 'input' (NeMo Gym row)")
    rec: dict[str, Any] = {"prompt": _prompt(params)}
    if "id" in row:
        rec["id"] = row["id"]
    tools = _tools(params)
    meta = row.get("verifier_metadata")
    if "instruction_id_list" in row:
        rec |= {"env": "instruction", "instructions": _instructions(row)}
    elif isinstance(meta, Mapping) and "unit_tests" in meta:
        tests = meta["unit_tests"]
        if not (isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests)):
            raise RecordProblem("field 'verifier_metadata.unit_tests' is not a list of Python test strings "
                                "(stdin/stdout pairs {inputs, outputs} are not supported: the code env runs "
                                "Python asserts); expected a non-empty list of strings")
        rec |= {"env": "code", "tests": tests}
        if isinstance(meta.get("fn_name"), str):
            rec["entry_point"] = meta["fn_name"]
    elif "ground_truth" in row:
        rec |= {"env": "tool_call", "tools": tools, "expected_calls": row["ground_truth"]}
    elif "expected_answer" in row:
        rec |= {"env": "math", "answer": row["expected_answer"]}
    else:
        raise RecordProblem(f"NeMo Gym row with none of the verifier fields; expected one of {SUPPORTED_FIELDS}")
    if tools and rec["env"] != "tool_call":
        rec["tools"] = tools
    return rec
