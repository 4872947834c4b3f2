"""Advantage estimators: from verifiable rewards (and group ids, values) to advantages (pure torch).

Group estimators give one advantage per sample and are critic-free: a sample's baseline comes
from the other samples drawn for the same prompt (its group), so no value network is trained.

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

Token-level estimators give one advantage per response token [N, T]; the scalar reward sits
on a sequence's last token (`place_on_last_token`), optionally minus a per-token KL penalty:

- GAE (Schulman et al. 2015, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", arXiv:1506.02438), PPO's estimator with a learned critic:
  delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, V after the
  last token = 0; returns A + V are the value-loss targets.
- REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
  Language Models", arXiv:2501.03262): no critic and no group baseline; the per-token
  discounted return-to-go of the KL-shaped rewards, whitened over ALL response tokens of the
  batch (global batch normalisation, not per group), which keeps the estimate stable
  without PPO's value network.

`compute_advantages(name, ...)` is the one dispatcher for both kinds; it always returns
[N, T] advantages (group advantages broadcast over a sequence's mask) and, for "gae", returns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

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


# ---------------------------------------------------------------------------- token level

TokenEstimator = Callable[..., tuple[Tensor, "Tensor | None"]]
TOKEN_ADVANTAGE_ESTIMATORS: dict[str, TokenEstimator] = {}
"""name -> fn(*, rewards, group_ids, mask, values, logp, logp_ref, gamma, lam, kl_coef)
-> (advantages [N, T], returns [N, T] | None). Group estimators live in ADVANTAGE_ESTIMATORS."""


def register_token_adv_est(name: str) -> Callable[[TokenEstimator], TokenEstimator]:
    """Decorator: make a token-level estimator available to `compute_advantages` by `name`."""

    def deco(fn: TokenEstimator) -> TokenEstimator:
        TOKEN_ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def place_on_last_token(
    rewards: Tensor,  # [N] one scalar reward per sequence
    mask: Tensor,  # [N, T] bool, True on response tokens
) -> Tensor:  # [N, T]
    """Each sequence's reward on its last True position, 0 elsewhere (an empty row gets nothing)."""
    r = _floating(rewards.detach())  # [N]
    pos = torch.arange(mask.shape[-1], device=mask.device)  # [T]
    last = torch.where(mask, pos, -1).argmax(-1, keepdim=True)  # [N, 1] last True index
    out = torch.zeros(mask.shape, dtype=r.dtype, device=r.device)  # [N, T]
    out.scatter_(1, last, r[:, None])  # [N, T]
    return torch.where(mask, out, torch.zeros_like(out))  # [N, T]; empty rows: argmax 0 is masked


