"""Losses against hand-worked numbers (arithmetic in the comments)."""

import math

import pytest
import torch

from nemo_rlvr.algorithms.losses import (
    LOSSES,
    aggregate,
    clipped_pg_loss,
    entropy_from_logits,
    get_loss,
    kl_penalty,
    masked_mean,
    truncated_is_weights,
)

# torch.testing.assert_close lazily imports sympy (~2 s) on its first call; pay that once
# at collection so no single test goes over the 1 s unit-test budget.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

LN2 = math.log(2.0)  # .693147
NAN, INF = float("nan"), float("inf")


def check(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=1e-5)


def log_ratios(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """logp (requires grad) and logp_old = 0 such that exp(logp - logp_old) = ratios."""
    logp = torch.tensor(ratios).log().requires_grad_()  # [N, T]
    return logp, torch.zeros_like(logp)


def test_ratio_one_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.9]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = torch.tensor([1.0, -2.0])
    loss, m = clipped_pg_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.2,
                              num_tokens=4, num_seqs=2)
    # ratio 1 everywhere: per-token -A = [-1,-1,-1 | 2]; sum -1 over 4 tokens = -.25
    # = -mean(A over tokens) = -(1+1+1-2)/4
    check(loss, -0.25)
    check(m["loss/pg"], -0.25)
    check(m["loss/total"], -0.25)
    check(m["loss/ratio_mean"], 1.0)
    for k in ("loss/clip_frac", "loss/clip_frac_low", "loss/clip_frac_high", "loss/kl"):
        check(m[k], 0.0)
    assert all(not v.requires_grad for v in m.values())


