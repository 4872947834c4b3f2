"""Supervised warm start of the tiny model on scripted multi-turn tool episodes (kv_store).

RL from a random policy never writes a well-formed `<tool_call>`, so the tools recipe first trains
on scripted correct episodes, built token in / token out exactly as rollout/multiturn.py builds a
sampled one:

    prompt ids (chat template, tools)                                 mask False
    turn 1: ids of '<tool_call>{"name":"get",...}</tool_call>' + EOS  mask True  (the model's)
    observation: env.step's tool messages, rendered by the template   mask False (the env's)
    turn 2: ...  observation ...  last turn: ids of the answer + EOS  mask True

The loss covers the model's tokens only. Training stops once greedy episodes on held-out training
prompts, run through the real episode loop (`run_episodes`) with the model in this process,
succeed at `stop_accuracy`: low enough that RL has room to show.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from nemo_rlvr.config import WarmStartConfig
from nemo_rlvr.envs.multiturn import MultiTurnEnvironment
from nemo_rlvr.models.warm_start import greedy_generate, train_supervised
from nemo_rlvr.rollout.multiturn import observation_ids, run_episodes
from nemo_rlvr.types import Prompt, Sample, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def tool_call_text(name: str, arguments: Mapping[str, Any]) -> str:
    """A Hermes/Qwen call block, compact JSON (what the tiny chat template renders for `tool_calls`)."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, separators=(",", ":"))
    return f"<tool_call>{body}</tool_call>"


def kv_store_turns(fields: Mapping[str, Any]) -> list[str]:
    """The model's turns of a correct kv_store episode: one `get` per key, then the sum."""
    return [tool_call_text("get", {"key": k}) for k in fields["keys"]] + [str(fields["answer"])]


def scripted_episode(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, env: MultiTurnEnvironment,
                     turns: Sequence[str]) -> tuple[list[int], list[bool]]:
    """The response side of an episode whose model turns are `turns`: (ids, mask), mask True on the
    model's tokens. Each turn is its text's ids plus EOS (as a generator that stopped at EOS returns
    it); the environment answers each turn (`env.step`), and its tool messages become observation
    ids as rollout/multiturn.py renders them. Ends at the turn the environment calls done."""
    eos = tokenizer.eos_token_id
    state = env.start(prompt.fields)
    ids: list[int] = []
    mask: list[bool] = []
    for text in turns:
        turn = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        ids += turn
        mask += [True] * len(turn)
        answer = env.step(state, text)
        if answer.done:
            break
        obs = observation_ids(tokenizer, answer.messages, after_token=eos, tools=prompt.fields.get("tools"))
        ids += obs
        mask += [False] * len(obs)
    return ids, mask


def encode_episodes(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                    make_env: Callable[[str], MultiTurnEnvironment],
                    turns: Callable[[Mapping[str, Any]], list[str]] = kv_store_turns,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt + scripted episode ids [M, L], and the loss mask [M, L] (model tokens)."""
    seqs, masks = [], []
    for p in prompts:
        ids, mask = scripted_episode(tokenizer, p, make_env(p.env), turns(p.fields))
        seqs.append(list(p.token_ids) + ids)
        masks.append([False] * len(p.token_ids) + mask)
    L = max(map(len, seqs))
    ids_t = torch.full((len(seqs), L), tokenizer.pad_token_id, dtype=torch.long)     # [M, L]
    mask_t = torch.zeros((len(seqs), L), dtype=torch.bool)                          # [M, L]
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids_t[i, : len(s)] = torch.tensor(s)
        mask_t[i, : len(m)] = torch.tensor(m)
    return ids_t, mask_t


def local_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
                   ) -> Callable[[list[Prompt], SamplingParams], list[Sample]]:
    """A greedy `generate` over an in-process model for `run_episodes`: left-padded batches, stops
    at EOS (kept in response_ids, finish_reason "stop"), log-probs not computed (0)."""
    eos = tokenizer.eos_token_id

    def generate(prompts: list[Prompt], sp: SamplingParams) -> list[Sample]:
        new = greedy_generate(model, tokenizer, [p.token_ids for p in prompts], max_new_tokens=sp.max_new_tokens)
        out: list[Sample] = []
        for p, toks in zip(prompts, new):
            resp = toks[: toks.index(eos) + 1] if eos in toks else toks
            out.append(Sample(list(p.token_ids), resp, [0.0] * len(resp),
                              tokenizer.decode(resp, skip_special_tokens=True),
                              "stop" if eos in resp else "length", 0, p.env, p.fields))
        return out

    return generate


def episode_success(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                    make_env: Callable[[str], MultiTurnEnvironment], *, max_turns: int, max_new_tokens: int,
                    max_episode_tokens: int) -> float:
    """Share of greedy episodes (the real episode loop, this process's model) rewarded 1."""
    if not prompts:
        return 0.0
    was_training = model.training
    model.eval()
    sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=0)
    _, scores, _ = run_episodes(local_generate(model, tokenizer), tokenizer, prompts, make_env, sp,
                                max_turns=max_turns, max_episode_tokens=max_episode_tokens)
    model.train(was_training)
    return sum(s.reward >= 1.0 for s in scores) / len(scores)


def tool_warm_start(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                    make_env: Callable[[str], MultiTurnEnvironment], cfg: WarmStartConfig, seed: int, *,
                    stop_prompts: Sequence[Prompt] = (), max_turns: int, max_new_tokens: int,
                    max_episode_tokens: int) -> dict[str, float]:
    """Train `model` in place on scripted episodes of `prompts` (up to cfg.steps AdamW steps, the
    arithmetic warm start's schedule), stopping once greedy episode success on `stop_prompts`
    reaches cfg.stop_accuracy (checked every cfg.stop_eval_every steps); return metrics."""
    if not prompts:
        raise ValueError("tool_warm_start needs at least one prompt; raise model.warm_start.num_examples.")
    if cfg.stop_accuracy is not None and not stop_prompts:
        raise ValueError("tool_warm_start: stop_accuracy needs stop_prompts to measure it on.")
    t0 = time.perf_counter()
    ids, loss_mask = encode_episodes(tokenizer, prompts, make_env)                  # [M, L]
    encode_s = time.perf_counter() - t0
    budgets = dict(max_turns=max_turns, max_new_tokens=max_new_tokens, max_episode_tokens=max_episode_tokens)
    metrics = train_supervised(
        model, ids, loss_mask, cfg, seed,
        evaluate=lambda: episode_success(model, tokenizer, stop_prompts, make_env, **budgets),
        stop_accuracy=cfg.stop_accuracy, eval_every=cfg.stop_eval_every)
    return metrics | {"warm_start/encode_seconds": encode_s}
