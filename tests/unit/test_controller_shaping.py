"""The controller's DAPO pieces on hand-made samples: the soft overlong penalty added to the
verifier's rewards, and overlong filtering of truncated responses out of the loss mask."""

from __future__ import annotations

import torch

from nemo_rlvr.config import load_config
from nemo_rlvr.controller import extra_forwards, shaped_rewards, without_truncated
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.types import Sample, Score


def sample(n_resp: int, finish: str = "stop") -> Sample:
    return Sample(prompt_ids=[1, 2], response_ids=list(range(3, 3 + n_resp)), logprobs=[-0.5] * n_resp,
                  text="x", finish_reason=finish, group_id=0, env="math")


def test_overlong_penalty_is_added_to_the_rewards():
    cfg = load_config(None, ["generation.max_new_tokens=5", "algorithm.overlong_buffer_len=2"])
    samples = [sample(n) for n in (2, 3, 4, 5)]
    scores = [Score(1.0, {}), Score(0.0, {}), Score(1.0, {}), Score(1.0, {})]
    # max_len 5, buffer 2: no penalty up to 5 - 2 = 3 tokens; 4 tokens: (3 - 4) / 2 = -0.5; 5: (3 - 5) / 2 = -1
    assert shaped_rewards(cfg, samples, scores).tolist() == [1.0, 0.0, 0.5, 0.0]
    off = load_config(None, ["generation.max_new_tokens=5"])        # grpo preset: buffer 0, no shaping
    assert shaped_rewards(off, samples, scores).tolist() == [1.0, 0.0, 1.0, 1.0]
    dapo = load_config(None, ["generation.max_new_tokens=8", "algorithm.name=dapo"])
    assert dapo.algorithm.overlong_buffer_len == 2                   # "quarter": 8 // 4


def test_truncated_responses_leave_the_loss_mask():
    samples = [sample(2), sample(3, "length"), sample(1)]
    batch = collate(samples, torch.zeros(3), pad_id=0)
    assert batch.loss_mask.sum(1).tolist() == [2, 3, 1]
    assert without_truncated(batch, samples).loss_mask.sum(1).tolist() == [2, 0, 1]


def test_kl_in_the_reward_needs_the_policy_logprobs_first():
    assert extra_forwards(load_config(None, ["algorithm.kl_coef=0"])) == {}
    assert extra_forwards(load_config(None, ["algorithm.kl_coef=0.01"])) == {"policy": False, "reference": True}
    ppo = load_config(None, ["algorithm.name=ppo"])                  # the recipe's kl_coef 0.001, in the reward
    assert ppo.algorithm.kl_in_reward and extra_forwards(ppo) == {"policy": True, "reference": True}
