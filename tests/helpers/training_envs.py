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
