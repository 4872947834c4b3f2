"""DAPO overlong penalty and dynamic sampling against hand-worked numbers and scripted rounds."""

import pytest
import torch

from nemo_rlvr.algorithms.dapo import DynamicSampler, SamplingDecision, informative_groups, overlong_penalty

# torch.testing.assert_close lazily imports sympy (~2 s) on its first call; pay that once
# at collection so no single test goes over the 1 s unit-test budget.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))


def check(actual: torch.Tensor, expected: list | float, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=1e-6)


def test_overlong_penalty_eq13():
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])
    # max_len 20, buffer 4: free up to 20 - 4 = 16; then (16 - L)/4; -1 beyond 20
    #   10 -> 0; 16 -> 0; 17 -> -1/4; 18 -> -2/4; 20 -> -4/4 = -1; 25 -> -1
    check(overlong_penalty(lengths, max_len=20, buffer_len=4), [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    # buffer = max_len: the ramp starts at 0 -> L=5 of 10 gives (0 - 5)/10 = -.5
    check(overlong_penalty(torch.tensor([0, 5]), max_len=10, buffer_len=10), [0.0, -0.5])


@pytest.mark.parametrize("buffer_len", [0, -1, 21])
def test_overlong_penalty_rejects_bad_buffer(buffer_len):
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), max_len=20, buffer_len=buffer_len)


def test_informative_groups():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 2.0, 2.0, 0.0])
    groups = torch.tensor([7, 7, 3, 3, 9, 5, 5, 7])  # 7: [1, 0, 0] varied; 3: [1, 1] flat;
    # 9: one member (flat); 5: [2, 2] flat
    assert informative_groups(rewards, groups).tolist() == [True, True, False, False, False, False,
                                                            False, True]
    with pytest.raises(ValueError, match="finite"):
        informative_groups(torch.tensor([float("nan")]), torch.tensor([0]))


def test_dynamic_sampler_refills_until_target():
    sampler = DynamicSampler(target_groups=3, max_rounds=5)
    # round 1 (samples 0-3): group 11 at 0, 2 with [1, 0] (informative), group 10 at 1, 3 with
    # [1, 1] (flat, dropped); 11 appears first
    d1 = sampler.add(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([11, 10, 11, 10]))
    assert d1 == SamplingDecision(done=False, short=False, fallback=False, kept_groups=1, missing_groups=2)
    assert (sampler.rounds, sampler.dropped_groups) == (1, 1)
    # round 2 (samples 4-11), ids reused: 0 [0, 1] informative, 1 [0, 0] flat, 2 [1, 0] informative,
    # 3 [.5, 1] informative but surplus (3 kept already)
    d2 = sampler.add(torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5, 1.0]),
                     torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert d2 == SamplingDecision(done=True, short=False, fallback=False, kept_groups=3, missing_groups=0)
    # dropped: flat 10, flat 1, surplus 3 -> 3 of the 6 groups seen
    assert (sampler.rounds, sampler.dropped_groups, sampler.seen_groups) == (2, 3, 6)
    assert sampler.kept_indices().tolist() == [0, 2, 4, 5, 8, 9]
    assert sampler.kept_group_ids().tolist() == [0, 0, 1, 1, 2, 2]
    assert sampler.metrics() == {"rollout/resample_rounds": 2.0, "rollout/dropped_groups": 3.0,
                                 "rollout/resample_short": 0.0}
    with pytest.raises(RuntimeError, match="done"):
        sampler.add(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))


def test_dynamic_sampler_exhausted_with_some_informative_groups():
    sampler = DynamicSampler(target_groups=2, max_rounds=2)
    # round 1: group 0 [1, 1] flat, group 1 [0, 1] informative (samples 2, 3)
    d1 = sampler.add(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert (d1.done, d1.missing_groups) == (False, 1)
    # round 2: one flat group [0, 0] (samples 4, 5): max_rounds reached with 1 of 2
    d2 = sampler.add(torch.tensor([0.0, 0.0]), torch.tensor([0, 0]))
    assert d2 == SamplingDecision(done=True, short=True, fallback=False, kept_groups=1, missing_groups=0)
    assert sampler.kept_indices().tolist() == [2, 3]  # the smaller batch: only the informative group
    assert sampler.dropped_groups == 2  # both flat groups
    assert sampler.metrics()["rollout/resample_short"] == 1.0


def test_dynamic_sampler_all_flat_falls_back_to_last_round():
    sampler = DynamicSampler(target_groups=2, max_rounds=2)
    sampler.add(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))  # samples 0-3, flat
    # round 2: three flat groups, samples 4-9
    d = sampler.add(torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0]), torch.tensor([5, 5, 6, 6, 7, 7]))
    assert d == SamplingDecision(done=True, short=True, fallback=True, kept_groups=0, missing_groups=0)
    # the batch is the last round's first target_groups=2 groups: samples 4, 5 and 6, 7
    assert sampler.kept_indices().tolist() == [4, 5, 6, 7]
    assert sampler.kept_group_ids().tolist() == [0, 0, 1, 1]
    assert sampler.dropped_groups == 3  # 5 groups seen, 2 in the batch


def test_dynamic_sampler_single_round_drops_surplus():
    sampler = DynamicSampler(target_groups=1, max_rounds=1)
    # groups 4 [0, 1] and 2 [1, 0] both informative: 4 appears first and is kept, 2 is surplus
    d = sampler.add(torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.tensor([4, 2, 4, 2]))
    assert (d.done, d.short, d.kept_groups) == (True, False, 1)
    assert sampler.kept_indices().tolist() == [0, 2]
    assert sampler.dropped_groups == 1


@pytest.mark.parametrize("target, rounds", [(0, 1), (1, 0)])
def test_dynamic_sampler_rejects_bad_sizes(target, rounds):
    with pytest.raises(ValueError, match="max_rounds"):
        DynamicSampler(target_groups=target, max_rounds=rounds)
