"""Token-level advantages (GAE, REINFORCE++, whitening, dispatcher) against hand-worked numbers."""

import pytest
import torch

from nemo_rlvr.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    TOKEN_ADVANTAGE_ESTIMATORS,
    compute_advantages,
    gae_advantages,
    get_adv_estimator,
    kl_shaped_token_rewards,
    place_on_last_token,
    reinforce_pp_advantages,
    whiten,
)

# torch.testing.assert_close lazily imports sympy (~2 s) on its first call; pay that once
# at collection so no single test goes over the 1 s unit-test budget.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

NAN = float("nan")
T_, F_ = True, False


def check(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=1e-5)


def test_place_on_last_token():
    rewards = torch.tensor([1.5, -1.0, 3.0, 2.0])
    mask = torch.tensor([[T_, T_, F_], [F_, T_, T_], [F_, F_, F_], [T_, F_, F_]])
    # row 0 ends at 1, row 1 at 2, row 2 is empty (gets nothing), row 3 is position 0 only
    check(place_on_last_token(rewards, mask),
          [[0.0, 1.5, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    # integer rewards are promoted to float
    check(place_on_last_token(torch.tensor([1, 0]), mask[:2]), [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


# 5-step trajectory, reward 1 on the last token, gamma .9, lam .8 (gamma * lam = .72)
GAE_V = [0.5, 0.4, 0.6, 0.2, 0.3]
# deltas d_t = r_t + .9 V_{t+1} - V_t, V_5 = 0:
#   d4 = 1 + 0 - .3 = .7;  d3 = .9*.3 - .2 = .07;  d2 = .9*.2 - .6 = -.42
#   d1 = .9*.6 - .4 = .14;  d0 = .9*.4 - .5 = -.14
# A_t = d_t + .72 A_{t+1}:
#   A4 = .7;  A3 = .07 + .72*.7 = .574;  A2 = -.42 + .72*.574 = -.42 + .41328 = -.00672
#   A1 = .14 + .72*(-.00672) = .14 - .0048384 = .1351616
#   A0 = -.14 + .72*.1351616 = -.14 + .097316352 = -.042683648
GAE_ADV = [-0.042683648, 0.1351616, -0.00672, 0.574, 0.7]
# returns A + V = [.457316352, .5351616, .59328, .774, 1.0]; cross-check with the lambda-return
#   R3 = r3 + .9 ((1-.8) V4 + .8 R4) = .9 (.06 + .8) = .774
#   R2 = .9 (.2*.2 + .8*.774) = .9 * .6592 = .59328
GAE_RET = [0.457316352, 0.5351616, 0.59328, 0.774, 1.0]


def test_gae_five_steps():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([GAE_V])
    mask = torch.ones(1, 5, dtype=torch.bool)
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    check(adv, [GAE_ADV])
    check(ret, [GAE_RET])


def test_gae_response_in_the_middle_of_the_row():
    # T=5, response at positions 1..3; positions 0 and 4 hold NaN garbage
    rewards = place_on_last_token(torch.tensor([2.0, 1.0]),
                                  torch.tensor([[F_, T_, T_, T_, F_], [F_, F_, F_, F_, F_]]))
    values = torch.tensor([[NAN, 1.0, 0.5, 1.5, NAN], [NAN] * 5])
    mask = torch.tensor([[F_, T_, T_, T_, F_], [F_, F_, F_, F_, F_]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # value after the last token (position 3) is 0, not V_4:
    #   d3 = 2 + 0 - 1.5 = .5;  d2 = 0 + 1.5 - .5 = 1;  d1 = 0 + .5 - 1 = -.5
    #   A3 = .5;  A2 = 1 + .5*.5 = 1.25;  A1 = -.5 + .5*1.25 = .125
    # returns A + V: 1.125, 1.75, 2.0; row 1 (empty) is all zeros
    check(adv, [[0.0, 0.125, 1.25, 0.5, 0.0], [0.0] * 5])
    check(ret, [[0.0, 1.125, 1.75, 2.0, 0.0], [0.0] * 5])


def test_gae_bridges_a_hole_in_the_mask():
    # mask [T, F, T] (e.g. tool output in the middle); reward 1 on position 2; gamma .5, lam .5
    mask = torch.tensor([[T_, F_, T_]])
    rewards = place_on_last_token(torch.tensor([1.0]), mask)
    adv, ret = gae_advantages(rewards, torch.tensor([[0.5, NAN, 0.25]]), mask, gamma=0.5, lam=0.5)
    # position 1 is skipped: position 0's next value is V_2
    #   d2 = 1 - .25 = .75;  d0 = 0 + .5*.25 - .5 = -.375
    #   A2 = .75;  A0 = -.375 + .25*.75 = -.1875;  returns A + V = [.3125, 0, 1]
    check(adv, [[-0.1875, 0.0, 0.75]])
    check(ret, [[0.3125, 0.0, 1.0]])


def test_whiten_global_over_mask():
    x = torch.tensor([[1.0, 2.0, NAN], [NAN, 4.0, 5.0]])
    mask = torch.tensor([[T_, T_, F_], [F_, T_, T_]])
    # masked values 1, 2, 4, 5: mean 3, population var (4 + 1 + 1 + 4)/4 = 2.5, std 1.581139
    #   (1-3)/1.581139 = -1.264911, (2-3)/1.581139 = -.632456, +.632456, +1.264911
    check(whiten(x, mask, eps=0.0), [[-1.264911, -0.632456, 0.0], [0.0, 0.632456, 1.264911]])
    # shift_mean=False adds the mean 3 back: 1.735089, 2.367544, 3.632456, 4.264911
    check(whiten(x, mask, shift_mean=False, eps=0.0),
          [[1.735089, 2.367544, 0.0], [0.0, 3.632456, 4.264911]])
    # [N] input: [2, 4] mean 3, var 1 -> [-1, 1]; the masked 100 becomes 0
    check(whiten(torch.tensor([2.0, 4.0, 100.0]), torch.tensor([T_, T_, F_]), eps=0.0), [-1.0, 1.0, 0.0])
    # an empty mask gives zeros, not NaN
    check(whiten(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool)), [[0.0, 0.0], [0.0, 0.0]])


# 2x3 batch: row 0 reward 1 on its last token (2), row 1 reward -1 on its last token (1); gamma .5
RPP_MASK = [[T_, T_, T_], [T_, T_, F_]]
# return-to-go: row 0 G2 = 1, G1 = .5*1 = .5, G0 = .25; row 1 G1 = -1, G0 = -.5
# over all 5 tokens: mean (.25 + .5 + 1 - .5 - 1)/5 = .05
# deviations .2, .45, .95, -.55, -1.05; squares .04 + .2025 + .9025 + .3025 + 1.1025 = 2.55
# var 2.55/5 = .51, std .714143, 1/std = 1.400280
#   .2*1.40028 = .280056, .45*1.40028 = .630126, .95*1.40028 = 1.330266,
#   -.55*1.40028 = -.770154, -1.05*1.40028 = -1.470294
# (per group, row 1 alone would have mean -.75: the normalisation is global, not per group)
RPP_ADV = [[0.280056, 0.630126, 1.330266], [-0.770154, -1.470294, 0.0]]


def test_reinforce_pp_global_normalisation():
    mask = torch.tensor(RPP_MASK)
    token_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, -1.0, NAN]])
    check(reinforce_pp_advantages(token_rewards, mask, gamma=0.5), RPP_ADV)


def test_kl_shaped_token_rewards():
    mask = torch.tensor([[T_, T_, F_]])
    logp = torch.tensor([[-1.0, -2.0, NAN]], requires_grad=True)
    logp_ref = torch.tensor([[-1.5, -1.0, NAN]])
    shaped = kl_shaped_token_rewards(torch.tensor([1.0]), mask, logp, logp_ref, kl_coef=0.1)
    # logp - ref = [.5, -1]; token 0: 0 - .1*.5 = -.05; token 1: 1 - .1*(-1) = 1.1
    check(shaped, [[-0.05, 1.1, 0.0]])
    assert not shaped.requires_grad  # rewards are constants


def test_dispatch_reinforce_pp_with_and_without_kl():
    mask = torch.tensor(RPP_MASK)
    adv, ret = compute_advantages("reinforce_pp", rewards=torch.tensor([1.0, -1.0]),
                                  group_ids=torch.tensor([0, 1]), mask=mask, gamma=0.5)
    check(adv, RPP_ADV)  # the rewards land on the last tokens as in the test above
    assert ret is None
    # with KL shaping, gamma 1: shaped rewards [-.05, 1.1] (as above) -> return-to-go
    #   [-.05 + 1.1, 1.1] = [1.05, 1.1]; mean 1.075, deviations -/+.025, var .000625
    #   -> -/+ .025 / sqrt(.000625 + 1e-8) = -/+ .999992
    adv, _ = compute_advantages("reinforce_pp", rewards=torch.tensor([1.0]),
                                group_ids=torch.tensor([0]), mask=torch.tensor([[T_, T_, F_]]),
                                logp=torch.tensor([[-1.0, -2.0, NAN]]),
                                logp_ref=torch.tensor([[-1.5, -1.0, NAN]]), kl_coef=0.1)
    check(adv, [[-0.999992, 0.999992, 0.0]])
    with pytest.raises(ValueError, match="logp_ref"):
        compute_advantages("reinforce_pp", rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                           mask=torch.tensor([[T_]]), kl_coef=0.1)


def test_dispatch_gae_and_whitening():
    mask = torch.ones(1, 5, dtype=torch.bool)
    adv, ret = compute_advantages("gae", rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                                  mask=mask, values=torch.tensor([GAE_V]), gamma=0.9, lam=0.8)
    check(adv, [GAE_ADV])
    check(ret, [GAE_RET])
    adv_w, ret_w = compute_advantages("gae", rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                                      mask=mask, values=torch.tensor([GAE_V]), gamma=0.9, lam=0.8,
                                      whiten_advantages=True)
    check(ret_w, [GAE_RET])  # value targets are computed before whitening
    # GAE_ADV mean = (-.042683648 + .1351616 - .00672 + .574 + .7)/5 = 1.359757952/5 = .27195159
    a = torch.tensor(GAE_ADV, dtype=torch.float64)
    expected = (a - 0.27195159) / (a - 0.27195159).square().mean().sqrt()
    check(adv_w, [expected.float().tolist()], atol=1e-4)
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]), mask=mask)


