"""Prefix trees on CUDA (sdpa with an explicit mask: the memory-efficient kernel, not flash):
log-probs and gradients equal padded rows', fp32 to rounding and bf16 to bf16's precision.
Skipped without CUDA (conftest)."""

from __future__ import annotations

import pytest
import torch

from nemo_rlvr.learner.logprobs import attention_pair_cost, token_logprobs
from nemo_rlvr.learner.packing import pack_prefix_tree
from tests.unit.test_prefix_tree import group_batch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_tree_equals_padded_on_cuda(dtype, atol):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(cfg).to("cuda", dtype).train()
    ids, attn, loss = (t.cuda() for t in group_batch())
    assert pack_prefix_tree(ids, attn, loss, attn_cost=attention_pair_cost(model)) is not None
    out = []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        lp, _ = token_logprobs(model, ids, attn, loss, temperature=1.0, chunk_tokens=8, packed=True,
                               share_prefix=share)
        lp.sum().backward()
        out.append((lp.detach().float(), torch.cat([p.grad.float().flatten() for p in model.parameters()])))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=0, atol=atol)
    rel = (out[1][1] - out[0][1]).norm() / out[0][1].norm()
    assert rel < (1e-5 if dtype == torch.float32 else 3e-2), float(rel)
