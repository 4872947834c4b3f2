"""Environments for training tests: rewards with variance even for an untrained model."""

from __future__ import annotations

from nemo_rlvr.envs.base import Score, register_env


@register_env("digit_share")
class DigitShareEnv:
    """Reward = share of the response's characters that are digits (0 for an empty response)."""

    name = "digit_share"

    def score_record(self, response, fields):
        text = response.strip()
        return Score(sum(c.isdigit() for c in text) / len(text) if text else 0.0)


def write_addition_prompts(folder):
    """A JSONL of `a+b=` prompts without "env" (they go to `env.name`); returns its path."""
    import json

    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": a + b}) + "\n"
                            for a in range(10, 40) for b in range(10, 14)))
    return path


@register_env("explode_at_step")
class ExplodeAtStepEnv:
    """digit_share, except that during RL step `step` (its calls [(step-1)*per_step, step*per_step)
    of this instance; inline scoring keeps one instance in the driver) responses of odd length get
    reward 3e38: with a mean-only baseline the advantages are ~1e38 and the loss overflows to inf.
    A test-only way to make a step's loss non-finite; product code has no such switch."""

    name = "explode_at_step"

    def __init__(self, step: int, per_step: int, until: int | None = None):
        self.first, self.last, self.per_step, self.calls = step, until or step, per_step, 0

    def score_record(self, response, fields):
        step = self.calls // self.per_step + 1
        self.calls += 1
        text = response.strip()
        if self.first <= step <= self.last and len(text) % 2 == 1:
            return Score(3e38)
        return Score(sum(c.isdigit() for c in text) / len(text) if text else 0.0)
