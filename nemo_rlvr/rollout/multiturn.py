"""Rollouts over turns: the model generates, the environment runs its tool calls and answers, the
model goes on, until the episode is done or a budget runs out. Token in, token out.

    episodes = one per (prompt, sample) ─┐
    every turn: all live episodes ──generate (n=1, one batch, any backend)──▶ turn tokens
                  env.step(state, turn text) ──▶ tool messages ──chat template──▶ observation tokens
    end: env.score(state, last turn's text) ──▶ Score;  Sample with response_mask

The trained sequence is built from token ids only: the prompt's ids, then each turn's generated
ids exactly as the generator returned them (with their log-probs), then each observation's ids.
Nothing the model generated is ever re-tokenised, so the learner scores exactly the tokens the
generator sampled. `Sample.response_mask` is True on the model's tokens only (the loss and the
log-prob checks cover those); observation tokens carry log-prob 0 and mask False.

An observation's text is what the chat template renders after an assistant message's content:
its end-of-turn marker, the tool messages, the next assistant header (rendered once per turn from a
placeholder conversation, `tools` passed to the template). When the turn ended with a token whose
text starts that rendering (Qwen's `<|im_end|>` is both its EOS and its end-of-turn marker), the
marker is not repeated. When the model's EOS differs from the template's end-of-turn marker (the
tiny model: `<|endoftext|>` vs `<|im_end|>`), the EOS stays where the model put it and the marker
follows: the sequence is what the generator saw either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nemo_rlvr.envs.multiturn import MultiTurnEnvironment
from nemo_rlvr.types import Prompt, Sample, SamplingParams, Score

_MARK = "\x00NEMO_RLVR_TURN\x00"


@dataclass
class Episode:
    prompt: Prompt
    group_id: int
    env: MultiTurnEnvironment
    state: Any
    ids: list[int] = field(default_factory=list)          # response side: turns + observations
    logprobs: list[float] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    last_text: str = ""
    finish: str = "stop"
    done: bool = False


def observation_ids(tokenizer, messages: list[dict[str, str]], *, after_token: int | None,
                    tools: list | None = None) -> list[int]:
    """Token ids of `messages` (tool answers) plus the next assistant header, as the chat template
    renders them after an assistant turn; without the end-of-turn marker when `after_token`
    (the turn's last generated token) already is it."""
    convo = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _MARK}, *messages]
    kwargs = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True, **kwargs)
    suffix = text[text.index(_MARK) + len(_MARK):]
    if after_token is not None:
        ended = tokenizer.decode([after_token], skip_special_tokens=False)
        if ended and suffix.startswith(ended):
            suffix = suffix[len(ended):]
    return tokenizer(suffix, add_special_tokens=False)["input_ids"]


def run_episodes(generate: Callable[[list[Prompt], SamplingParams], list[Sample]], tokenizer,
                 prompts: Sequence[Prompt], make_env: Callable[[str], MultiTurnEnvironment],
                 sampling: SamplingParams, *, max_turns: int, max_episode_tokens: int,
                 ) -> tuple[list[Sample], list[Score], dict[str, float]]:
    """`sampling.n` episodes per prompt (prompt-major, group_id = prompt index), run to the end.
    `generate` is a Generator's generate (GeneratorGroup: all replicas); each turn sends every live
    episode's whole sequence as one prompt with n=1 and the turn's own seed. Returns the samples,
    their scores and `rollout/*` metrics."""
    episodes = []
    for i, p in enumerate(prompts):
        for _ in range(sampling.n):
            env = make_env(p.env)
            episodes.append(Episode(p, i, env, env.start(p.fields)))
    for turn in range(max_turns):
        live = [e for e in episodes if not e.done]
        if not live:
            break
        # each episode's own budget: what is left of max_episode_tokens, at most max_new_tokens
        budgets = [min(sampling.max_new_tokens, max_episode_tokens - len(e.prompt.token_ids) - len(e.ids))
                   for e in live]
        for e, b in zip(live, budgets):
            if b <= 0:
                e.done, e.finish = True, "length"
        live, budgets = [e for e in live if not e.done], [b for b in budgets if b > 0]
        if not live:
            break
        calls = [dataclasses.replace(e.prompt, token_ids=list(e.prompt.token_ids) + e.ids) for e in live]
        sp = dataclasses.replace(sampling, n=1, seed=sampling.seed * 1_000_003 + turn,
                                 max_new_tokens=max(budgets))
        outs = generate(calls, sp)
        for e, out, budget in zip(live, outs, budgets):
            ids, logprobs, finish, text = list(out.response_ids), list(out.logprobs), out.finish_reason, out.text
            if len(ids) > budget:  # one batch, the largest budget: cut this episode to its own. The
                # first `budget` tokens are what a generation capped at `budget` would have sampled
                ids, logprobs, finish = ids[:budget], logprobs[:budget], "length"
                text = tokenizer.decode(ids, skip_special_tokens=True)
            e.ids += ids
            e.logprobs += logprobs
            e.mask += [True] * len(ids)
            e.turns += 1
            e.last_text = text
            if finish != "stop":  # the turn was cut: the episode ends on the budget
                e.done, e.finish = True, "length"
                continue
            answer = e.env.step(e.state, text)
            e.tool_calls += answer.tool_calls
            e.tool_errors += answer.tool_errors
            if answer.done:
                e.done = True
                continue
            obs = observation_ids(tokenizer, answer.messages,
                                  after_token=ids[-1] if ids else None,
                                  tools=e.prompt.fields.get("tools"))
            if len(e.prompt.token_ids) + len(e.ids) + len(obs) >= max_episode_tokens:
                e.done, e.finish = True, "length"
                continue
            e.ids += obs
            e.logprobs += [0.0] * len(obs)
            e.mask += [False] * len(obs)
    for e in episodes:
        if not e.done:
            e.done, e.finish = True, "length"  # max_turns reached with a call still pending
    samples, scores = [], []
    for e in episodes:
        scores.append(e.env.score(e.state, e.last_text) if e.finish == "stop" else
                      Score(0.0, {}, None))
        samples.append(Sample(prompt_ids=list(e.prompt.token_ids), response_ids=e.ids, logprobs=e.logprobs,
                              text=e.last_text, finish_reason=e.finish, group_id=e.group_id, env=e.prompt.env,
                              fields=e.prompt.fields, prompt_text=e.prompt.text, uid=e.prompt.uid,
                              response_mask=e.mask))
    n = max(len(episodes), 1)
    metrics = {"rollout/turns_mean": sum(e.turns for e in episodes) / n,
               "rollout/tool_calls_mean": sum(e.tool_calls for e in episodes) / n,
               "rollout/tool_errors": float(sum(e.tool_errors for e in episodes)),
               "rollout/budget_end_frac": sum(e.finish == "length" for e in episodes) / n}
    return samples, scores, metrics
