"""Loading records: every bad record is reported with its line (or number), the field and what
was expected, checked against the environment it names; field mapping; HF / parquet sources."""

from __future__ import annotations

import json
import re

import pytest

from nemo_rlvr.build import dry_run
from nemo_rlvr.config import ConfigError, DataConfig, EnvConfig, load_config
from nemo_rlvr.data.dataset import load_records, prompt_text
from nemo_rlvr.envs.base import ENVIRONMENTS
from nemo_rlvr.envs.registry import UnknownEnvError, field_error

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def load(source, *, env="math", **data):
    cfg = DataConfig(source=source, **data)
    return load_records(source, cfg, split="train", n=0, seed=0, env=EnvConfig(name=env))


def error_of(source, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        load(source, **kw)
    return str(e.value)


# One bad record per line: (row, the message expected after "FILE:LINE: ").
BAD = [
    ('{"prompt": "1+1?", "answer": 2', r"not valid JSON \(.*\); each line must be one JSON object"),
    ('[1, 2]', r"the record is a JSON array; expected an object"),
    ({"answer": "2"}, r"field 'prompt' is missing; expected the prompt: a non-empty string, or a list of chat"),
    ({"prompt": "  ", "answer": "2"}, r"field 'prompt' is empty; expected the prompt"),
    ({"prompt": 7, "answer": "2"}, r"field 'prompt' is a JSON integer; expected the prompt"),
    ({"prompt": "q"}, r"field 'answer' is missing; expected the reference answer: a non-empty string "
                      r"such as \"42\" .* \(env 'math'\)"),
    ({"prompt": "q", "answer": None}, r"field 'answer' is null; expected the reference answer"),
    ({"prompt": "q", "answer": [2]}, r"field 'answer' is a JSON array; expected the reference answer"),
    ({"prompt": "q", "answer": ""}, r"field 'answer'='' is empty; expected the reference answer"),
    ({"prompt": "q", "env": 3}, r"field 'env' is a JSON integer; expected an environment name"),
    ({"prompt": "q", "env": "maths"}, r"field 'env'='maths' is not a registered environment; expected one of"),
    ({"prompt": "q", "env": "arithmetic", "answer": "4x"},
     r"field 'answer'='4x' is not an integer; expected the integer answer.*\(env 'arithmetic'\)"),
    ({"prompt": "q", "env": "arithmetic", "answer": True},
     r"field 'answer' is a JSON boolean; expected the integer answer"),
    ({"prompt": "q", "env": "code"}, r"field 'tests' is missing; expected a non-empty list of Python source"),
    ({"prompt": "q", "env": "code", "tests": "assert f() == 1"}, r"field 'tests' is a JSON string; expected a "
                                                                 r"non-empty list"),
    ({"prompt": "q", "env": "code", "tests": []}, r"field 'tests' must be a non-empty list of Python source"),
    ({"prompt": "q", "env": "code", "tests": ["assert f(1 == 2"]},
     r"a test in field 'tests' is not valid Python \('\(' was never closed, line 1\) \(env 'code'\)"),
    ({"prompt": "q", "env": "code", "tests": ["assert f() == 1"], "entry_point": "not a name"},
     r"field 'entry_point' must be a function name"),
    ({"prompt": "q", "env": "tool_call", "tools": TOOLS}, r"field 'expected_calls' is missing; expected a list"),
    ({"prompt": "q", "env": "tool_call", "tools": TOOLS, "expected_calls": [{"name": "g", "arguments": {}}]},
     r"expected_calls\[0\] calls 'g', which is not in 'tools'"),
    ({"prompt": "q", "env": "tool_call", "tools": TOOLS, "expected_calls": [{"name": "f", "arguments": {"x": "1"}}]},
     r"expected_calls\[0\].arguments do not satisfy the schema of 'f': '1' is not of type 'integer'"),
    ({"prompt": "q", "env": "tool_call", "tools": TOOLS, "expected_calls": [], "string_match": "fuzzy"},
     r"env field 'string_match'='fuzzy' is not allowed; expected \"exact\" .* or \"normalized\""),
    ({"prompt": "q", "env": "instruction", "instructions": [{"type": "min_words"}]},
     r"instructions\[0\] \(min_words\) is missing parameter 'n'"),
    ({"prompt": "q", "env": "instruction", "instructions": {"type": "min_words", "n": 3}},
     r"field 'instructions' is a JSON object; expected a list of"),
    ({"prompt": "q", "env": "reasoning_gym", "task": "no_such_task", "entry": {"answer": 1, "metadata": {}}},
     r"env field 'task'='no_such_task' is not a reasoning-gym dataset"),
]


def test_every_bad_record_is_reported_with_line_field_and_expectation(tmp_path, monkeypatch):
    monkeypatch.setattr("nemo_rlvr.data.dataset.SHOW_PROBLEMS", 100)
    good = {"prompt": "1+1?", "answer": "2"}
    rows = [good] + [row for row, _ in BAD] + [good]
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    path = str(tmp_path / "d.jsonl")
    assert msg.startswith(f"data.source={path!r}: {len(BAD)} of {len(BAD) + 2} records cannot be used:")
    lines = msg.splitlines()[1:-1]
    assert len(lines) == len(BAD)  # none is dropped
    for lineno, (line, (_, pattern)) in enumerate(zip(lines, BAD), 2):  # line 1 is the good record
        assert re.fullmatch(rf"  {re.escape(path)}:{lineno}: {pattern}.*", line), (line, pattern)
    assert "data.skip_bad_records=true" in msg.splitlines()[-1]


def test_a_file_without_the_envs_answer_fails_at_load_not_with_reward_0(tmp_path):
    # The case: a JSONL whose records lack `answer` trained every step on reward 0.
    src = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "2+2?", "solution": "4"}] * 3)
    msg = error_of(src)
    assert f"{src}:1: field 'answer' is missing" in msg and f"{src}:3:" in msg and "3 of 3 records" in msg


