"""Dual-clip PPO, entropy bonus, GSPO, CISPO and the value loss against hand-worked numbers."""

import pytest
import torch

from nemo_rlvr.algorithms.losses import (
    LOSSES,
    cispo_loss,
    clipped_pg_loss,
    get_loss,
    gspo_loss,
    value_loss,
)

# torch.testing.assert_close lazily imports sympy (~2 s) on its first call; pay that once
# at collection so no single test goes over the 1 s unit-test budget.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

NAN = float("nan")
T_, F_ = True, False


def check(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=1e-5)


def log_ratios(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """logp (requires grad) and logp_old = 0 such that exp(logp - logp_old) = ratios."""
    logp = torch.tensor(ratios).log().requires_grad_()  # [N, T]
    return logp, torch.zeros_like(logp)


# ---------------------------------------------------------------------------- dual clip

def test_dual_clip_bounds_negative_advantage_with_large_ratio():
    # row 0 A=-1 ratios [5, 2]; row 1 A=+1 ratios [5, .5]; clip [.8, 1.2], clip_c 3
    mask = torch.ones(2, 2, dtype=torch.bool)
    adv = torch.tensor([-1.0, 1.0])
    kw = {"clip_low": 0.2, "clip_high": 0.2, "num_tokens": 4, "num_seqs": 2}
    logp, logp_old = log_ratios([[5.0, 2.0], [5.0, 0.5]])
    plain, m_plain = clipped_pg_loss(logp, logp_old, adv, mask, **kw)
    # without clip_c, per token max(-r A, -clip(r) A):
    #   (0,0) max(5, 1.2) = 5; (0,1) max(2, 1.2) = 2; (1,0) -min(5, 1.2) = -1.2; (1,1) -min(.5,.8) = -.5
    #   loss = (5 + 2 - 1.2 - .5)/4 = 5.3/4 = 1.325
    check(plain, 1.325)
    assert "loss/dual_clip_frac" not in m_plain
    plain.backward()
    check(logp.grad[0, 0], 1.25)  # raw token: d(-r A)/dlogp / 4 = 5/4
    logp, logp_old = log_ratios([[5.0, 2.0], [5.0, 0.5]])
    dual, m = clipped_pg_loss(logp, logp_old, adv, mask, clip_c=3.0, **kw)
    # with clip_c 3, A<0 tokens are capped at -3 A = 3: (0,0) min(5, 3) = 3; (0,1) min(2, 3) = 2
    # A>0 tokens unchanged; loss = (3 + 2 - 1.2 - .5)/4 = 3.3/4 = .825  (.5 below the plain 1.325)
    check(dual, 0.825)
    check(m["loss/dual_clip_frac"], 0.25)  # 1 of 4 tokens
    check(m["loss/pg"], 0.825)
    dual.backward()
    # (0,0) capped: constant -> 0; (0,1) raw r=2, A=-1: d(-rA)/dlogp = r -> 2/4 = .5
    # (1,0) clipped high -> 0; (1,1) raw r=.5, A=1: -r -> -.5/4 = -.125
    check(logp.grad, [[0.0, 0.5], [0.0, -0.125]])


@pytest.mark.parametrize("clip_c", [1.0, 0.5, -3.0])
def test_dual_clip_must_exceed_one(clip_c):
    logp = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="clip_c"):
        clipped_pg_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 1, dtype=torch.bool),
                        clip_low=0.2, clip_high=0.2, num_tokens=1, num_seqs=1, clip_c=clip_c)


def test_registry_names():
    assert LOSSES["ppo_clip"] is clipped_pg_loss
    assert LOSSES["clipped_pg"] is clipped_pg_loss
    assert get_loss("gspo") is gspo_loss
    assert get_loss("cispo") is cispo_loss


# ---------------------------------------------------------------------------- entropy bonus

ENT_MASK = [[T_, T_, F_], [T_, F_, F_]]
ENTROPY = [[1.0, 0.5, NAN], [2.0, NAN, NAN]]  # masked slots hold garbage
# token mean of entropy: (1 + .5 + 2)/3 = 3.5/3 = 1.166667
# seq_mean_token_mean: ((1 + .5)/2 + 2/1)/2 = (.75 + 2)/2 = 1.375


