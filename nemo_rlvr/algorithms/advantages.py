"""Advantage estimators: one advantage per sample from verifiable rewards and group ids (pure torch).

All estimators here are critic-free: a sample's baseline comes from the other samples
drawn for the same prompt (its group), so no value network is trained or stored.

- GRPO (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300): adv = (r - mean_g) / (std_g + eps).
  Drops PPO's learned critic and GAE; the group mean is the baseline and the group std
  rescales every prompt to unit spread.
- RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
  Learning from Human Feedback in LLMs", arXiv:2402.14740): adv = r - mean(other G-1 rewards)
  = (r - mean_g) * G / (G - 1). Drops the std division and the sample's own reward from its
  baseline, which keeps the policy-gradient estimate unbiased.
- Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
  arXiv:2503.20783): adv = r - mean_g. Drops the std division, which over-weights prompts
  that are almost always right or almost always wrong (a question-difficulty bias). Its
  other fix, no per-sequence length normalisation, is the loss's `aggregation`, not here.

`group_ids` [N] may hold any integers: groups may differ in size and their members need
not be contiguous. Everything is vectorised with index_add / scatter_reduce (no Python
loop over groups). A group whose rewards are all equal (or that has one member) carries
no learning signal: its advantages are exactly 0, never NaN.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {}


def register_adv_est(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: make an estimator `fn(rewards, group_ids) -> adv` available by `name`."""

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def get_adv_estimator(name: str) -> Callable[..., Tensor]:
    """Look up a registered advantage estimator; the error lists the known names."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"advantage estimator {name!r} is not registered; known: "
            f"{', '.join(sorted(ADVANTAGE_ESTIMATORS))}. Register your own with @register_adv_est."
        )
    return ADVANTAGE_ESTIMATORS[name]


class _GroupMoments(NamedTuple):
    index: Tensor  # [N] long, dense group index in [0, num_groups)
    count: Tensor  # [num_groups] long, members per group
    mean: Tensor  # [num_groups]
    std: Tensor  # [num_groups] unbiased (correction=1); 0 for a group of one
    flat: Tensor  # [num_groups] bool, all rewards in the group are equal


def _check_inputs(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor [N], got shape {tuple(rewards.shape)}.")
    if group_ids.shape != rewards.shape or group_ids.is_floating_point():
        raise ValueError(
            f"group_ids must be an integer tensor shaped like rewards {tuple(rewards.shape)}, "
            f"got {group_ids.dtype} {tuple(group_ids.shape)}."
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf; a verifier must return a finite reward (0 on error).")


def _group_moments(rewards: Tensor, group_ids: Tensor) -> _GroupMoments:
    _check_inputs(rewards, group_ids)
    r = rewards if rewards.is_floating_point() else rewards.float()  # [N]
    _, index, count = torch.unique(group_ids, return_inverse=True, return_counts=True)
    num_groups = count.numel()
    mean = r.new_zeros(num_groups).index_add_(0, index, r) / count  # [num_groups]
    dev = r - mean[index]  # [N]
    sq = r.new_zeros(num_groups).index_add_(0, index, dev * dev)  # [num_groups]
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # [num_groups]
    # Exact equality via max == min: a mean of equal floats need not equal them bit for bit,
    # so `r - mean` alone could leave ~1e-9 residue that the std division would blow up.
    gmax = r.new_zeros(num_groups).scatter_reduce_(0, index, r, "amax", include_self=False)
    gmin = r.new_zeros(num_groups).scatter_reduce_(0, index, r, "amin", include_self=False)
    return _GroupMoments(index, count, mean, std, gmax == gmin)


@register_adv_est("grpo")
def grpo_advantages(
    rewards: Tensor,  # [N] float, one scalar reward per sample
    group_ids: Tensor,  # [N] long, samples of one prompt share an id
    *,
    baseline: Literal["mean", "loo"] = "mean",
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:  # [N]
    """Group-relative advantages: reward minus a group baseline, optionally over the group std.

    baseline="mean": r - mean(group). baseline="loo": r - mean(other members), i.e.
    (r - mean) * G / (G - 1). normalize_std divides by (unbiased group std + eps).
    """
    if baseline not in ("mean", "loo"):
        raise ValueError(f"baseline={baseline!r} is not one of 'mean', 'loo'.")
    m = _group_moments(rewards, group_ids)
    r = rewards if rewards.is_floating_point() else rewards.float()  # [N]
    adv = r - m.mean[m.index]  # [N]
    if baseline == "loo":
        g = m.count[m.index].to(adv.dtype)  # [N] group size of each sample
        adv = adv * g / (g - 1).clamp(min=1)  # [N]; a group of one is flat, zeroed below
    if normalize_std:
        adv = adv / (m.std[m.index] + eps)  # [N]
    return torch.where(m.flat[m.index], torch.zeros_like(adv), adv)  # [N]


@register_adv_est("rloo")
def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:  # [N]
    """RLOO: leave-one-out mean baseline, no std normalisation."""
    return grpo_advantages(rewards, group_ids, baseline="loo", normalize_std=False)


@register_adv_est("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:  # [N]
    """Dr.GRPO: group-mean baseline, no std normalisation."""
    return grpo_advantages(rewards, group_ids, baseline="mean", normalize_std=False)


def group_stats(rewards: Tensor, group_ids: Tensor) -> dict[str, Tensor]:
    """Rollout metrics: share of groups with all-equal rewards (no signal) and mean group std."""
    m = _group_moments(rewards, group_ids)
    return {
        "rollout/zero_std_frac": m.flat.float().mean(),  # []
        "rollout/group_reward_std": m.std.float().mean(),  # []
    }