def gae_advantages(
    token_rewards: Tensor,  # [N, T] per-token rewards (e.g. place_on_last_token)
    values: Tensor,  # [N, T] critic values V(s_t) of the response tokens
    mask: Tensor,  # [N, T] bool, True on response tokens
    *,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:  # advantages [N, T], returns [N, T]
    """Generalised advantage estimation over each row's masked tokens; 0 outside the mask.

    A row's response may start after position 0 and end before T; the value after its last
    token is 0 (the episode ends there). Masked-out positions are skipped: the recursion's
    carry passes through them unchanged, so a hole in the mask (e.g. tool output in a
    multi-turn row) is bridged as if its neighbours were adjacent. Inputs are constants
    (detached); returns = advantages + values are the value-loss targets.
    """
    r = _zero_outside(_floating(token_rewards.detach()), mask)  # [N, T]
    v = _zero_outside(_floating(values.detach()), mask).to(r.dtype)  # [N, T]
    adv = torch.zeros_like(r)  # [N, T]
    next_value = r.new_zeros(r.shape[0])  # [N] V_{t+1}; 0 after the last token
    next_adv = r.new_zeros(r.shape[0])  # [N] A_{t+1}
    for t in range(r.shape[1] - 1, -1, -1):
        m = mask[:, t]  # [N]
        delta = r[:, t] + gamma * next_value - v[:, t]  # [N]
        a = delta + gamma * lam * next_adv  # [N]
        adv[:, t] = torch.where(m, a, 0.0)  # [N]
        next_value = torch.where(m, v[:, t], next_value)  # [N]
        next_adv = torch.where(m, a, next_adv)  # [N]
    returns = _zero_outside(adv + v, mask)  # [N, T]
    return adv, returns


def whiten(
    x: Tensor,  # [N, T] or [N]
    mask: Tensor,  # same shape as x, bool
    *,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> Tensor:  # same shape as x
    """(x - mean) / sqrt(var + eps) over the masked positions of the whole batch; 0 outside.

    var is the population (biased) variance, as OpenRLHF's REINFORCE++ does. shift_mean=False
    adds the mean back after scaling, so the mean is kept (TRL / verl `masked_whiten`).
    An empty mask gives all zeros, a single masked value gives 0 (or itself unshifted).
    """
    xz = _zero_outside(x, mask)  # [N, T]
    count = mask.sum().clamp(min=1)  # []
    mean = xz.sum() / count  # []
    var = _zero_outside((xz - mean).square(), mask).sum() / count  # []
    out = (xz - mean) * torch.rsqrt(var + eps)  # [N, T]
    if not shift_mean:
        out = out + mean  # [N, T]
    return _zero_outside(out, mask)  # [N, T]


def reinforce_pp_advantages(
    token_rewards: Tensor,  # [N, T] per-token rewards (kl_shaped_token_rewards)
    mask: Tensor,  # [N, T] bool, True on response tokens
    *,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:  # [N, T]
    """REINFORCE++: discounted return-to-go per token, whitened over all masked tokens of the batch."""
    # GAE with V = 0 and lam = 1 is exactly the return-to-go: A_t = r_t + gamma * A_{t+1}.
    ret, _ = gae_advantages(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)
    return whiten(ret, mask, eps=eps)  # [N, T]


def kl_shaped_token_rewards(
    rewards: Tensor,  # [N] one scalar reward per sequence
    mask: Tensor,  # [N, T] bool
    logp: Tensor,  # [N, T] log-probs of the sampled tokens under the sampling policy
    logp_ref: Tensor,  # [N, T] reference-policy log-probs of the same tokens
    *,
    kl_coef: float,
) -> Tensor:  # [N, T]
    """Reward on the last token minus kl_coef * (logp - logp_ref) on every token (k1 KL in the reward)."""
    kl = _zero_outside(logp.detach() - logp_ref.detach(), mask)  # [N, T]; garbage outside dropped
    return place_on_last_token(rewards, mask) - kl_coef * kl  # [N, T]


def _floating(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


def _zero_outside(x: Tensor, mask: Tensor) -> Tensor:  # same shape as x
    # torch.where, not x * mask: NaN / inf padding stays out of every result.
    return torch.where(mask, x, torch.zeros_like(x))


def _token_rewards(rewards: Tensor, mask: Tensor, logp: Tensor | None, logp_ref: Tensor | None,
                   kl_coef: float) -> Tensor:  # [N, T]
    if kl_coef <= 0:
        return place_on_last_token(rewards, mask)  # [N, T]
    if logp is None or logp_ref is None:
        raise ValueError(f"kl_coef={kl_coef} > 0 shapes the rewards with KL(pi || ref) and needs logp and "
                         f"logp_ref [N, T]; pass both or set kl_coef=0.")
    return kl_shaped_token_rewards(rewards, mask, logp, logp_ref, kl_coef=kl_coef)  # [N, T]


@register_token_adv_est("reinforce_pp")
def _reinforce_pp(*, rewards: Tensor, mask: Tensor, logp: Tensor | None, logp_ref: Tensor | None,
                  gamma: float, kl_coef: float, **_: Any) -> tuple[Tensor, None]:
    token_rewards = _token_rewards(rewards, mask, logp, logp_ref, kl_coef)  # [N, T]
    return reinforce_pp_advantages(token_rewards, mask, gamma=gamma), None


@register_token_adv_est("gae")
def _gae(*, rewards: Tensor, mask: Tensor, values: Tensor | None, logp: Tensor | None,
         logp_ref: Tensor | None, gamma: float, lam: float, kl_coef: float,
         **_: Any) -> tuple[Tensor, Tensor]:
    if values is None:
        raise ValueError("advantage estimator 'gae' needs values [N, T] from a critic; pass values=... "
                         "or pick a critic-free estimator (grpo, rloo, dr_grpo, reinforce_pp).")
    token_rewards = _token_rewards(rewards, mask, logp, logp_ref, kl_coef)  # [N, T]
    return gae_advantages(token_rewards, values, mask, gamma=gamma, lam=lam)


def compute_advantages(
    name: str,
    *,
    rewards: Tensor,  # [N] one scalar reward per sample
    group_ids: Tensor,  # [N] long, samples of one prompt share an id
    mask: Tensor,  # [N, T] bool, True on response tokens
    values: Tensor | None = None,  # [N, T] critic values (gae only)
    logp: Tensor | None = None,  # [N, T] sampling-policy log-probs (KL reward shaping)
    logp_ref: Tensor | None = None,  # [N, T] reference log-probs (KL reward shaping)
    gamma: float = 1.0,
    lam: float = 1.0,
    kl_coef: float = 0.0,
    whiten_advantages: bool = False,
    **group_kwargs: Any,
) -> tuple[Tensor, Tensor | None]:  # advantages [N, T], returns [N, T] or None
    """One dispatcher for every estimator: [N, T] advantages (0 outside mask) and value targets.

    Group estimators (ADVANTAGE_ESTIMATORS: grpo, rloo, dr_grpo, user ones) get `group_kwargs`
    (grpo: baseline, normalize_std, eps) and their [N] advantage is broadcast over the mask;
    values/logp/gamma/lam/kl_coef do not apply to them. Token estimators
    (TOKEN_ADVANTAGE_ESTIMATORS: reinforce_pp, gae) take the KL-shaped token rewards when
    kl_coef > 0. returns is not None only for "gae" (the critic's targets, computed before
    whitening). whiten_advantages whitens the result over all masked tokens (PPO's usual
    advantage normalisation).
    """
    _check_inputs(rewards, group_ids)
    if mask.dim() != 2 or mask.shape[0] != rewards.shape[0] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor [N, T] with N={rewards.shape[0]}, "
                         f"got {mask.dtype} {tuple(mask.shape)}.")
    returns: Tensor | None = None
    if name in TOKEN_ADVANTAGE_ESTIMATORS:
        if group_kwargs:
            raise ValueError(f"advantage estimator {name!r} is token-level and takes no group options; "
                             f"got {sorted(group_kwargs)}. Drop them.")
        adv, returns = TOKEN_ADVANTAGE_ESTIMATORS[name](
            rewards=rewards, group_ids=group_ids, mask=mask, values=values, logp=logp,
            logp_ref=logp_ref, gamma=gamma, lam=lam, kl_coef=kl_coef)
    elif name in ADVANTAGE_ESTIMATORS:
        fn = ADVANTAGE_ESTIMATORS[name]
        _check_kwargs(name, fn, group_kwargs)
        seq_adv = fn(rewards, group_ids, **group_kwargs)  # [N]
        adv = _zero_outside(seq_adv[:, None].expand(mask.shape), mask)  # [N, T]
    else:
        known = sorted(set(ADVANTAGE_ESTIMATORS) | set(TOKEN_ADVANTAGE_ESTIMATORS))
        raise ValueError(f"advantage estimator {name!r} is not registered; known: {', '.join(known)}. "
                         f"Register your own with @register_adv_est or @register_token_adv_est.")
    if whiten_advantages:
        adv = whiten(adv, mask)  # [N, T]
    return adv, returns


def _check_kwargs(name: str, fn: Callable[..., Tensor], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params) - {"rewards", "group_ids"})
    if unknown:
        accepted = sorted(k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        raise ValueError(f"advantage estimator {name!r} takes no option(s) {unknown}; it accepts "
                         f"{accepted or 'none'}. Drop them for {name!r}.")