@pytest.mark.parametrize("aggregation, ent_agg", [("token_mean", 3.5 / 3), ("seq_mean_token_mean", 1.375)])
def test_entropy_bonus_changes_loss_by_coef_times_mean_entropy(aggregation, ent_agg):
    mask = torch.tensor(ENT_MASK)
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.3, 0.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    entropy = torch.tensor(ENTROPY, requires_grad=True)
    kw = {"clip_low": 0.2, "clip_high": 0.2, "num_tokens": 3, "num_seqs": 2, "aggregation": aggregation}
    base, _ = clipped_pg_loss(logp, logp, adv, mask, **kw)
    bonus, m = clipped_pg_loss(logp, logp, adv, mask, entropy=entropy, entropy_coef=0.01, **kw)
    # ratio 1: token_mean pg = (-1 - 1 + 2)/3 = 0; seq_mean_token_mean pg = (-1 + 2)/2 = .5
    check(base, 0.0 if aggregation == "token_mean" else 0.5)
    check(bonus - base, -0.01 * ent_agg)  # loss -= coef * (same aggregation of entropy)
    check(m["loss/entropy"], 3.5 / 3)  # metric: plain token mean
    bonus.backward()
    # d loss / d H = -coef / 3 per token (token_mean), -coef / len / 2 (seq mean); 0 on garbage
    if aggregation == "token_mean":
        check(entropy.grad, [[-0.01 / 3, -0.01 / 3, 0.0], [-0.01 / 3, 0.0, 0.0]])
    else:
        check(entropy.grad, [[-0.0025, -0.0025, 0.0], [-0.005, 0.0, 0.0]])


def test_entropy_coef_needs_entropy():
    logp = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="entropy"):
        clipped_pg_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 1, dtype=torch.bool),
                        clip_low=0.2, clip_high=0.2, num_tokens=1, num_seqs=1, entropy_coef=0.01)


# ---------------------------------------------------------------------------- GSPO

def gspo_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # row 0: 2 tokens, log-ratios [.4, .2] (NaN garbage in the masked slot); row 1: 3 tokens
    logp = torch.tensor([[0.4, 0.2, NAN], [0.3, -0.6, 0.0]], requires_grad=True)
    return logp, torch.zeros(2, 3), torch.tensor([1.0, -2.0]), torch.tensor([[T_, T_, F_], [T_, T_, T_]])


def test_gspo_sequence_ratio_and_clip():
    logp, logp_old, adv, mask = gspo_inputs()
    loss, m = gspo_loss(logp, logp_old, adv, mask, clip_low=0.2, clip_high=0.2, num_tokens=5, num_seqs=2)
    # row 0: mean log-ratio (.4 + .2)/2 = .3, s0 = e^.3 = 1.349859; A=+1: min(1.349859, 1.2) = 1.2
    #   -> clipped, pg0 = -1.2
    # row 1: mean (.3 - .6 + 0)/3 = -.1, s1 = e^-.1 = .904837 in [.8, 1.2]; A=-2: pg1 = 1.809675
    # loss = (-1.2 + 1.809675)/2 = .304837
    # (token-level PPO would instead clip row 1's first token, ratio e^.3 = 1.35 > 1.2)
    check(loss, 0.304837)
    check(m["loss/total"], 0.304837)
    check(m["loss/pg"], 0.304837)
    check(m["loss/clip_frac"], 0.5)  # 1 of 2 sequences
    check(m["loss/ratio_mean"], 1.127348)  # (1.349859 + .904837)/2
    loss.backward()
    # row 0 clipped -> 0; row 1: pg1 = -s1 A = 2 s1, ds1/dlogp_t = s1/3 -> 2 * s1/3 / 2 = s1/3 = .301612
    check(logp.grad, [[0.0, 0.0, 0.0], [0.301612, 0.301612, 0.301612]])


