"""The tools recipe's parts: the kv_store data source, the tiny chat template with tools, and the
scripted warm-start episodes, which must be the very ids the rollout builds (token in, token out)."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_rlvr.config import ConfigError, TinyModelConfig, load_config
from nemo_rlvr.data.dataset import to_prompts
from nemo_rlvr.data.kv_store import TOOLS, kv_store_records
from nemo_rlvr.envs.multiturn import KVStoreEnv
from nemo_rlvr.models.tiny import build_tiny_model, train_tokenizer
from nemo_rlvr.models.tool_warm_start import encode_episodes, kv_store_turns, scripted_episode, tool_call_text
from nemo_rlvr.rollout.multiturn import run_episodes
from nemo_rlvr.types import Prompt, Sample, SamplingParams


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The tools recipe's tokenizer as every backend loads it: from a folder with the model's
    config.json (transformers then gives Qwen2's tokenizer class, which drops newlines)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tok")
    build_tiny_model(TinyModelConfig(num_layers=1, vocab_size=256), train_tokenizer(out, vocab_size=256),
                     seed=0).config.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def _prompts(tok, n: int) -> list[Prompt]:
    records = kv_store_records(n, seed=0, split="train")
    return to_prompts(records, tok, default_env="kv_store", chat_template=True)


def _problem(r: dict) -> tuple:
    return tuple(r["store"][k] for k in r["keys"])


# ---------------------------------------------------------------- data source


def test_records_are_deterministic_prefix_stable_and_well_formed():
    a = kv_store_records(300, seed=3, split="train")
    assert a == kv_store_records(300, seed=3, split="train")
    assert a[:50] == kv_store_records(50, seed=3, split="train")        # prefix-stable in n
    assert a != kv_store_records(300, seed=4, split="train")           # the seed reorders
    for r in a:
        assert r["keys"] == ["a", "b"] and r["prompt"] == "sum:a,b" and r["env"] == "kv_store"
        assert r["answer"] == r["store"]["a"] + r["store"]["b"] and len(r["store"]) == 4   # 2 distractors
        assert all(0 <= v <= 9 for v in r["store"].values()) and r["tools"] == TOOLS
    # 100 problems (a, b) in 0..9 x 0..9: 21 are val (hash % 5 == 0), the train split's 79 come
    # once per pass in a seeded order, then the next pass
    assert len({_problem(r) for r in a[:79]}) == 79
    assert {_problem(r) for r in a[79:158]} == {_problem(r) for r in a[:79]}


def test_train_and_val_are_disjoint_for_any_seed():
    val = kv_store_records(21, seed=0, split="val")
    assert len({_problem(r) for r in val}) == 21                       # the whole val split, no repeat
    with pytest.raises(ValueError, match="data.val_size to <= 21"):
        kv_store_records(22, seed=0, split="val")
    for seed in (0, 1):
        train = {_problem(r) for r in kv_store_records(4096, seed=seed, split="train")}
        assert len(train) == 79
        assert not train & {_problem(r) for r in kv_store_records(21, seed=seed, split="val")}
    # a problem's split is fixed by the problem, not the seed: val of seed 0 is never train of seed 1
    other = kv_store_records(4096, seed=1, split="train")
    assert not {_problem(r) for r in val} & {_problem(r) for r in other}


def test_load_records_has_the_kv_store_source():
    from nemo_rlvr.data.dataset import load_records

    cfg = load_config(None, ["data.source=kv_store", "data.chat_template=true", "generation.max_turns=3",
                             "model.warm_start.steps=0"])
    got = load_records("kv_store", cfg.data, split="val", n=5, seed=0)
    assert got == kv_store_records(5, seed=0, split="val")


@pytest.mark.parametrize("overrides, says", [
    (["generation.max_turns=2", "data.chat_template=true"], "generation.max_turns=2"),
    (["generation.max_turns=3"], "data.chat_template=false"),
    (["generation.max_turns=3", "data.chat_template=true", "data.source=x.jsonl"], "arithmetic, kv_store"),
])
def test_combinations_that_cannot_work_are_config_errors(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, ["data.source=kv_store", *overrides])   # the default recipe warm-starts


def test_the_tools_recipe_loads():
    from nemo_rlvr.config import REPO_ROOT

    cfg = load_config(REPO_ROOT / "recipes" / "tiny_cpu_tools.yaml")
    assert (cfg.data.source, cfg.generation.max_turns, cfg.data.chat_template) == ("kv_store", 3, True)
    assert cfg.model.warm_start.steps > 0 and cfg.model.warm_start.stop_accuracy is not None


# ---------------------------------------------------------------- template and scripted episodes


def test_the_template_renders_tools_tool_calls_and_tool_messages(tok):
    msgs = [{"role": "user", "content": "sum:q,c"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get", "arguments": {"key": "q"}}}]},
            {"role": "tool", "content": "4"}]
    text = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\n<tools>\nget(key): read a key\n</tools><|im_end|>\n"
                    "<|im_start|>user\nsum:q,c<|im_end|>\n"
                    '<|im_start|>assistant\n'
                    '<tool_call>{"name":"get","arguments":{"key":"q"}}</tool_call><|im_end|>\n'
                    "<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n")
    assert tool_call_text("get", {"key": "q"}) in text                  # the scripted turn's very text
    # without tools it is plain ChatML, as before
    assert tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nsum:q,c<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) < 60             # merges: far fewer ids than characters


class Scripted:
    """A generator whose turn k is the scripted text k of each episode's record (+ EOS)."""

    def __init__(self, tok):
        self.tok, self.turn = tok, 0

    def __call__(self, prompts: list[Prompt], sp: SamplingParams) -> list[Sample]:
        out = []
        for p in prompts:
            ids = self.tok(kv_store_turns(p.fields)[self.turn], add_special_tokens=False)["input_ids"]
            ids = ids + [self.tok.eos_token_id]
            text = self.tok.decode(ids, skip_special_tokens=True)
            out.append(Sample(list(p.token_ids), ids, [-0.5] * len(ids), text, "stop", 0, p.env, p.fields))
        self.turn += 1
        return out