def test_dispatch_group_estimators_broadcast_over_mask():
    rewards = torch.tensor([1.0, 0.0])
    groups = torch.tensor([0, 0])
    mask = torch.tensor([[T_, T_, F_], [T_, F_, F_]])
    # dr_grpo: mean .5 -> [.5, -.5] on every mask token
    adv, ret = compute_advantages("dr_grpo", rewards=rewards, group_ids=groups, mask=mask)
    check(adv, [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]])
    assert ret is None
    # grpo with its options: loo baseline (r - mean) * G/(G-1) = +/-.5 * 2 = +/-1, no std
    adv, _ = compute_advantages("grpo", rewards=rewards, group_ids=groups, mask=mask,
                                baseline="loo", normalize_std=False)
    check(adv, [[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="baseline"):
        compute_advantages("rloo", rewards=rewards, group_ids=groups, mask=mask, baseline="mean")
    with pytest.raises(ValueError, match="token-level"):
        compute_advantages("reinforce_pp", rewards=rewards, group_ids=groups, mask=mask, baseline="mean")


def test_dispatch_unknown_name_lists_both_kinds():
    with pytest.raises(ValueError, match="known: dr_grpo, gae, grpo, reinforce_pp, rloo"):
        compute_advantages("ppo", rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                           mask=torch.tensor([[T_]]))
    # the group registry is untouched: token estimators have another signature
    assert set(TOKEN_ADVANTAGE_ESTIMATORS) == {"gae", "reinforce_pp"}
    assert "gae" not in ADVANTAGE_ESTIMATORS
    check(get_adv_estimator("dr_grpo")(torch.tensor([1.0, 0.0]), torch.tensor([0, 0])), [0.5, -0.5])


def test_gae_limits_lam_zero_and_one():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    # lam = 0: A_t is the one-step TD error, the deltas of the 5-step example
    adv, _ = gae_advantages(rewards, torch.tensor([GAE_V]), mask, gamma=0.9, lam=0.0)
    check(adv, [[-0.14, 0.14, -0.42, 0.07, 0.7]])
    # lam = 1 and V = 0: the discounted return-to-go .9^(4-t) = [.6561, .729, .81, .9, 1]
    adv, ret = gae_advantages(rewards, torch.zeros(1, 5), mask, gamma=0.9, lam=1.0)
    check(adv, [[0.6561, 0.729, 0.81, 0.9, 1.0]])
    check(ret, [[0.6561, 0.729, 0.81, 0.9, 1.0]])
