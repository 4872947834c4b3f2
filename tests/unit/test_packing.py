"""Token-budget micro-batches, token-balanced rank shards and row packing (learner/packing.py),
on hand-built batches whose real lengths are given per row."""

from __future__ import annotations

import pytest
import torch

from nemo_rlvr.learner.packing import TrainBatch, micro_batches_by_tokens, pack_rows, shard_by_tokens


def _batch(lengths: list[int]) -> TrainBatch:
    """Row i: tokens 10*(i+1) + t for t < lengths[i], right-padded with 0; token 0 is the prompt,
    the rest the response, so loss_mask[i, :lengths[i]-1] is True."""
    n, width = len(lengths), max(lengths)
    cols = torch.arange(width)                                               # [L]
    attn = cols < torch.tensor(lengths)[:, None]                             # [N, L]
    ids = ((torch.arange(n)[:, None] + 1) * 10 + cols) * attn                # [N, L]
    loss_mask = attn[:, 1:].clone()                                          # [N, L-1]
    logp = -loss_mask.float()                                                # [N, L-1] -1 on mask
    return TrainBatch(ids, attn, loss_mask, logp, torch.arange(n, dtype=torch.float32),
                      logp_old=logp.clone(), logp_ref=logp.clone())


def _rows(mbs: list[TrainBatch]) -> list[list[int]]:
    """Which original rows each micro-batch holds (adv is the row index)."""
    return [mb.adv.long().tolist() for mb in mbs]


@pytest.mark.parametrize(("max_tokens", "packed", "rows"), [
    # lengths [5, 3, 7, 2]; packed cost = sum of lengths
    (8, True, [[0, 1], [2], [3]]),      # 5+3=8 fits; +7=15 > 8; 7+2=9 > 8
    (10, True, [[0, 1], [2, 3]]),       # 5+3=8, +7=15 > 10; 7+2=9 fits
    (100, True, [[0, 1, 2, 3]]),        # 17
    # padded cost = rows x longest row
    (8, False, [[0], [1], [2], [3]]),   # 2x5=10 > 8; 2x7=14 > 8; 2x7=14 > 8
    (10, False, [[0, 1], [2], [3]]),    # 2x5=10 fits; 3x7=21 > 10; 2x7=14 > 10
    (100, False, [[0, 1, 2, 3]]),       # 4x7=28
])
def test_micro_batches_by_tokens_boundaries(max_tokens, packed, rows):
    batch = _batch([5, 3, 7, 2])
    mbs = list(micro_batches_by_tokens(batch, max_tokens, packed=packed))
    assert _rows(mbs) == rows
    for mb in mbs:  # trimmed to the micro-batch's longest row, every per-token field alike
        width = max([5, 3, 7, 2][i] for i in mb.adv.long().tolist())
        assert mb.input_ids.shape[1] == mb.attention_mask.shape[1] == width
        assert mb.loss_mask.shape[1] == mb.logp_gen.shape[1] == mb.logp_old.shape[1] == mb.logp_ref.shape[1] == width - 1
    # nothing lost or reordered: rows 0..3, each once, real tokens intact
    assert sum(int(mb.attention_mask.sum()) for mb in mbs) == 17
    assert int(mbs[-1].input_ids[-1, 1]) == 41                               # row 3: tokens 40, 41


@pytest.mark.parametrize("packed", [True, False])
def test_row_over_budget_gets_a_micro_batch_alone(packed):
    # lengths [2, 9, 1, 1], budget 4: 2 (+9 > 4) | 9 alone, over budget, not split | 1+1=2 (padded 2x1=2)
    mbs = list(micro_batches_by_tokens(_batch([2, 9, 1, 1]), 4, packed=packed))
    assert _rows(mbs) == [[0], [1], [2, 3]]
    assert mbs[1].input_ids.shape == (1, 9) and mbs[2].input_ids.shape == (2, 1)
    # over budget as the first row too: 9 | 1
    assert _rows(list(micro_batches_by_tokens(_batch([9, 1]), 4, packed=packed))) == [[0], [1]]


def test_micro_batches_by_tokens_rejects_a_non_positive_budget():
    with pytest.raises(ValueError, match="max_tokens=0"):
        next(micro_batches_by_tokens(_batch([3]), 0, packed=True))


def test_shard_by_tokens_longest_first_to_least_loaded():
    # longest first, ties by index: row 0 (9), row 4 (8), row 5 (2), rows 1, 2, 3 (1 each)
    # loads (rank0, rank1): row0 -> rank0 (9,0); row4 -> rank1 (9,8); row5 -> rank1 (9,10);
    #   row1 -> rank0 (10,10); row2: tie, lower rank -> rank0 (11,10); row3 -> rank1 (11,11)
    batch = _batch([9, 1, 1, 1, 8, 2])
    shards = shard_by_tokens(batch, 2)
    assert [s.tolist() for s in shards] == [[0, 1, 2], [3, 4, 5]]
    assert all(s.dtype == torch.long for s in shards)
    assert [int(batch.attention_mask[s].sum()) for s in shards] == [11, 11]  # 9+1+1, 1+8+2
    assert [s.tolist() for s in shard_by_tokens(batch, 1)] == [[0, 1, 2, 3, 4, 5]]


