"""`nemo-rlvr data prepare`: each converter on fixture rows written here, its bad-row messages,
the CLI's counts and exit status, and NeMo Gym rows read directly as data.source."""

from __future__ import annotations

import json

import pytest

from nemo_rlvr.cli import main
from nemo_rlvr.config import DataConfig, EnvConfig
from nemo_rlvr.data.convert import MATH_INSTRUCTION, convert_rows
from nemo_rlvr.data.dataset import load_records
from nemo_rlvr.envs.registry import get_env


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def convert(tmp_path, fmt, rows, name="in.jsonl", **kw):
    return convert_rows(fmt, write(tmp_path / name, rows), **kw)


def test_gsm8k(tmp_path):
    recs, rep = convert(tmp_path, "gsm8k", [
        {"question": "Tom has 3 apples...", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"},
        {"question": "no answer line", "answer": "7"},
        {"question": "", "answer": "#### 3"}])
    assert recs == [{"id": "in-0", "prompt": "Tom has 3 apples..." + MATH_INSTRUCTION, "env": "math",
                     "answer": "1007"}]
    assert rep.problems == [f"{tmp_path}/in.jsonl:2: field 'answer' has no '#### <number>' line; expected "
                            f"GSM8K's solution format",
                            f"{tmp_path}/in.jsonl:3: field 'question' is missing or empty; expected a "
                            f"non-empty string"]


def test_math_and_deepscaler(tmp_path):
    recs, rep = convert(tmp_path, "math", [
        {"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
        {"problem": "2+2?", "answer": "4", "solution": "\\boxed{5}"},          # DeepScaleR: answer wins
        {"problem": "x?", "solution": "no box here"}], instruction="")
    assert [(r["prompt"], r["answer"]) for r in recs] == [("Half of 1?", "\\frac{1}{2}"), ("2+2?", "4")]
    assert rep.problems == [f"{tmp_path}/in.jsonl:3: no 'answer' field and no closed \\boxed{{...}} in "
                            f"'solution'; expected one of them"]


def test_humaneval_and_mbpp_score_their_own_solutions(tmp_path):
    he = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n",
          "canonical_solution": "    return a + b\n", "entry_point": "add",
          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    recs, rep = convert(tmp_path, "humaneval", [he, {"task_id": "HumanEval/1", "prompt": "def f(): pass"}])
    assert recs[0]["id"] == "HumanEval/0" and recs[0]["tests"] == [he["test"]] and recs[0]["entry_point"] == "add"
    assert "```python\ndef add(a, b):" in recs[0]["prompt"]
    assert rep.problems == [f"{tmp_path}/in.jsonl:2: field 'test' is missing or empty; expected a non-empty string"]
    mb = {"task_id": 2, "text": "Write a function to add.", "code": "def add(a, b): return a + b",
          "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "",
          "test_imports": ["import math"]}
    recs, rep = convert(tmp_path, "mbpp", [mb, {"task_id": 3, "text": "t", "test_list": []}], name="mb.jsonl")
    assert recs[0]["tests"] == ["import math\nassert add(1, 2) == 3", "import math\nassert add(0, 0) == 0"]
    assert "assert add(1, 2) == 3" in recs[0]["prompt"]
    assert rep.problems == [f"{tmp_path}/mb.jsonl:2: field 'test_list' is not a non-empty list of assert strings"]
    env = get_env("code", max_parallel=1)
    fields = {k: v for k, v in recs[0].items() if k not in ("id", "prompt", "env")}
    assert env.score_record(f"```python\n{mb['code']}\n```", fields).reward == 1.0


BFCL_Q = [
    {"id": "simple_0", "question": [[{"role": "user", "content": "Area of a triangle, base 10, height 5."}]],
     "function": [{"name": "calc.area", "description": "Area.", "parameters": {"type": "dict", "properties": {
         "base": {"type": "integer"}, "height": {"type": "float"},
         "unit": {"type": "string", "enum": ["units", "cm"]}}, "required": ["base", "height"]}}]},
    {"id": "simple_1", "question": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
     "function": [{"name": "f", "parameters": {"type": "dict", "properties": {}}}]},
    {"id": "simple_2", "question": [[{"role": "user", "content": "x"}]],
     "function": [{"name": "g", "parameters": {"type": "dict", "properties": {"m": {"type": "HashMap"}}}}]},
    {"id": "simple_3", "question": [[{"role": "user", "content": "Plan"}]],
     "function": [{"name": "plan", "parameters": {"type": "dict", "properties": {
         "stops": {"type": "array", "items": {"type": "dict", "properties": {
             "city": {"type": "string"}, "days": {"type": "integer"}}}}}}}]},
    {"id": "simple_4", "question": [[{"role": "user", "content": "no answer for me"}]],
     "function": [{"name": "f", "parameters": {"type": "dict", "properties": {}}}]},
]
BFCL_A = [
    {"id": "simple_0", "ground_truth": [{"calc.area": {"base": [10], "height": [5.0], "unit": ["units", ""]}}]},
    {"id": "simple_1", "ground_truth": []},
    {"id": "simple_2", "ground_truth": []},
    {"id": "simple_3", "ground_truth": [{"plan": {"stops": [[{"city": ["Paris", "paris, france"],
                                                                "days": [2, ""]}]]}}]},
]


def test_bfcl(tmp_path):
    write(tmp_path / "possible_answer" / "BFCL_v4_simple.json", BFCL_A)
    recs, rep = convert(tmp_path, "bfcl", BFCL_Q, name="BFCL_v4_simple.json")
    q = f"{tmp_path}/BFCL_v4_simple.json"
    assert rep.problems == [
        f"{q}:2: field 'question' has 2 turns; only single-turn entries are supported (multi-turn BFCL runs a "
        f"stateful tool backend)",
        f"{q}:3: function[0] (g).m has type 'HashMap', which is not a JSON schema type (BFCL's Java and "
        f"JavaScript entries are not supported); expected one of any, array, boolean, dict, float, integer, "
        f"null, number, object, string, tuple",
        f"{q}:5: no possible answer for this entry; give the possible_answer file with --answers"]
    area, plan = recs
    assert area["prompt"] == "Area of a triangle, base 10, height 5." and area["string_match"] == "normalized"
    params = area["tools"][0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["height"] == {"type": "number"}
    assert params["properties"]["unit"] == {"type": "string", "description": 'One of: "units", "cm".'}
    assert area["expected_calls"] == [{"name": "calc.area", "options": {"base": [10], "height": [5.0],
                                                                          "unit": ["units"]}, "optional": ["unit"]}]
    # nested dict answers are expanded: city 2 options x days (2 or absent)
    assert sorted(map(json.dumps, plan["expected_calls"][0]["options"]["stops"])) == sorted(map(json.dumps, [
        [{"city": "Paris", "days": 2}], [{"city": "Paris"}], [{"city": "paris, france", "days": 2}],
        [{"city": "paris, france"}]]))
    env = get_env("tool_call")
    fields = {k: v for k, v in area.items() if k not in ("id", "prompt", "env")}

    def score(args, name="calc.area"):
        return env.score_record(f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>",
                                fields).reward
    assert score({"base": 10, "height": 5}) == 1.0            # float param: 5 matches 5.0
    assert score({"base": 10, "height": 5.0, "unit": "Units"}) == 1.0   # normalized strings
    assert score({"base": 10, "height": 5.0, "unit": "cm"}) == 0.0      # not an acceptable value
    assert score({"base": 10}) == 0.0
    fields = {k: v for k, v in plan.items() if k not in ("id", "prompt", "env")}
    assert score({"stops": [{"city": "Paris France"}]}, "plan") == 1.0


def test_bfcl_irrelevance_expects_no_call(tmp_path):
    recs, rep = convert(tmp_path, "bfcl", [BFCL_Q[0], {"id": "irrelevance_1", "question": [[{
        "role": "user", "content": "hi"}]]}], name="BFCL_v4_irrelevance.json")
    assert not rep.problems and [r["expected_calls"] for r in recs] == [[], []] and recs[1]["tools"] == []


GYM_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
GYM = [
    {"responses_create_params": {"input": [{"role": "user", "content": "What is 2+2?"}]},
     "expected_answer": "4", "question": "What is 2+2?"},
    {"responses_create_params": {"input": [{"role": "developer", "content": "Code."},
                                           {"role": "user", "content": [{"type": "input_text", "text": "add"}]}]},
     "verifier_metadata": {"unit_tests": ["assert add(1, 2) == 3"]}},
    {"responses_create_params": {"input": [{"role": "user", "content": "Weather in Paris?"}], "tools": GYM_TOOLS},
     "ground_truth": [{"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}]},
    {"responses_create_params": {"input": "Write about cats."}, "instruction_id_list": [
        "length_constraints:number_words", "keywords:frequency", "punctuation:no_comma"],
     "kwargs": [{"relation": "less than", "num_words": 50}, {"keyword": "cat", "frequency": 2,
                                                             "relation": "at least"}, {}]},
    {"responses_create_params": {"input": [{"role": "user", "content": "x"}]},
     "verifier_metadata": {"unit_tests": {"inputs": ["1 2"], "outputs": ["3"]}}},
    {"responses_create_params": {"input": "y"}, "instruction_id_list": ["detectable_content:postscript"],
     "kwargs": [{"postscript_marker": "P.S."}]},
    {"responses_create_params": {"input": "z"}, "label": "?"},
    {"responses_create_params": {"input": []}, "expected_answer": "1"},
]


def test_nemo_gym_rows(tmp_path):
    recs, rep = convert(tmp_path, "nemo_gym", GYM)
    math_r, code_r, tool_r, inst_r = recs
    assert math_r == {"id": "in-0", "prompt": "What is 2+2?", "env": "math", "answer": "4"}
    assert code_r["prompt"] == [{"role": "system", "content": "Code."}, {"role": "user", "content": "add"}]
    assert code_r["env"] == "code" and code_r["tests"] == ["assert add(1, 2) == 3"]
    assert tool_r["tools"] == [{"type": "function", "function": {k: GYM_TOOLS[0][k] for k in
                                                                   ("name", "description", "parameters")}}]
    assert inst_r["instructions"] == [{"type": "max_words", "n": 49},
                                      {"type": "keyword_frequency", "keyword": "cat", "relation": "at_least", "n": 2},
                                      {"type": "no_commas"}]
    p = f"{tmp_path}/in.jsonl"
    assert rep.problems == [
        f"{p}:5: field 'verifier_metadata.unit_tests' is not a list of Python test strings (stdin/stdout pairs "
        f"{{inputs, outputs}} are not supported: the code env runs Python asserts); expected a non-empty list "
        f"of strings",
        f"{p}:6: instruction_id_list[0]='detectable_content:postscript' has no exact counterpart in the "
        f"instruction env; expected one of " + rep.problems[1].split("expected one of ")[1],
        f"{p}:7: NeMo Gym row with none of the verifier fields; expected one of expected_answer (math), "
        f"verifier_metadata.unit_tests (code), ground_truth (tool calls), instruction_id_list + kwargs "
        f"(instruction following)",
        f"{p}:8: field 'responses_create_params.input' is a JSON array; expected a non-empty list of messages "
        f"{{\"role\", \"content\"}} (or a string)"]
    env = get_env("tool_call")
    fields = {k: v for k, v in tool_r.items() if k not in ("id", "prompt", "env")}
    good = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert env.score_record(good, fields).reward == 1.0


def test_nemo_gym_rows_load_directly_as_data_source(tmp_path):
    src = str(write(tmp_path / "gym.jsonl", GYM[:4]))
    cfg = DataConfig(source=src, chat_template=True)
    recs = load_records(src, cfg, split="train", n=0, seed=0, env=EnvConfig(name="math"))
    assert [r["env"] for r in recs] == ["math", "code", "tool_call", "instruction"]
    src = str(write(tmp_path / "bad.jsonl", GYM[:1] + GYM[4:5]))
    with pytest.raises(Exception, match=rf"{src}:2: field 'verifier_metadata.unit_tests' is not a list"):
        load_records(src, DataConfig(source=src), split="train", n=0, seed=0, env=EnvConfig(name="math"))


def test_cli_reports_counts_and_bad_lines(tmp_path, capsys):
    src = write(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 3"}, "{not json"])
    out = tmp_path / "o" / "out.jsonl"
    assert main(["data", "prepare", "--from", "gsm8k", str(src), "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert f"{src}: 2 rows, 1 records written to {out} (math 1), 1 bad" in cap.out
    assert f"bad row: {src}:2: not valid JSON" in cap.err
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == ["3"]
    write(src, [{"question": "q", "answer": "#### 3"}])
    assert main(["data", "prepare", "--from", "gsm8k", str(src), "--out", str(out)]) == 0
    assert main(["data", "prepare", "--from", "bfcl", str(src), "--out", str(out), "--answers",
                 str(tmp_path / "nope.json")]) == 2
    assert "--answers" in capsys.readouterr().err
