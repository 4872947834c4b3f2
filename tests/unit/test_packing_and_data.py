"""Batch collation layout and the resumable prompt loader."""

from __future__ import annotations

import torch

from nemo_rlvr.data.dataset import PromptLoader
from nemo_rlvr.learner.packing import collate, micro_batches_by_tokens
from nemo_rlvr.types import Prompt, Sample


def _sample(prompt, resp, lps):
    return Sample(prompt_ids=prompt, response_ids=resp, logprobs=lps, text="", finish_reason="stop",
                  group_id=0, env="arithmetic")


def test_collate_aligns_response_targets():
    # row 0: prompt [5,6], response [7,8]   -> L=4, targets t=1..3 are [6,7,8]; response targets at t=1,2
    # row 1: prompt [5],   response [9]     -> targets [9] at column 0, the rest padding
    batch = collate([_sample([5, 6], [7, 8], [-0.1, -0.2]), _sample([5], [9], [-0.3])],
                    torch.tensor([1.0, -1.0]), pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch.attention_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.loss_mask.tolist() == [[False, True, True], [True, False, False]]
    torch.testing.assert_close(batch.logp_gen, torch.tensor([[0.0, -0.1, -0.2], [-0.3, 0.0, 0.0]]))


def test_micro_batches_trim_padding_columns():
    batch = collate([_sample([5], [9], [-0.3]), _sample([5, 6], [7, 8], [-0.1, -0.2])],
                    torch.zeros(2), pad_id=0)
    first, second = list(micro_batches_by_tokens(batch, 4, packed=False))  # 1x2, then 2x4 > 4: apart
    assert first.input_ids.tolist() == [[5, 9]] and first.loss_mask.tolist() == [[True]]
    assert second.input_ids.shape == (1, 4)


def _prompts(n):
    return [Prompt(text=str(i), token_ids=[i], env="arithmetic", uid=i) for i in range(n)]


def test_loader_covers_each_epoch_once_and_resumes_exactly():
    a = PromptLoader(_prompts(10), seed=3)
    epoch0 = [p.uid for p in a.next_batch(10)]
    assert sorted(epoch0) == list(range(10))
    a.next_batch(4)
    state = a.state_dict()
    assert state == {"epoch": 1, "index": 4, "seed": 3}
    expected = [p.uid for p in a.next_batch(13)]      # crosses into epoch 2
    b = PromptLoader(_prompts(10), seed=3)
    b.load_state_dict(state)
    assert [p.uid for p in b.next_batch(13)] == expected
