"""Prefix-tree packing (learner.prefix_sharing): a hand-worked layout, the same log-probs and
gradients as padded rows with sdpa and eager attention, and the cost rule that keeps long
distinct responses out of a shared tree."""

from __future__ import annotations

import pytest
import torch

from nemo_rlvr.learner.logprobs import attention_pair_cost, token_logprobs
from nemo_rlvr.learner.packing import pack_prefix_tree


def rows(seqs: list[list[int]], prompt_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids [n, w], attention mask, loss mask True on each row's response targets."""
    n, w = len(seqs), max(map(len, seqs))
    ids = torch.zeros(n, w, dtype=torch.long)
    attn = torch.zeros(n, w, dtype=torch.bool)
    loss = torch.zeros(n, w - 1, dtype=torch.bool)
    for i, (s, p) in enumerate(zip(seqs, prompt_lens)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = True
        loss[i, p - 1 : len(s) - 1] = True
    return ids, attn, loss


def test_hand_worked_tree():
    # prompt 5 6 7; responses 8 9 | 8 4 | 8 9 (a duplicate of the first)
    ids, attn, loss = rows([[5, 6, 7, 8, 9], [5, 6, 7, 8, 4], [5, 6, 7, 8, 9]], [3, 3, 3])
    tree = pack_prefix_tree(ids, attn, loss, attn_cost=0.0)
    assert tree is not None
    tids, pos, mask, at = tree
    # nodes in insertion order: 5 6 7 8 9 (row 0), then 4 (row 1's only new token); row 2 adds none
    assert tids.tolist() == [[5, 6, 7, 8, 9, 4]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 4]]
    want = torch.tensor([[1, 0, 0, 0, 0, 0],     # 5 sees itself
                         [1, 1, 0, 0, 0, 0],     # 6
                         [1, 1, 1, 0, 0, 0],     # 7
                         [1, 1, 1, 1, 0, 0],     # 8
                         [1, 1, 1, 1, 1, 0],     # 9 (row 0's last)
                         [1, 1, 1, 1, 0, 1]],    # 4 (row 1's last): not 9, its sibling
                        dtype=torch.bool)
    assert torch.equal(mask[0, 0], want)
    # targets: row 0 predicts 8 from node 2 (7) and 9 from node 3 (8); row 1: 8 from 2, 4 from 3;
    # row 2 the same as row 0
    assert at.tolist() == [2, 3, 2, 3, 2, 3]


def test_two_prompts_in_one_tree_or_apart():
    # two prompts: 1 2 and 3; at no attention cost every row that shares a first token joins its
    # tree: {1 2 5 6} and {3 7 8}, in rows as long as the largest tree
    ids, attn, loss = rows([[1, 2, 5], [1, 2, 6], [3, 7], [3, 8]], [2, 2, 1, 1])
    tids, pos, mask, at = pack_prefix_tree(ids, attn, loss, attn_cost=0.0)
    assert tids.tolist() == [[1, 2, 5, 6], [3, 7, 8, 0]] and pos.tolist() == [[0, 1, 2, 2], [0, 1, 1, 3]]
    assert mask[1, 0, 2].tolist() == [1, 0, 1, 0]                  # "8" sees "3", not its sibling "7"
    assert at.tolist() == [1, 1, 4, 4]
    # a huge attention cost: a row joins only where the tree's attention pairs stay fewer than
    # two separate rows' (rows 0 + 1: 16 pairs < 9 + 9), so "3 7" and "3 8" stay apart (9 > 4 + 4);
    # the trees are then placed next fit in rows as long as the largest (4)
    tids, pos, mask, at = pack_prefix_tree(ids, attn, loss, attn_cost=1e9)
    assert tids.tolist() == [[1, 2, 5, 6], [3, 7, 3, 8]] and pos.tolist() == [[0, 1, 2, 2], [0, 1, 0, 1]]
    assert mask[1, 0, 3].tolist() == [0, 0, 1, 1]                  # the "8" sees the second "3" only
    assert at.tolist() == [1, 1, 4, 6]


def test_no_saving_returns_none_and_unused_tail_sees_itself():
    ids, attn, loss = rows([[1, 2, 3], [4, 5]], [1, 1])
    assert pack_prefix_tree(ids, attn, loss, attn_cost=0.0) is None       # nothing shared: pack_rows
    tids, pos, mask, at = pack_prefix_tree(ids, attn, loss, attn_cost=0.0, min_saving=0.0)
    assert tids.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert mask[1, 0, 2].tolist() == [0, 0, 1]                           # no empty softmax row
    assert at.tolist() == [0, 1, 3]


def test_cost_rule_keeps_long_distinct_responses_apart():
    # prompt of 4, responses of 200 distinct tokens each: with a realistic pair cost (1e-3) a shared
    # tree of 404+ nodes costs more attention than the 4 prompt tokens it saves
    g = torch.Generator().manual_seed(0)
    prompt = [7, 8, 9, 10]
    seqs = [prompt + torch.randint(20, 90, (200,), generator=g).tolist() for _ in range(4)]
    ids, attn, loss = rows(seqs, [4] * 4)
    assert pack_prefix_tree(ids, attn, loss, attn_cost=1e-3) is None
    # a 200-token prompt with 4-token responses: shared
    seqs = [torch.arange(20, 220).tolist() + [i, i + 1, i + 2, i + 3] for i in range(4)]
    ids, attn, loss = rows(seqs, [200] * 4)
    tids, *_ = pack_prefix_tree(ids, attn, loss, attn_cost=1e-3)
    assert tids.numel() == 200 + 4 * 4


def test_needs_right_padding():
    ids, attn, loss = rows([[1, 2, 3], [1, 2]], [1, 1])
    attn = attn.flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        pack_prefix_tree(ids, attn, loss & attn[:, 1:], attn_cost=0.0)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, attn_implementation=request.param)
    return Qwen2ForCausalLM(cfg).float().train()