def test_many_bad_records_are_counted_past_twenty(tmp_path):
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q"}] * 25))
    assert "25 of 25 records" in msg and "... and 5 more" in msg


def test_skip_bad_records_drops_and_counts_them(tmp_path, caplog):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}, "{oops",
                                             {"prompt": "c", "answer": 3}])
    with caplog.at_level("WARNING"):
        recs = load(src, skip_bad_records=True)
    assert [r["prompt"] for r in recs] == ["a", "c"]
    assert "skipped 2 of 4 records (data.skip_bad_records=true)" in caplog.text
    assert f"{src}:2: field 'answer' is missing" in caplog.text and f"{src}:3: not valid JSON" in caplog.text


def test_nothing_usable_is_an_error(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "b"}])
    with pytest.raises(ConfigError, match="holds no usable records"):
        load(src, skip_bad_records=True)


def test_unknown_default_env_is_the_configs_error(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "env": "math", "answer": "1"}])
    with pytest.raises(UnknownEnvError, match="env.name 'nope' is not a registered environment"):
        load(src, env="nope")


def test_env_server_names_are_not_checked_locally(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "env": "remote_only", "x": 1}])
    cfg = DataConfig(source=src)
    recs = load_records(src, cfg, split="train", n=0, seed=0, env=EnvConfig(name="math", url="http://h:1"))
    assert recs[0]["env"] == "remote_only"


def test_plugin_env_without_declarations_is_not_checked():
    class Plain:
        name = "plain"
    assert field_error(Plain, {}) is None


def test_builtin_envs_all_declare_their_fields():
    for name in ("arithmetic", "math", "code", "tool_call", "instruction", "reasoning_gym"):
        cls = ENVIRONMENTS[name]
        assert cls.fields, name
        assert all(spec.expect for spec in cls.fields.values()), name


def test_float_field_takes_an_int_but_never_a_bool():
    math_env = ENVIRONMENTS["math"]
    assert field_error(math_env, {"answer": 3}) is None
    assert field_error(math_env, {"answer": 2.5}) is None
    assert "JSON boolean" in field_error(math_env, {"answer": False})


# ---------------------------------------------------------------- field mapping and prompts


def test_prompt_key_answer_key_and_dotted_field_map(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [
        {"question": "q1", "gold": "7", "meta": {"tests": ["assert f() == 1"]}, "kind": "math"}])
    recs = load(src, prompt_key="question", answer_key="gold")
    assert recs[0]["prompt"] == "q1" and recs[0]["answer"] == "7"
    recs = load(src, env="code", prompt_key="question", field_map={"tests": "meta.tests"})
    assert recs[0]["tests"] == ["assert f() == 1"]
    msg = error_of(src, prompt_key="problem", answer_key="gold")
    assert f"{src}:1: field 'problem' (data.prompt_key=problem) is missing; expected the prompt" in msg
    msg = error_of(src, prompt_key="question", field_map={"answer": "meta.answer"})
    assert f"{src}:1: field 'meta.answer' (data.field_map.answer=meta.answer) is missing" in msg