def test_clip_low_and_high_with_gradients():
    # row 0 A=+1, ratios [1.5, .5]; row 1 A=-1, ratios [.5, 1.5]; clip [.8, 1.2]
    logp, logp_old = log_ratios([[1.5, 0.5], [0.5, 1.5]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, m = clipped_pg_loss(logp, logp_old, torch.tensor([1.0, -1.0]), mask,
                              clip_low=0.2, clip_high=0.2, num_tokens=4, num_seqs=2)
    # (0,0) r=1.5 A=+1: min(1.5, 1.2) = 1.2   clipped high -> pg -1.2
    # (0,1) r=.5  A=+1: min(.5, .8)   = .5    raw          -> pg -.5
    # (1,0) r=.5  A=-1: min(-.5, -.8) = -.8   clipped low  -> pg .8
    # (1,1) r=1.5 A=-1: min(-1.5,-1.2)= -1.5  raw          -> pg 1.5
    # loss = (-1.2 - .5 + .8 + 1.5)/4 = .6/4 = .15
    check(loss, 0.15)
    check(m["loss/clip_frac"], 0.5)
    check(m["loss/clip_frac_low"], 0.25)
    check(m["loss/clip_frac_high"], 0.25)
    check(m["loss/ratio_mean"], 1.0)  # (1.5 + .5 + .5 + 1.5)/4
    loss.backward()
    # clipped tokens: constant in logp -> 0; raw tokens: d(-A*r/4)/dlogp = -A*r/4
    # (0,1): -1*.5/4 = -.125; (1,1): +1*1.5/4 = .375
    check(logp.grad, [[0.0, -0.125], [0.0, 0.375]])


def test_clip_higher_asymmetry():
    # row 0 A=+1 ratio 1.25; row 1 A=-1 ratio .75
    mask = torch.ones(2, 1, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    logp, logp_old = log_ratios([[1.25], [0.75]])
    loss, m = clipped_pg_loss(logp, logp_old, adv, mask, clip_low=0.2, clip_high=0.28,
                              num_tokens=2, num_seqs=2)
    # asymmetric: 1.25 < 1.28 -> raw, pg -1.25; .75 < .8 with A<0 -> min(-.75,-.8) = -.8, pg .8
    # loss = (-1.25 + .8)/2 = -.225; only the low side clipped
    check(loss, -0.225)
    check(m["loss/clip_frac"], 0.5)
    check(m["loss/clip_frac_high"], 0.0)
    check(m["loss/clip_frac_low"], 0.5)
    loss.backward()
    check(logp.grad, [[-0.625], [0.0]])  # -A*r/2 = -1.25/2 on the raw token
    logp, logp_old = log_ratios([[1.25], [0.75]])
    loss_sym, m_sym = clipped_pg_loss(logp, logp_old, adv, mask, clip_low=0.2, clip_high=0.2,
                                      num_tokens=2, num_seqs=2)
    # symmetric .2: 1.25 -> 1.2 clipped, pg -1.2; loss = (-1.2 + .8)/2 = -.2
    check(loss_sym, -0.2)
    check(m_sym["loss/clip_frac"], 1.0)
    check(m_sym["loss/clip_frac_high"], 0.5)
    loss_sym.backward()
    check(logp.grad, [[0.0], [0.0]])


def test_masked_garbage_changes_nothing():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([1.0, -2.0])
    clean = torch.tensor([[-1.0, -2.0, 0.0], [-0.3, 0.0, 0.0]])
    garbage = torch.tensor([[-1.0, -2.0, -INF], [-0.3, NAN, INF]])
    results = []
    for lp in (clean, garbage):
        logp = lp.clone().requires_grad_()
        loss, m = clipped_pg_loss(
            logp, lp.clone(), adv, mask, clip_low=0.2, clip_high=0.2, num_tokens=3, num_seqs=2,
            aggregation="seq_mean_token_mean", logp_ref=lp.clone(), kl_coef=0.1,
            tis_weight=torch.where(mask, 1.0, NAN))
        loss.backward()
        results.append((loss, m, logp.grad))
    # ratio 1, KL 0, weight 1: per-token -A = [-1,-1 | 2]; seq means [-1, 2] -> (-1 + 2)/2 = .5
    check(results[1][0], 0.5)
    torch.testing.assert_close(results[1][0], results[0][0])
    for k in results[0][1]:
        torch.testing.assert_close(results[1][1][k], results[0][1][k])
    # grad on kept tokens -A*r/(seq len)/num_seqs: row 0 -1/2/2 = -.25; row 1 2/1/2 = 1
    check(results[1][2], [[-0.25, -0.25, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, whole, parts",
    [
        # masked [[1,2,-],[4,-,-]]; 3 tokens, 2 seqs
        ("token_mean", 7 / 3, [3 / 3, 4 / 3]),  # (1+2+4)/3; rows 3/3 and 4/3
        ("seq_mean_token_mean", 2.75, [0.75, 2.0]),  # (3/2 + 4/1)/2; rows 1.5/2 and 4/2
        ("seq_mean_token_sum", 3.5, [1.5, 2.0]),  # (3 + 4)/2; rows 3/2 and 4/2
    ],
)
def test_aggregate_modes_and_micro_batch_invariance(mode, whole, parts):
    values = torch.tensor([[1.0, 2.0, NAN], [4.0, 5.0, INF]])  # masked slots hold garbage
    mask = torch.tensor([[True, True, False], [True, False, False]])
    kw = dict(mode=mode, num_tokens=3, num_seqs=2)  # global normalisers
    check(aggregate(values, mask, **kw), whole)
    split = [aggregate(values[i : i + 1], mask[i : i + 1], **kw) for i in range(2)]
    check(torch.stack(split), parts)
    check(split[0] + split[1], whole)


def test_aggregate_unknown_mode_lists_options():
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), mode="sum",
                  num_tokens=1, num_seqs=1)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_clipped_pg_loss_micro_batch_invariance(aggregation):
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 5, generator=g)).requires_grad_()  # [N, T]
    logp_old = logp.detach() + 0.3 * torch.randn(4, 5, generator=g)  # [N, T] ratios off 1
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 1])[:, None]  # [N, T] ragged
    logp_ref = logp_old - 0.1  # [N, T]
    kw = dict(clip_low=0.2, clip_high=0.28, num_tokens=mask.sum(), num_seqs=4,
              aggregation=aggregation, kl_coef=0.05)  # global normalisers
    whole, _ = clipped_pg_loss(logp, logp_old, adv, mask, logp_ref=logp_ref, **kw)
    (grad_whole,) = torch.autograd.grad(whole, logp)
    outs = [clipped_pg_loss(logp[s], logp_old[s], adv[s], mask[s], logp_ref=logp_ref[s], **kw)
            for s in (slice(0, 2), slice(2, 4))]
    halves = [loss for loss, _ in outs]
    (grad_split,) = torch.autograd.grad(halves[0] + halves[1], logp)
    torch.testing.assert_close(halves[0] + halves[1], whole)
    # "loss/total" is the globally normalised loss, so it sums over micro-batches too
    torch.testing.assert_close(outs[0][1]["loss/total"] + outs[1][1]["loss/total"], whole.detach())
    torch.testing.assert_close(grad_split, grad_whole)