def group_batch():
    """Two prompts x 4 samples, GRPO-style: responses of 1-6 tokens, two exact duplicates."""
    g = torch.Generator().manual_seed(3)
    seqs, plens = [], []
    for plen in (11, 8):
        prompt = [1, 2, 3] + torch.randint(4, 97, (plen - 3,), generator=g).tolist()  # a shared opening
        resp = [torch.randint(4, 97, (k,), generator=g).tolist() for k in (1, 6, 3)]
        for r in (*resp, resp[2]):
            seqs.append(prompt + r)
            plens.append(plen)
    return rows(seqs, plens)


def test_tree_equals_padded_values_and_gradients(model):
    ids, attn, loss = group_batch()
    tree = pack_prefix_tree(ids, attn, loss, attn_cost=attention_pair_cost(model))
    assert tree is not None and tree[0].numel() < int(attn.sum())          # it does share
    grads = []
    outs = []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        lp, ent = token_logprobs(model, ids, attn, loss, temperature=0.9, chunk_tokens=4, with_entropy=True,
                                 packed=False, share_prefix=share)
        (lp * torch.arange(1, loss.shape[1] + 1)).sum().backward()            # a different weight per column
        outs.append((lp.detach(), ent))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=3e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-6)
    assert not outs[1][0][~loss].any()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)


def test_flash_attention_takes_no_tree(model):
    from types import SimpleNamespace

    from nemo_rlvr.learner.logprobs import _tree_layout

    ids, attn, loss = group_batch()
    assert _tree_layout(model, ids, attn, loss) is not None
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert _tree_layout(flash, ids, attn, loss) is None     # it takes position ids only: pack_rows


def test_sliding_window_takes_a_tree_only_while_rows_fit_in_it():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from nemo_rlvr.learner.logprobs import _tree_layout

    ids, attn, loss = group_batch()                                         # rows of 9..17 tokens
    for window, shared in ((8, False), (17, True)):
        cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                          sliding_window=window, max_window_layers=0, attn_implementation="sdpa")
        layout = _tree_layout(Qwen2ForCausalLM(cfg), ids, attn, loss)
        assert (layout is not None) is shared, window
