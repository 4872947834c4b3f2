"""Environments for training tests: rewards with variance even for an untrained model."""

from __future__ import annotations

from nemo_rlvr.envs.base import Score, register_env, score_safely


@register_env("digit_share")
class DigitShareEnv:
    """Reward = share of the response's characters that are digits (0 for an empty response)."""

    name = "digit_share"

    def score_record(self, response, fields):
        text = response.strip()
        return Score(sum(c.isdigit() for c in text) / len(text) if text else 0.0)

    def score(self, samples):
        return [score_safely(self, s.text, s.fields) for s in samples]
