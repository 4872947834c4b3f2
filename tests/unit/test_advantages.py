"""Advantage estimators against hand-worked numbers (arithmetic in the comments)."""

import pytest
import torch

from nemo_rlvr.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    get_adv_estimator,
    group_stats,
    grpo_advantages,
)

# torch.testing.assert_close lazily imports sympy (~2 s) on its first call; pay that once
# at collection so no single test goes over the 1 s unit-test budget.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


def check(actual: torch.Tensor, expected: list[float] | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=1e-5)


def test_grpo_mean_baseline_without_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # B=2, G=4
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = grpo_advantages(rewards, groups, normalize_std=False)
    # group 0 mean .25 -> [.75,-.25,-.25,-.25]; group 1 mean .5 -> [.5,.5,-.5,-.5]
    check(adv, [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])


def test_grpo_mean_baseline_with_unbiased_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # B=2, G=4
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = grpo_advantages(rewards, groups, eps=0.0)
    # group 0: mean .25, std = sqrt((.75^2 + 3*.25^2)/3) = sqrt(.75/3) = .5
    #   -> [.75/.5, -.25/.5, ...] = [1.5, -.5, -.5, -.5]
    # group 1: mean .5, std = sqrt(4*.25/3) = sqrt(1/3) = .577350 -> .5/.577350 = .866025
    check(adv, [1.5, -0.5, -0.5, -0.5, 0.866025, 0.866025, -0.866025, -0.866025])


def test_grpo_default_eps_shrinks_slightly():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = grpo_advantages(rewards, torch.zeros(4, dtype=torch.long))  # eps=1e-6
    # .75 / (.5 + 1e-6) = 1.499997; -.25 / .500001 = -.4999990
    check(adv, [1.499997, -0.499999, -0.499999, -0.499999], atol=1e-6)


def test_loo_baseline():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0])  # G=4 then G=2
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = grpo_advantages(rewards, groups, baseline="loo", normalize_std=False)
    # sample 0: others [0,0,0] mean 0 -> 1; samples 1-3: others [1,0,0] mean 1/3 -> -1/3
    #   (= (r - .25) * 4/3: .75*4/3 = 1, -.25*4/3 = -1/3)
    # group 1: 3 - 1 = 2, 1 - 3 = -2
    check(adv, [1.0, -1 / 3, -1 / 3, -1 / 3, 2.0, -2.0])


def test_loo_baseline_with_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = grpo_advantages(rewards, torch.zeros(4, dtype=torch.long), baseline="loo", eps=0.0)
    # loo advantages [1, -1/3, -1/3, -1/3] over group std .5 -> [2, -2/3, -2/3, -2/3]
    check(adv, [2.0, -2 / 3, -2 / 3, -2 / 3])


def test_unequal_non_contiguous_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.5])
    groups = torch.tensor([7, -3, 7, -3, 7, 42])  # 7: idx 0,2,4; -3: idx 1,3; 42: idx 5 alone
    adv = grpo_advantages(rewards, groups, normalize_std=False)
    # group 7 [1,0,0] mean 1/3 -> [2/3, -1/3, -1/3]; group -3 [0,1] mean .5 -> [-.5, .5]
    # group 42 has one member: no baseline, advantage 0
    check(adv, [2 / 3, -0.5, -1 / 3, 0.5, -1 / 3, 0.0])
    adv_std = grpo_advantages(rewards, groups, eps=0.0)
    # group 7 std = sqrt(((2/3)^2 + 2*(1/3)^2)/2) = sqrt((6/9)/2) = sqrt(1/3) = .577350
    #   -> (2/3)/.577350 = 1.154701, (-1/3)/.577350 = -.577350
    # group -3 std = sqrt((.25+.25)/1) = .707107 -> -.5/.707107 = -.707107
    check(adv_std, [1.154701, -0.707107, -0.577350, 0.707107, -0.577350, 0.0])
    # a permutation of the samples permutes the advantages and nothing else
    perm = torch.tensor([5, 3, 0, 4, 1, 2])
    check(grpo_advantages(rewards[perm], groups[perm], eps=0.0), adv_std[perm].tolist())


def test_all_equal_group_is_exactly_zero():
    # 0.1 * 3 / 3 != 0.1 in float32, so r - mean alone would leave residue that std blows up
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    for baseline in ("mean", "loo"):
        adv = grpo_advantages(rewards, groups, baseline=baseline, eps=0.0)
        assert torch.equal(adv[:3], torch.zeros(3)), adv
        assert torch.equal(adv[5:], torch.zeros(2)), adv  # all-zero group, std 0, eps 0
        assert torch.isfinite(adv).all()
    # group 1 [1,0]: mean .5, std sqrt(.5) = .707107 -> .5/.707107 = .707107
    check(grpo_advantages(rewards, groups, eps=0.0)[3:5], [0.707107, -0.707107])


def test_registry_variants():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    groups = torch.zeros(4, dtype=torch.long)
    assert set(ADVANTAGE_ESTIMATORS) >= {"grpo", "rloo", "dr_grpo"}
    # dr_grpo: mean baseline, no std -> [.75, -.25, -.25, -.25]
    check(ADVANTAGE_ESTIMATORS["dr_grpo"](rewards, groups), [0.75, -0.25, -0.25, -0.25])
    # rloo: leave-one-out, no std -> [1, -1/3, -1/3, -1/3]
    check(get_adv_estimator("rloo")(rewards, groups), [1.0, -1 / 3, -1 / 3, -1 / 3])
    # grpo: mean baseline / std .5 (+1e-6) -> ~[1.5, -.5, -.5, -.5]
    check(get_adv_estimator("grpo")(rewards, groups), [1.5, -0.5, -0.5, -0.5])


def test_unknown_estimator_lists_options():
    with pytest.raises(ValueError, match="known: dr_grpo, grpo, rloo"):
        get_adv_estimator("ppo_gae_typo")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        grpo_advantages(torch.tensor([1.0, float("nan")]), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="baseline"):
        grpo_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), baseline="median")


def test_group_stats():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    stats = group_stats(rewards, groups)
    # group 0 is all 1s (zero std); groups 1, 2 have std .5 and sqrt(1/3) = .577350
    # zero_std_frac = 1/3; mean std = (0 + .5 + .577350)/3 = .359117
    check(stats["rollout/zero_std_frac"], 1 / 3)
    check(stats["rollout/group_reward_std"], 0.359117)
