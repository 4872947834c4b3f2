"""Policy losses: clipped policy gradient, KL estimators, aggregation, importance weights (pure torch).

- Clipped surrogate (PPO, Schulman et al. 2017, arXiv:1707.06347) as used by GRPO: the
  token ratio pi/pi_old is clipped to [1 - clip_low, 1 + clip_high]. Setting clip_high >
  clip_low is DAPO's "clip-higher" (Yu et al. 2025, arXiv:2503.14476): low-probability
  tokens with A > 0 may grow further, which keeps entropy from collapsing.
- KL(pi || ref) per token, with the k1/k2/k3 estimators of Schulman's note
  "Approximating KL Divergence" (2020): k1 = log r' is unbiased but often negative, k2 is
  low-variance but biased, k3 = r - log r - 1 (r = ref/pi) is unbiased and never negative.
  GRPO adds k3 to the loss; DAPO and Dr.GRPO drop the KL term (kl_coef=0).
- Truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly
  Brings You Off-Policy RL Training"): the generator (vLLM) and the learner disagree on
  log-probs; tokens are weighted by min(pi_learner_old / pi_gen, cap).

Every function is tensors in, tensors out: no config, no I/O, no torch.distributed. The
caller passes the GLOBAL normalisers `num_tokens` / `num_seqs` (over all micro-batches and
data-parallel ranks), so summing the per-micro-batch losses gives the whole-batch loss and
sharding never changes it. Dims: N sequences, T response tokens, V vocab; masks are bool.
Masked positions contribute exactly nothing, even when they hold -inf or NaN: inputs are
replaced with torch.where before any arithmetic (multiplying by the mask would keep NaN,
and 0 * inf is NaN in the backward pass too).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
KLEstimator = Literal["k1", "k2", "k3"]

LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {}


def register_loss(name: str) -> Callable[[Callable[..., tuple]], Callable[..., tuple]]:
    """Decorator: make a loss `fn(logp, logp_old, adv, mask, **kw) -> (loss, metrics)` available."""

    def deco(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """Look up a registered loss; the error lists the known names."""
    if name not in LOSSES:
        raise ValueError(
            f"loss {name!r} is not registered; known: {', '.join(sorted(LOSSES))}. "
            f"Register your own with @register_loss."
        )
    return LOSSES[name]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:  # []
    """Mean of x over True positions of mask (0 when mask is empty); NaN outside mask is ignored."""
    total = torch.where(mask, x, torch.zeros_like(x)).sum()  # []
    return total / mask.sum().clamp(min=1)  # []


def aggregate(
    values: Tensor,  # [N, T] per-token values
    mask: Tensor,  # [N, T] bool
    *,
    mode: Aggregation,
    num_tokens: Tensor | float,  # [] global count of mask tokens (all micro-batches, all ranks)
    num_seqs: Tensor | float,  # [] global count of sequences
) -> Tensor:  # []
    """Reduce per-token values to a scalar with global normalisers (micro-batch invariant).

    token_mean: sum of masked values / num_tokens (every token weighs the same).
    seq_mean_token_mean: sum over sequences of their token mean / num_seqs.
    seq_mean_token_sum: sum over sequences of their token sum / num_seqs.
    """
    v = torch.where(mask, values, torch.zeros_like(values))  # [N, T]
    match mode:
        case "token_mean":
            return v.sum() / num_tokens  # []
        case "seq_mean_token_mean":
            per_seq = v.sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
            return per_seq.sum() / num_seqs  # []
        case "seq_mean_token_sum":
            return v.sum() / num_seqs  # []
        case _:
            raise ValueError(
                f"aggregation={mode!r} is not one of 'token_mean', 'seq_mean_token_mean', "
                f"'seq_mean_token_sum'."
            )


def kl_penalty(
    logp: Tensor,  # [N, T] policy log-probs of the sampled tokens
    logp_ref: Tensor,  # [N, T] reference log-probs of the same tokens
    *,
    estimator: KLEstimator,
) -> Tensor:  # [N, T]
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman's k1 / k2 / k3)."""
    log_ratio = logp_ref - logp  # [N, T] log(ref / pi)
    match estimator:
        case "k1":
            return -log_ratio  # [N, T]
        case "k2":
            return 0.5 * log_ratio.square()  # [N, T]
        case "k3":
            # exp(x) - x - 1 >= 0 for every x; expm1 keeps precision when ref ~ pi.
            return torch.expm1(log_ratio) - log_ratio  # [N, T]
        case _:
            raise ValueError(f"kl_estimator={estimator!r} is not one of 'k1', 'k2', 'k3'.")