def test_scripted_episodes_are_the_ids_the_rollout_builds(tok):
    prompts = _prompts(tok, 3)
    samples, scores, metrics = run_episodes(Scripted(tok), tok, prompts, lambda name: KVStoreEnv(),
                                            SamplingParams(n=1, max_new_tokens=64), max_turns=3,
                                            max_episode_tokens=512)
    assert [s.reward for s in scores] == [1.0, 1.0, 1.0]             # scripted episodes are correct
    assert metrics["rollout/turns_mean"] == 3.0 and metrics["rollout/tool_calls_mean"] == 2.0
    for p, s in zip(prompts, samples):
        ids, mask = scripted_episode(tok, p, KVStoreEnv(), kv_store_turns(p.fields))
        assert (ids, mask) == (s.response_ids, s.response_mask)
        # by hand: turn ids + EOS (mask True), then what the template renders after the assistant
        # message: end of turn, the tool answer (the store's value), the next assistant header
        eos = tok.eos_token_id
        k1, k2 = p.fields["keys"]                                       # "a", "b"
        t = [tok(x, add_special_tokens=False)["input_ids"] + [eos] for x in kv_store_turns(p.fields)]
        o = [tok(f"<|im_end|>\n<|im_start|>tool\n{p.fields['store'][k]}<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False)["input_ids"] for k in (k1, k2)]
        assert ids == t[0] + o[0] + t[1] + o[1] + t[2]
        assert mask == [True] * len(t[0]) + [False] * len(o[0]) + [True] * len(t[1]) + [False] * len(o[1]) + \
            [True] * len(t[2])
        assert tok.decode(t[0]) == tool_call_text("get", {"key": k1}) + "<|endoftext|>"
        assert tool_call_text("get", {"key": k1}) == \
            '<tool_call>{"name":"get","arguments":{"key":"%s"}}</tool_call>' % k1


def test_encoded_episodes_train_exactly_the_model_tokens(tok):
    prompts = _prompts(tok, 2)
    ids, mask = encode_episodes(tok, prompts, lambda name: KVStoreEnv())            # [2, L]
    for i, p in enumerate(prompts):
        resp, resp_mask = scripted_episode(tok, p, KVStoreEnv(), kv_store_turns(p.fields))
        n = len(p.token_ids) + len(resp)
        assert ids[i, :n].tolist() == list(p.token_ids) + resp
        assert (ids[i, n:] == tok.pad_token_id).all() and not mask[i, n:].any()
        assert mask[i, :n].tolist() == [False] * len(p.token_ids) + resp_mask
        # the masked tokens decode to the three turns and their EOS, nothing else
        model_text = tok.decode(ids[i][mask[i]].tolist())
        turns = kv_store_turns(p.fields)
        assert model_text == "<|endoftext|>".join(turns) + "<|endoftext|>"
        assert json.loads(turns[0][len("<tool_call>"):-len("</tool_call>")]) == \
            {"name": "get", "arguments": {"key": p.fields["keys"][0]}}
    assert ids.dtype == torch.long and mask.dtype == torch.bool


def test_tool_warm_start_stops_on_episode_success(tok, monkeypatch):
    import nemo_rlvr.models.tool_warm_start as tws
    from nemo_rlvr.config import WarmStartConfig

    prompts = _prompts(tok, 8)
    model = build_tiny_model(TinyModelConfig(num_layers=1, vocab_size=256), tok, seed=0)
    cfg = WarmStartConfig(steps=20, batch_size=2, stop_accuracy=0.4, stop_eval_every=3)
    budgets = dict(max_turns=3, max_new_tokens=20, max_episode_tokens=256)
    with pytest.raises(ValueError, match="stop_prompts"):
        tws.tool_warm_start(model, tok, prompts, lambda name: KVStoreEnv(), cfg, 0, **budgets)
    # the untrained model never writes a call: its greedy episodes (the real loop) score 0
    assert tws.episode_success(model, tok, prompts[6:], lambda name: KVStoreEnv(), **budgets) == 0.0
    seen = []
    monkeypatch.setattr(tws, "episode_success", lambda m, t, p, *a, **k: seen.append(len(p)) or 0.5)
    out = tws.tool_warm_start(model, tok, prompts[:6], lambda name: KVStoreEnv(), cfg, 0,
                              stop_prompts=prompts[6:], **budgets)
    # checked after step 3 on the 2 held-out prompts: 0.5 >= 0.4 stops it there
    assert out["warm_start/steps"] == 3 and out["warm_start/stop_accuracy"] == 0.5 and seen == [2]
