"""Metric functions of a step's rollouts and numerics (pure: records/tensors in, dict out)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from nemo_rlvr.types import Sample, Score


def rollout_metrics(samples: Sequence[Sample], scores: Sequence[Score]) -> dict[str, float]:
    """Reward, accuracy, response lengths, truncation; per-env reward under `reward/<env>/`."""
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float64)      # [N]
    lengths = torch.tensor([len(s.response_ids) for s in samples], dtype=torch.float64)
    out = {
        "train/reward_mean": rewards.mean().item(),
        "train/reward_std": rewards.std(correction=0).item(),
        "train/accuracy": (rewards >= 1.0).double().mean().item(),
        "train/response_len_mean": lengths.mean().item(),
        "train/response_len_max": lengths.max().item(),
        "train/truncation_rate": sum(s.finish_reason == "length" for s in samples) / len(samples),
        "train/verifier_error_rate": sum(s.error is not None for s in scores) / len(scores),
    }
    by_env: dict[str, list[float]] = defaultdict(list)
    for sample, score in zip(samples, scores):
        by_env[sample.env].append(score.reward)
    for env, rs in by_env.items():
        out[f"reward/{env}/mean"] = sum(rs) / len(rs)
    return out


def logprob_mismatch(logp_gen: Tensor, logp_learner: Tensor, mask: Tensor) -> dict[str, float]:
    """Generator vs learner log-probs on the same tokens: mean and max |diff| over `mask`."""
    diff = (logp_gen - logp_learner).abs()[mask]                                   # [tokens]
    if diff.numel() == 0:
        return {"train/logprob_mismatch": 0.0, "train/logprob_mismatch_max": 0.0}
    return {"train/logprob_mismatch": diff.mean().item(), "train/logprob_mismatch_max": diff.max().item()}


def accuracy_metrics(prefix: str, scores: Sequence[Score], groups: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Accuracy (reward == 1) and pass@k from n samples per prompt (unbiased estimator,
    Chen et al. 2021): pass@k = 1 - C(n-c, k) / C(n, k), averaged over prompts."""
    from math import comb

    per: dict[int, list[bool]] = defaultdict(list)
    for s, g in zip(scores, groups):
        per[g].append(s.reward >= 1.0)
    out = {f"{prefix}accuracy": sum(sum(v) for v in per.values()) / max(1, len(scores))}
    for k in ks:
        vals = [1.0 - comb(len(v) - sum(v), k) / comb(len(v), k) for v in per.values() if len(v) >= k]
        if vals:
            out[f"{prefix}pass@{k}"] = sum(vals) / len(vals)
    return out