def test_gspo_micro_batches_and_empty_rows():
    logp, logp_old, adv, mask = gspo_inputs()
    kw = {"clip_low": 0.2, "clip_high": 0.2, "num_tokens": 5, "num_seqs": 2}
    # one row per call with the global num_seqs=2: row 0 -1.2/2 = -.6, row 1 1.809675/2 = .904837
    row0, _ = gspo_loss(logp[:1], logp_old[:1], adv[:1], mask[:1], **kw)
    row1, _ = gspo_loss(logp[1:], logp_old[1:], adv[1:], mask[1:], **kw)
    check(row0, -0.6)
    check(row1, 0.904837)
    # a row with no mask token adds nothing, whatever its advantage
    empty, _ = gspo_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([5.0]),
                         torch.zeros(1, 3, dtype=torch.bool), **kw)
    check(empty, 0.0)
    # per-token advantages are reduced to each row's masked mean: same numbers as [1, -2]
    tok_adv = torch.tensor([[1.0, 1.0, NAN], [-2.0, -2.0, -2.0]])
    loss, _ = gspo_loss(logp, logp_old, tok_adv, mask, **kw)
    check(loss, 0.304837)


def test_gspo_rejects_token_options_and_uses_seq_mean_for_entropy():
    logp, logp_old, adv, mask = gspo_inputs()
    kw = {"clip_low": 0.2, "clip_high": 0.2, "num_tokens": 5, "num_seqs": 2}
    with pytest.raises(ValueError, match="tis_weight"):
        gspo_loss(logp, logp_old, adv, mask, tis_weight=torch.ones(2, 3), **kw)
    with pytest.raises(ValueError, match="clip_c"):
        gspo_loss(logp, logp_old, adv, mask, clip_c=3.0, **kw)
    entropy = torch.tensor([[1.0, 0.5, NAN], [2.0, 2.0, 2.0]])
    loss, m = gspo_loss(logp, logp_old, adv, mask, entropy=entropy, entropy_coef=0.1,
                        aggregation="token_mean", **kw)  # aggregation is ignored
    # entropy seq_mean_token_mean: ((1 + .5)/2 + 6/3)/2 = (.75 + 2)/2 = 1.375
    # loss = .304837 - .1 * 1.375 = .167337
    check(loss, 0.167337)
    check(m["loss/entropy"], 1.5)  # metric: token mean (1 + .5 + 2 + 2 + 2)/5 = 7.5/5


# ---------------------------------------------------------------------------- CISPO