def _zero_outside(x: Tensor, mask: Tensor) -> Tensor:  # [N, T]
    # torch.where's backward sends exactly 0 to unselected positions, so -inf / NaN
    # garbage there never reaches the gradient (x * mask would give NaN).
    return torch.where(mask, x, torch.zeros_like(x))


@register_loss("clipped_pg")
def clipped_pg_loss(
    logp: Tensor,  # [N, T] learner log-probs of the sampled tokens (requires grad)
    logp_old: Tensor,  # [N, T] log-probs of the policy that sampled (before this update)
    adv: Tensor,  # [N] one advantage per sequence (or [N, T] per token)
    mask: Tensor,  # [N, T] bool, True on response tokens
    *,
    clip_low: float,
    clip_high: float,
    num_tokens: Tensor | float,  # [] global mask-token count
    num_seqs: Tensor | float,  # [] global sequence count
    aggregation: Aggregation = "token_mean",
    logp_ref: Tensor | None = None,  # [N, T] frozen reference log-probs
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    tis_weight: Tensor | None = None,  # [N, T] detached truncated IS weights
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate, optionally IS-weighted, plus kl_coef * KL(pi || ref).

    Metrics are detached. "loss/total" is the returned loss itself (globally normalised, so
    it sums over micro-batches); the others are means over this call's mask tokens (the
    caller weights them by its token share). "loss/kl" is the unweighted KL mean, reported
    whenever logp_ref is given (0 without it).
    """
    if kl_coef > 0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref (reference log-probs); pass them or set kl_coef=0.")
    logp, logp_old = _zero_outside(logp, mask), _zero_outside(logp_old, mask)  # [N, T]
    ratio = torch.exp(logp - logp_old)  # [N, T]; 1 on masked positions
    a = adv[:, None] if adv.dim() == 1 else adv  # [N, 1] or [N, T]
    raw = ratio * a  # [N, T]
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * a  # [N, T]
    pg = -torch.minimum(raw, clipped)  # [N, T]
    if tis_weight is not None:
        pg = pg * _zero_outside(tis_weight.detach(), mask)  # [N, T]
    per_token = pg  # [N, T]
    kl = torch.zeros_like(pg)  # [N, T]
    if logp_ref is not None:
        kl = kl_penalty(logp, _zero_outside(logp_ref, mask), estimator=kl_estimator)  # [N, T]
        if kl_coef > 0:
            per_token = pg + kl_coef * kl  # [N, T]
    loss = aggregate(per_token, mask, mode=aggregation, num_tokens=num_tokens, num_seqs=num_seqs)  # []
    with torch.no_grad():
        metrics = {
            "loss/total": loss,
            "loss/pg": masked_mean(pg, mask),
            "loss/kl": masked_mean(kl, mask),
            "loss/clip_frac": masked_mean((clipped < raw).float(), mask),
            "loss/clip_frac_low": masked_mean(((ratio < 1 - clip_low) & (a < 0)).float(), mask),
            "loss/clip_frac_high": masked_mean(((ratio > 1 + clip_high) & (a > 0)).float(), mask),
            "loss/ratio_mean": masked_mean(ratio, mask),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def truncated_is_weights(
    logp_learner_old: Tensor,  # [N, T] learner log-probs before the update
    logp_gen: Tensor,  # [N, T] generator (e.g. vLLM) log-probs at sampling time
    mask: Tensor,  # [N, T] bool
    *,
    cap: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated IS weights w = min(pi_learner_old / pi_gen, cap), detached, 0 outside mask."""
    with torch.no_grad():
        log_w = _zero_outside(logp_learner_old, mask) - _zero_outside(logp_gen, mask)  # [N, T]
        w_raw = torch.exp(log_w)  # [N, T]
        w = _zero_outside(w_raw.clamp(max=cap), mask)  # [N, T]
        metrics = {
            "train/tis_weight_mean": masked_mean(w, mask),
            "train/tis_clip_frac": masked_mean((w_raw > cap).float(), mask),
        }
    return w, metrics


def entropy_from_logits(logits: Tensor) -> Tensor:  # [..., V] -> [...]
    """Entropy -sum p log p of softmax(logits), in fp32; -inf logits (banned tokens) are fine."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [..., V]
    p = logp.exp()  # [..., V]
    # p == 0 where logp == -inf; 0 * -inf is NaN, so zero those log-probs first.
    logp = torch.where(p > 0, logp, torch.zeros_like(logp))  # [..., V]
    return -(p * logp).sum(-1)  # [...]
