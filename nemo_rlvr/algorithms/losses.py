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
- Dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
  Reinforcement Learning", arXiv:1912.09729): for A < 0 a huge ratio makes -ratio * A
  unbounded; `clip_c` caps the per-token loss at -clip_c * A (no gradient there).
- GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071): one
  length-normalised ratio per sequence, s = exp(mean_t(logp - logp_old)), clipped per
  sequence; drops PPO's per-token ratios, whose noise grows with the length and which do not
  match a sequence-level reward. Its clip ranges are ~1e-3 (the paper: 3e-4 / 4e-4).
- CISPO (MiniMax 2025, "MiniMax-M1", arXiv:2506.13585): REINFORCE with the clipped ratio as a
  detached weight, -sg(clip(ratio)) * A * logp; drops PPO's min(), which zeroes the gradient
  of clipped tokens (often the rare "fork" tokens of a reasoning chain), so every token
  keeps learning and only the size of its step is bounded.
- Entropy bonus (Williams & Peng 1991; PPO's c2 * S term): loss -= entropy_coef * H.
- Clipped value loss (PPO2, as in OpenAI baselines): 0.5 * max((V - R)^2, (V_clip - R)^2).

Every policy loss in LOSSES has one keyword signature, so the learner calls
`get_loss(name)(logp, logp_old, adv, mask, **kw)` with the same `kw`: clip_low, clip_high,
num_tokens, num_seqs, aggregation, logp_ref, kl_coef, kl_estimator, tis_weight, clip_c,
entropy, entropy_coef. A loss that cannot honour one raises ValueError (never ignores it
silently), except `aggregation` for GSPO, which is sequence-level by definition.

Every function is tensors in, tensors out: no config, no I/O, no torch.distributed. The
caller passes the GLOBAL normalisers `num_tokens` / `num_seqs` (over all micro-batches and
data-parallel ranks), so summing the per-micro-batch losses gives the whole-batch loss and
sharding never changes it. Dims: N sequences, T response tokens, V vocab; masks are bool.
Masked positions contribute exactly nothing, even when they hold -inf or NaN: inputs are
replaced with torch.where before any arithmetic (multiplying by the mask would keep NaN,
and 0 * inf is NaN in the backward pass too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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


def _add_regularisers(
    per_token: Tensor,  # [N, T] policy-gradient term
    logp: Tensor,  # [N, T] learner log-probs, already 0 outside mask
    mask: Tensor,  # [N, T] bool
    *,
    logp_ref: Tensor | None,  # [N, T]
    kl_coef: float,
    kl_estimator: KLEstimator,
    entropy: Tensor | None,  # [N, T] per-token entropy (with grad)
    entropy_coef: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """per_token + kl_coef * KL(pi || ref) - entropy_coef * H, and the unweighted means."""
    if kl_coef > 0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref (reference log-probs); pass them or set kl_coef=0.")
    if entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy [N, T] (per-token entropy with grad, "
                         f"entropy_from_logits); pass it or set entropy_coef=0.")
    kl = torch.zeros_like(per_token)  # [N, T]
    if logp_ref is not None:
        kl = kl_penalty(logp, _zero_outside(logp_ref, mask), estimator=kl_estimator)  # [N, T]
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl  # [N, T]
    metrics = {"loss/kl": masked_mean(kl, mask)}
    if entropy is not None:
        ent = _zero_outside(entropy, mask)  # [N, T]
        if entropy_coef != 0:
            per_token = per_token - entropy_coef * ent  # [N, T]
        metrics["loss/entropy"] = masked_mean(ent, mask)
    return per_token, metrics


def _reject_dual_clip(loss: str, clip_c: float | None) -> None:
    if clip_c is not None:
        raise ValueError(f"clip_c={clip_c}: dual-clip is defined for the PPO surrogate only, not for "
                         f"{loss!r}; set clip_c=None or use loss 'ppo_clip'.")


@register_loss("ppo_clip")
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
    clip_c: float | None = None,
    entropy: Tensor | None = None,  # [N, T] per-token entropy (with grad)
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate, optionally dual-clipped and IS-weighted, + KL - entropy bonus.

    clip_c (> 1, Ye et al. use 3) bounds the per-token loss of A < 0 tokens by -clip_c * A.
    Metrics are detached. "loss/total" is the returned loss itself (globally normalised, so
    it sums over micro-batches); the others are means over this call's mask tokens (the
    caller weights them by its token share). "loss/kl" is the unweighted KL mean, reported
    whenever logp_ref is given (0 without it); "loss/entropy" whenever entropy is given;
    "loss/dual_clip_frac" whenever clip_c is set.
    """
    if clip_c is not None and not clip_c > 1:
        raise ValueError(f"clip_c={clip_c}: the dual-clip bound must be > 1 (Ye et al. use 3.0); "
                         f"set clip_c=None to disable dual-clip.")
    logp, logp_old = _zero_outside(logp, mask), _zero_outside(logp_old, mask)  # [N, T]
    ratio = torch.exp(logp - logp_old)  # [N, T]; 1 on masked positions
    a = adv[:, None] if adv.dim() == 1 else adv  # [N, 1] or [N, T]
    raw = ratio * a  # [N, T]
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * a  # [N, T]
    pg = -torch.minimum(raw, clipped)  # [N, T]
    dual = torch.zeros_like(mask)  # [N, T] bool
    if clip_c is not None:
        bound = -clip_c * a  # [N, 1] or [N, T]; > 0 where A < 0
        dual = (a < 0) & (pg > bound)  # [N, T]
        pg = torch.where(dual, bound, pg)  # [N, T]; the bound is constant: no gradient there
    loss, pg, metrics = _token_loss(pg, logp, mask, tis_weight=tis_weight, logp_ref=logp_ref, kl_coef=kl_coef,
                                    kl_estimator=kl_estimator, entropy=entropy, entropy_coef=entropy_coef,
                                    aggregation=aggregation, num_tokens=num_tokens, num_seqs=num_seqs)
    with torch.no_grad():
        metrics |= {
            "loss/clip_frac": masked_mean((clipped < raw).float(), mask),
            "loss/clip_frac_low": masked_mean(((ratio < 1 - clip_low) & (a < 0)).float(), mask),
            "loss/clip_frac_high": masked_mean(((ratio > 1 + clip_high) & (a > 0)).float(), mask),
            "loss/ratio_mean": masked_mean(ratio, mask),
        }
        if clip_c is not None:
            metrics["loss/dual_clip_frac"] = masked_mean(dual.float(), mask)
    return loss, {k: v.detach() for k, v in metrics.items()}


def _token_loss(pg: Tensor, logp: Tensor, mask: Tensor, *, tis_weight: Tensor | None, logp_ref: Tensor | None,
                kl_coef: float, kl_estimator: KLEstimator, entropy: Tensor | None, entropy_coef: float,
                aggregation: Aggregation, num_tokens: Tensor | float, num_seqs: Tensor | float,
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The tail every token-level loss shares: the per-token policy term `pg` [N, T] weighted by
    the truncated IS weights, plus the KL and entropy terms, aggregated. Returns (loss [], the
    weighted pg [N, T], metrics: loss/total, loss/pg and the regularisers')."""
    if tis_weight is not None:
        pg = pg * _zero_outside(tis_weight.detach(), mask)  # [N, T]
    per_token, reg = _add_regularisers(pg, logp, mask, logp_ref=logp_ref, kl_coef=kl_coef,
                                       kl_estimator=kl_estimator, entropy=entropy,
                                       entropy_coef=entropy_coef)  # [N, T]
    loss = aggregate(per_token, mask, mode=aggregation, num_tokens=num_tokens, num_seqs=num_seqs)  # []
    with torch.no_grad():
        metrics = {"loss/total": loss, "loss/pg": masked_mean(pg, mask), **reg}
    return loss, pg, metrics


@register_loss("gspo")
def gspo_loss(
    logp: Tensor,  # [N, T] learner log-probs of the sampled tokens (requires grad)
    logp_old: Tensor,  # [N, T] log-probs of the policy that sampled
    adv: Tensor,  # [N] one advantage per sequence ([N, T]: its masked mean per row is used)
    mask: Tensor,  # [N, T] bool, True on response tokens
    *,
    clip_low: float,
    clip_high: float,
    num_tokens: Tensor | float,  # [] global mask-token count (unused: GSPO averages sequences)
    num_seqs: Tensor | float,  # [] global sequence count
    aggregation: Aggregation = "token_mean",  # ignored: GSPO is a mean over sequences
    logp_ref: Tensor | None = None,  # [N, T]
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    tis_weight: Tensor | None = None,  # must be None (token weights have no sequence meaning)
    clip_c: float | None = None,  # must be None
    entropy: Tensor | None = None,  # [N, T]
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: -min(s A, clip(s, 1 - clip_low, 1 + clip_high) A) per sequence, summed / num_seqs.

    s = exp(mean over the sequence's mask of (logp - logp_old)). `aggregation` is ignored;
    the KL and entropy terms are per-token and reduced as seq_mean_token_mean, so every
    sequence weighs the same in all terms. A row with no mask token contributes nothing.
    Metrics (detached): "loss/total" (the loss), and over this call's sequences "loss/pg",
    "loss/clip_frac" (share of sequences clipped), "loss/ratio_mean" (mean s); "loss/kl".
    """
    _reject_dual_clip("gspo", clip_c)
    if tis_weight is not None:
        raise ValueError("gspo uses one ratio per sequence; token-level truncated IS weights "
                         "(tis_weight) are not defined for it. Disable them (tis_cap=None) or use "
                         "'ppo_clip' / 'cispo'.")
    logp, logp_old = _zero_outside(logp, mask), _zero_outside(logp_old, mask)  # [N, T]
    lengths = mask.sum(-1)  # [N]
    valid = lengths > 0  # [N]
    log_s = (logp - logp_old).sum(-1) / lengths.clamp(min=1)  # [N]
    s = torch.exp(log_s)  # [N]; 1 on empty rows
    a = adv if adv.dim() == 1 else _zero_outside(adv, mask).sum(-1) / lengths.clamp(min=1)  # [N]
    raw = s * a  # [N]
    clipped = s.clamp(1 - clip_low, 1 + clip_high) * a  # [N]
    pg = torch.where(valid, -torch.minimum(raw, clipped), torch.zeros_like(raw))  # [N]
    reg, reg_metrics = _add_regularisers(torch.zeros_like(logp), logp, mask, logp_ref=logp_ref,
                                         kl_coef=kl_coef, kl_estimator=kl_estimator, entropy=entropy,
                                         entropy_coef=entropy_coef)  # [N, T]
    loss = pg.sum() / num_seqs + aggregate(reg, mask, mode="seq_mean_token_mean",
                                           num_tokens=num_tokens, num_seqs=num_seqs)  # []
    with torch.no_grad():
        n = valid.sum().clamp(min=1)  # [] this call's non-empty sequences
        metrics = {
            "loss/total": loss,
            "loss/pg": pg.sum() / n,
            **reg_metrics,
            "loss/clip_frac": ((clipped < raw) & valid).sum() / n,
            "loss/ratio_mean": torch.where(valid, s, torch.zeros_like(s)).sum() / n,
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


@register_loss("cispo")
def cispo_loss(
    logp: Tensor,  # [N, T] learner log-probs of the sampled tokens (requires grad)
    logp_old: Tensor,  # [N, T] log-probs of the policy that sampled
    adv: Tensor,  # [N] one advantage per sequence (or [N, T] per token)
    mask: Tensor,  # [N, T] bool, True on response tokens
    *,
    clip_low: float,
    clip_high: float,
    num_tokens: Tensor | float,  # [] global mask-token count
    num_seqs: Tensor | float,  # [] global sequence count
    aggregation: Aggregation = "token_mean",
    logp_ref: Tensor | None = None,  # [N, T]
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    tis_weight: Tensor | None = None,  # [N, T] detached truncated IS weights
    clip_c: float | None = None,  # must be None
    entropy: Tensor | None = None,  # [N, T]
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO: per token -sg(clamp(ratio, 1 - clip_low, 1 + clip_high)) * A * logp, aggregated.

    The gradient w.r.t. logp of a token is -w * A / num_tokens (token_mean) even where the
    ratio is clipped. The loss VALUE is not a surrogate of the return (it contains logp), so
    compare runs by reward, not by "loss/pg". Metrics (detached) as clipped_pg_loss:
    "loss/clip_frac" is the share of tokens whose weight was clipped.
    """
    _reject_dual_clip("cispo", clip_c)
    logp, logp_old = _zero_outside(logp, mask), _zero_outside(logp_old, mask)  # [N, T]
    ratio = torch.exp(logp - logp_old).detach()  # [N, T]; 1 on masked positions
    a = adv[:, None] if adv.dim() == 1 else adv  # [N, 1] or [N, T]
    w = ratio.clamp(1 - clip_low, 1 + clip_high)  # [N, T] stop-gradient weight
    pg = -(w * a) * logp  # [N, T]
    loss, pg, metrics = _token_loss(pg, logp, mask, tis_weight=tis_weight, logp_ref=logp_ref, kl_coef=kl_coef,
                                    kl_estimator=kl_estimator, entropy=entropy, entropy_coef=entropy_coef,
                                    aggregation=aggregation, num_tokens=num_tokens, num_seqs=num_seqs)
    with torch.no_grad():
        metrics |= {
            "loss/clip_frac": masked_mean((w != ratio).float(), mask),
            "loss/ratio_mean": masked_mean(ratio, mask),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def value_loss(
    values: Tensor,  # [N, T] critic values of the response tokens (requires grad)
    old_values: Tensor,  # [N, T] critic values at rollout time
    returns: Tensor,  # [N, T] targets (gae_advantages' returns)
    mask: Tensor,  # [N, T] bool
    *,
    clip_range: float | None,
    num_tokens: Tensor | float,  # [] global mask-token count
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO2 value loss: 0.5 * max((V - R)^2, (V_old + clamp(V - V_old, -c, c) - R)^2), sum / num_tokens.

    clip_range=None gives the plain 0.5 * (V - R)^2. "loss/value" is the loss (globally
    normalised: sums over micro-batches); "loss/value_clip_frac" is the share of this call's
    tokens where the clipped term is the larger one (no gradient there).
    """
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range={clip_range}: the value clip range must be > 0 (PPO uses 0.2), "
                         f"or None to disable value clipping.")
    v = _zero_outside(values, mask)  # [N, T]
    old = _zero_outside(old_values.detach(), mask)  # [N, T]
    ret = _zero_outside(returns.detach(), mask)  # [N, T]
    per_token = (v - ret).square()  # [N, T]
    clip_more = torch.zeros_like(mask)  # [N, T] bool
    if clip_range is not None:
        v_clip = old + (v - old).clamp(-clip_range, clip_range)  # [N, T]
        clipped = (v_clip - ret).square()  # [N, T]
        clip_more = clipped > per_token  # [N, T]
        per_token = torch.maximum(per_token, clipped)  # [N, T]
    loss = 0.5 * _zero_outside(per_token, mask).sum() / num_tokens  # []
    metrics = {"loss/value": loss.detach(), "loss/value_clip_frac": masked_mean(clip_more.float(), mask)}
    return loss, metrics


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