def test_cispo_weights_and_gradient_on_clipped_tokens():
    # row 0 A=+1 ratios [1.5, 1.1]; row 1 A=-1 ratios [.5, 1.0]; clip [.8, 1.2]
    # detached weights w = clamp(r, .8, 1.2) = [1.2, 1.1 | .8, 1.0]
    logp, logp_old = log_ratios([[1.5, 1.1], [0.5, 1.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    kw = {"clip_low": 0.2, "clip_high": 0.2, "num_tokens": 4, "num_seqs": 2}
    loss, m = cispo_loss(logp, logp_old, adv, mask, **kw)
    # per token -w A logp, logp = ln r:
    #   (0,0) -1.2 * 1 * ln1.5(.405465) = -.486558;  (0,1) -1.1 * ln1.1(.095310) = -.104841
    #   (1,0) -.8 * (-1) * ln.5(-.693147) = -.554518;  (1,1) ln 1 = 0 -> 0
    #   loss = (-.486558 - .104841 - .554518 + 0)/4 = -1.145917/4 = -.286479
    check(loss, -0.286479)
    check(m["loss/clip_frac"], 0.5)  # (0,0) above 1.2 and (1,0) below .8
    check(m["loss/ratio_mean"], 1.025)  # (1.5 + 1.1 + .5 + 1)/4
    loss.backward()
    # d/dlogp = -w A / 4: (0,0) -1.2/4 = -.3 (clipped, still learns); (0,1) -1.1/4 = -.275
    #   (1,0) +.8/4 = .2 (clipped, still learns); (1,1) +1/4 = .25
    check(logp.grad, [[-0.3, -0.275], [0.2, 0.25]])
    # PPO on the same tokens zeroes both clipped tokens' gradients
    logp_ppo, _ = log_ratios([[1.5, 1.1], [0.5, 1.0]])
    ppo, _ = clipped_pg_loss(logp_ppo, logp_old, adv, mask, **kw)
    ppo.backward()
    check(logp_ppo.grad, [[0.0, -0.275], [0.0, 0.25]])  # raw tokens: -A r/4


def test_cispo_masked_garbage_and_options():
    logp = torch.tensor([[-1.0, NAN]], requires_grad=True)
    mask = torch.tensor([[T_, F_]])
    loss, _ = cispo_loss(logp, torch.tensor([[-1.0, NAN]]), torch.tensor([2.0]), mask,
                         clip_low=0.2, clip_high=0.2, num_tokens=1, num_seqs=1,
                         tis_weight=torch.tensor([[0.5, NAN]]))
    # ratio 1, w 1, tis .5: -.5 * 1 * 2 * (-1) = 1; grad -.5 * 1 * 2 = -1; masked slot 0
    check(loss, 1.0)
    loss.backward()
    check(logp.grad, [[-1.0, 0.0]])
    with pytest.raises(ValueError, match="clip_c"):
        cispo_loss(logp, logp, torch.tensor([2.0]), mask, clip_low=0.2, clip_high=0.2,
                   num_tokens=1, num_seqs=1, clip_c=3.0)


def test_every_registered_loss_takes_the_learner_kwargs():
    # ratio 1 (logp = logp_old = -1), adv [1, -.5], mask [[T, T, F], [T, F, F]]
    logp = torch.tensor([[-1.0, -1.0, NAN], [-1.0, NAN, NAN]])
    mask = torch.tensor(ENT_MASK)
    kw = {"clip_low": 0.2, "clip_high": 0.28, "num_tokens": 3, "num_seqs": 2,
          "aggregation": "token_mean", "logp_ref": logp.clone(), "kl_coef": 0.1, "kl_estimator": "k3",
          "tis_weight": None, "clip_c": None, "entropy": torch.zeros(2, 3), "entropy_coef": 0.01}
    expected = {
        "clipped_pg": -0.5,  # -(1 + 1 - .5)/3
        "ppo_clip": -0.5,
        "cispo": 0.5,  # -w A logp = A per token: (1 + 1 - .5)/3
        "gspo": -0.25,  # s = 1: (-1 + .5)/2
    }
    assert set(LOSSES) == set(expected)
    for name, value in expected.items():
        loss, m = get_loss(name)(logp, logp, torch.tensor([1.0, -0.5]), mask, **kw)
        check(loss, value)  # KL 0 (ref == pi), entropy 0
        check(m["loss/kl"], 0.0)
        check(m["loss/entropy"], 0.0)


# ---------------------------------------------------------------------------- value loss

def test_value_loss_with_clipping():
    values = torch.tensor([[1.0, 2.0, 0.5, NAN]], requires_grad=True)
    old = torch.tensor([[0.5, 1.0, 0.5, NAN]])
    returns = torch.tensor([[1.5, 1.0, 0.0, NAN]])
    mask = torch.tensor([[T_, T_, T_, F_]])
    loss, m = value_loss(values, old, returns, mask, clip_range=0.2, num_tokens=3)
    # token 0: (1 - 1.5)^2 = .25; clipped V = .5 + clamp(.5, -.2, .2) = .7 -> (.7 - 1.5)^2 = .64 -> .64
    # token 1: (2 - 1)^2 = 1; clipped V = 1 + .2 = 1.2 -> (1.2 - 1)^2 = .04 -> 1
    # token 2: (.5 - 0)^2 = .25; clipped V = .5 + 0 -> .25 -> .25 (a tie is not "clipped")
    # loss = .5 * (.64 + 1 + .25)/3 = .5 * 1.89/3 = .315
    check(loss, 0.315)
    check(m["loss/value"], 0.315)
    check(m["loss/value_clip_frac"], 1 / 3)
    loss.backward()
    # token 0: clipped term, clamp saturated -> 0; token 1: .5 * 2 (2 - 1)/3 = 1/3
    # token 2: both terms .5 * 2 (.5 - 0)/3 = 1/6; the masked NaN slot gets 0
    check(values.grad, [[0.0, 1 / 3, 1 / 6, 0.0]])
    plain, m = value_loss(values, old, returns, mask, clip_range=None, num_tokens=3)
    # no clipping: .5 * (.25 + 1 + .25)/3 = .75/3 = .25
    check(plain, 0.25)
    check(m["loss/value_clip_frac"], 0.0)
    with pytest.raises(ValueError, match="clip_range"):
        value_loss(values, old, returns, mask, clip_range=0.0, num_tokens=3)