def test_chat_messages_need_the_chat_template(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": [{"role": "user", "content": "hi"}], "answer": "1"}])
    with pytest.raises(ConfigError, match="list of chat messages.*data.chat_template=true"):
        load(src)
    assert load(src, chat_template=True)[0]["prompt"] == [{"role": "user", "content": "hi"}]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": [{"role": "robot", "content": "hi"}], "answer": "1"}])
    assert f"{bad}:1: prompt[0] is not a chat message" in error_of(bad, chat_template=True)


class FakeChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, *, tools, tokenize, add_generation_prompt):
        return json.dumps({"messages": messages, "tools": tools})


def test_system_prompt_and_tools_reach_the_template():
    rec = {"prompt": "hi", "tools": [{"name": "f", "parameters": {"type": "object"}}]}
    assert prompt_text(rec, None, chat_template=False, system_prompt="Be brief.") == "Be brief.\n\nhi"
    assert prompt_text(rec, None, chat_template=False) == "hi"
    out = json.loads(prompt_text(rec, FakeChatTokenizer(), chat_template=True, system_prompt="Be brief."))
    assert out["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert out["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    own = {"prompt": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]}
    out = json.loads(prompt_text(own, FakeChatTokenizer(), chat_template=True, system_prompt="Be brief."))
    assert out["messages"][0] == {"role": "system", "content": "Mine."} and out["tools"] is None


# ---------------------------------------------------------------- sources


def test_parquet_records_are_numbered(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]), path)
    assert f"{path} record 2: field 'answer' is null" in error_of(str(path))


def test_hf_save_to_disk_dataset_and_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"question": ["q1", "q2"], "expected_answer": ["1", "2"]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                               "validation": datasets.Dataset.from_dict({k: v[:1] for k, v in rows.items()})})
    dd.save_to_disk(str(tmp_path / "dd"))
    kw = dict(prompt_key="question", answer_key="expected_answer")
    assert [r["answer"] for r in load(str(tmp_path / "dd"), **kw)] == ["1", "2"]
    cfg = DataConfig(source=str(tmp_path / "dd"), val_split="validation", **kw)
    val = load_records(cfg.source, cfg, split="val", n=0, seed=0, env=EnvConfig(name="math"))
    assert [r["prompt"] for r in val] == ["q1"]
    with pytest.raises(ConfigError, match=r"has no split 'test'; it has 'train', 'validation'. Set data.split"):
        load_records(cfg.source, DataConfig(source=cfg.source, **kw), split="val", n=0, seed=0)
    datasets.Dataset.from_dict({"question": ["q"], "expected_answer": [""]}).save_to_disk(str(tmp_path / "one"))
    assert f"{tmp_path / 'one'} record 1: field 'answer'='' is empty" in error_of(str(tmp_path / "one"), **kw)


def test_missing_source_says_what_it_may_be(tmp_path):
    with pytest.raises(ConfigError, match="neither a built-in task .* nor an existing file or folder"):
        load(str(tmp_path / "nope.jsonl"))


def test_jsonl_gz_and_json_array_files(tmp_path):
    import gzip

    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "a", "answer": "1"}\n'))
    assert load(str(tmp_path / "a.jsonl.gz"))[0]["prompt"] == "a"
    (tmp_path / "b.json").write_text('[{"prompt": "b", "answer": 2}, {"prompt": "c"}]')
    assert f"{tmp_path / 'b.json'} record 2: field 'answer' is missing" in error_of(str(tmp_path / "b.json"))


# ---------------------------------------------------------------- config and build


def test_warm_start_on_a_file_is_a_config_error_naming_both_keys(tmp_path):
    src = write_jsonl(tmp_path / "my.jsonl", [{"prompt": "q", "answer": "1"}])
    with pytest.raises(ConfigError, match=r"model\.warm_start\.steps=800 with data\.source='.*my\.jsonl'.*"
                                          r"Set model\.warm_start\.steps=0"):
        load_config(None, [f"data.source={src}"])  # the default (tiny) recipe warm-starts
    assert load_config(None, [f"data.source={src}", "model.warm_start.steps=0"]).data.source == src


def test_dry_run_checks_the_records(tmp_path):
    src = write_jsonl(tmp_path / "my.jsonl", [{"prompt": "q", "answer": "1"}, {"prompt": "q2"}])
    cfg = load_config(None, [f"data.source={src}", "model.warm_start.steps=0", "env.name=math",
                             "cluster.mode=local"])
    with pytest.raises(ConfigError, match=rf"{re.escape(src)}:2: field 'answer' is missing"):
        dry_run(cfg)
    cfg = load_config(None, [f"data.source={src}", "model.warm_start.steps=0", "env.name=math",
                             "cluster.mode=local", "data.skip_bad_records=true"])
    assert any("data: 1 training records" in line for line in dry_run(cfg))