def test_kl_estimators_on_concrete_numbers():
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    logp_ref = torch.tensor([math.log(0.25), math.log(0.5)])
    # token 0: logp - ref = ln2;  token 1: logp - ref = -ln2
    # k1 = logp - ref = [.693147, -.693147]  (k1 can be negative)
    check(kl_penalty(logp, logp_ref, estimator="k1"), [LN2, -LN2])
    # k2 = .5 * ln2^2 = .5 * .480453 = .240227 for both
    check(kl_penalty(logp, logp_ref, estimator="k2"), [0.240227, 0.240227])
    # k3 = exp(ref - logp) - (ref - logp) - 1:
    #   token 0: .5 - (-.693147) - 1 = .193147; token 1: 2 - .693147 - 1 = .306853
    check(kl_penalty(logp, logp_ref, estimator="k3"), [0.193147, 0.306853])
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(logp, logp_ref, estimator="k4")


def test_k3_is_never_negative_and_zero_at_equality():
    x = torch.linspace(-20, 20, 4001)  # log-ratio grid
    k3 = kl_penalty(torch.zeros_like(x), x, estimator="k3")
    assert (k3 >= 0).all()
    assert kl_penalty(x, x, estimator="k3").abs().max() == 0  # exp(0) - 0 - 1 == 0 exactly


def test_kl_term_added_with_coef():
    logp = torch.full((1, 2), math.log(0.5), requires_grad=True)
    logp_ref = torch.full((1, 2), math.log(0.25))
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, m = clipped_pg_loss(logp, logp.detach(), torch.tensor([1.0]), mask, clip_low=0.2,
                              clip_high=0.2, num_tokens=2, num_seqs=1, logp_ref=logp_ref,
                              kl_coef=0.1, kl_estimator="k3")
    # per token: pg -1 (ratio 1, A 1) + .1 * k3 .193147 = -.980685; mean over 2 = -.980685
    check(loss, -0.980685)
    check(m["loss/pg"], -1.0)
    check(m["loss/kl"], 0.193147)  # unweighted
    check(m["loss/total"], -0.980685)
    loss.backward()
    # d/dlogp: pg -A*r = -1; k3' = 1 - exp(ref - logp) = 1 - .5 = .5 -> .1*.5 = .05
    # per token (-1 + .05)/2 = -.475
    check(logp.grad, [[-0.475, -0.475]])
    with pytest.raises(ValueError, match="logp_ref"):
        clipped_pg_loss(logp, logp.detach(), torch.tensor([1.0]), mask, clip_low=0.2,
                        clip_high=0.2, num_tokens=2, num_seqs=1, kl_coef=0.1)


def test_truncated_is_weights_cap():
    mask = torch.tensor([[True, True, True, False]])
    logp_gen = torch.zeros(1, 4)
    logp_learner_old = torch.tensor([[math.log(0.5), math.log(3.0), math.log(1.5), NAN]])
    w, m = truncated_is_weights(logp_learner_old, logp_gen, mask, cap=2.0)
    # exp(diff) = [.5, 3, 1.5, -]; min(., 2) = [.5, 2, 1.5]; masked -> 0
    check(w, [[0.5, 2.0, 1.5, 0.0]])
    assert not w.requires_grad
    check(m["train/tis_weight_mean"], 4 / 3)  # (.5 + 2 + 1.5)/3
    check(m["train/tis_clip_frac"], 1 / 3)  # only 3 > 2
    # used in the loss: ratio 1, A 1 -> pg = -w = [-.5, -2, -1.5]; mean over 3 = -4/3
    logp = torch.zeros(1, 4)
    loss, _ = clipped_pg_loss(logp, logp, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.2,
                              num_tokens=3, num_seqs=1, tis_weight=w)
    check(loss, -4 / 3)


def test_entropy_from_logits():
    logits = torch.tensor([
        [0.0, 0.0, 0.0, 0.0],  # uniform over 4: ln 4 = 1.386294
        [0.0, -INF, 0.0, 0.0],  # uniform over 3: ln 3 = 1.098612
        [math.log(3.0), 0.0, -INF, -INF],  # p = [.75, .25]: .75*.287682 + .25*1.386294 = .562335
        [5.0, -INF, -INF, -INF],  # one token certain: 0
    ], requires_grad=True)
    ent = entropy_from_logits(logits)
    check(ent, [1.386294, 1.098612, 0.562335, 0.0])
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert entropy_from_logits(torch.zeros(2, 3, dtype=torch.bfloat16)).dtype == torch.float32


def test_masked_mean():
    x = torch.tensor([1.0, NAN, 3.0])
    check(masked_mean(x, torch.tensor([True, False, True])), 2.0)  # (1 + 3)/2
    check(masked_mean(x, torch.zeros(3, dtype=torch.bool)), 0.0)  # empty mask -> 0, not NaN


def test_loss_registry():
    assert LOSSES["clipped_pg"] is clipped_pg_loss
    assert get_loss("clipped_pg") is clipped_pg_loss
    with pytest.raises(ValueError, match="known: cispo, clipped_pg, gspo, ppo_clip"):
        get_loss("cispo_typo")