def test_shard_by_tokens_fewer_rows_than_ranks():
    # lengths [4, 6] over 3 ranks: 6(row 1)->rank0; 4(row 0)->rank1; rank 2 gets none
    shards = shard_by_tokens(_batch([4, 6]), 3)
    assert [s.tolist() for s in shards] == [[1], [0], []]
    assert shards[2].shape == (0,) and shards[2].dtype == torch.long
    assert len(_batch([4, 6]).select(shards[2])) == 0                        # an empty TrainBatch, not an error


def test_pack_rows_positions_and_gather_index():
    ids = torch.tensor([[11, 12, 13], [21, 0, 0], [31, 32, 0]])               # lengths 3, 1, 2
    attn = ids > 0
    mask = torch.tensor([[False, True], [False, False], [True, False]])       # targets 13 and 32
    packed, pos, at = pack_rows(ids, attn, mask)
    # rows of capacity 3 (the longest): [11 12 13] full; 21 opens row 1 and 31 32 fit after it
    assert packed.tolist() == [[11, 12, 13], [21, 31, 32]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 1]]                            # restarts per sequence
    # flat starts 0, 3, 4: (row 0, col 1) -> 0+1 = 1 (token 12 predicts 13); (row 2, col 0) -> 4+0 = 4 (31 -> 32)
    assert at.tolist() == [1, 4]
    assert packed.flatten()[at + 1].tolist() == ids[:, 1:][mask].tolist() == [13, 32]


def test_pack_rows_next_fit_leaves_tails_as_their_own_blocks():
    ids = torch.tensor([[11, 12, 0], [21, 22, 23], [31, 0, 0]])               # lengths 2, 3, 1
    mask = torch.tensor([[True, False], [False, True], [False, False]])
    packed, pos, at = pack_rows(ids, ids > 0, mask)
    # 2 -> row 0 (1 left); 3 does not fit -> row 1; 1 does not fit after it -> row 2
    assert packed.tolist() == [[11, 12, 0], [21, 22, 23], [31, 0, 0]]
    assert pos.tolist() == [[0, 1, 0], [0, 1, 2], [0, 0, 1]]                 # tails restart too
    assert at.tolist() == [0, 4]                                              # starts 0, 3, 6


def test_pack_rows_refuses_left_padding():
    ids = torch.tensor([[0, 11, 12], [21, 22, 23]])
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(ids, ids > 0, torch.tensor([[False, True], [False, True]]))


def test_shard_by_tokens_keeps_a_prompts_rows_on_one_rank():
    # 3 prompts x 2 samples (rows 0-1: prompt 5 6, rows 2-3: prompt 7, rows 4-5: prompt 5 6 again
    # but a new run) -> units [0,1] (4+5 tokens), [2,3] (3+2), [4,5] (4+3); LPT by size over 2 ranks:
    # [0,1] (9) -> rank 0, [4,5] (7) -> rank 1, [2,3] (5) -> rank 1 (7 < 9)
    ids = torch.tensor([[5, 6, 1, 2, 0], [5, 6, 3, 4, 9], [7, 1, 2, 0, 0], [7, 3, 0, 0, 0],
                        [5, 6, 8, 9, 0], [5, 6, 8, 0, 0]])
    attn = ids > 0
    loss = torch.zeros(6, 4, dtype=torch.bool)
    for i, (p, n) in enumerate([(2, 4), (2, 5), (1, 3), (1, 2), (2, 4), (2, 3)]):
        loss[i, p - 1 : n - 1] = True
    batch = TrainBatch(ids, attn, loss, torch.zeros(6, 4), torch.zeros(6))
    grouped = shard_by_tokens(batch, 2, keep_groups=True)
    assert [s.tolist() for s in grouped] == [[0, 1], [2, 3, 4, 5]]
    # rows alone (lengths 4 5 3 2 4 3): 1->r0 (5,0), 0->r1 (5,4), 4->r1 (5,8), 2->r0 (8,8),
    # 5->r0 (tie: lower rank; 11,8), 3->r1 (11,10): every prompt's rows split over both ranks
    assert [s.tolist() for s in shard_by_tokens(batch, 2)] == [[1, 2, 5], [0, 3, 4]]
    # fewer runs than ranks: rows alone
    assert [s.tolist() for s in shard_by_tokens(batch, 4, keep_groups=True)] == \
        [s.tolist() for s in shard_by_tokens(batch, 4)]
