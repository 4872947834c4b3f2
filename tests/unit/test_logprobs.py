"""Chunked per-token log-probs and entropy equal the naive full-logits computation, and packed
rows equal padded ones, values and gradients, on a Qwen2 whose vocabulary (3,000) is large enough
that chunks matter."""

from __future__ import annotations

import pytest
import torch

from nemo_rlvr.learner.logprobs import supports_chunking, token_logprobs


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=3000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).float().train()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 3000, (3, 12), generator=g)                      # [n, w]
    attn = torch.ones(3, 12, dtype=torch.bool)
    attn[1, 9:] = False                                                      # right padding
    attn[2, 6:] = False
    mask = torch.zeros(3, 11, dtype=torch.bool)                              # [n, w-1]
    mask[0, 4:11] = True                                                     # 7 response tokens
    mask[1, 3:8] = True                                                      # 5
    mask[2, 2:5] = True                                                      # 3 -> M = 15
    return ids, attn, mask


def naive(model, ids, attn, mask, temperature):
    logits = model(input_ids=ids, attention_mask=attn.long()).logits[:, :-1].float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    p = torch.softmax(logits.detach(), -1)
    ent = -(p * torch.log_softmax(logits.detach(), -1)).sum(-1)
    return logp * mask, ent * mask


@pytest.mark.parametrize("chunk", [1, 4, 15, 1000])
def test_chunked_equals_naive_values_and_gradients(model, chunk):
    ids, attn, mask = batch()
    want_lp, want_ent = naive(model, ids, attn, mask, 0.7)
    (want_lp.sum()).backward()
    want_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    lp, ent = token_logprobs(model, ids, attn, mask, temperature=0.7, chunk_tokens=chunk, with_entropy=True)
    assert lp.shape == ent.shape == (3, 11)
    assert not lp[~mask].any() and not ent[~mask].any()                      # 0 off the mask
    torch.testing.assert_close(lp, want_lp, rtol=0, atol=2e-6)
    torch.testing.assert_close(ent, want_ent, rtol=1e-6, atol=1e-6)  # entropy ~8: fp32 rounding
    assert (ent[mask] > 0).all() and (ent[mask] <= torch.log(torch.tensor(3000.0)) + 1e-5).all()
    lp.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grad[n], rtol=1e-4, atol=1e-5, msg=n)  # grads up to ~5
    model.zero_grad(set_to_none=True)


def test_no_grad_and_no_entropy(model):
    ids, attn, mask = batch()
    with torch.no_grad():
        lp, ent = token_logprobs(model, ids, attn, mask, temperature=1.0, chunk_tokens=4)
        want, _ = naive(model, ids, attn, mask, 1.0)
    assert ent is None and not lp.requires_grad
    torch.testing.assert_close(lp, want, rtol=0, atol=2e-6)


def test_models_that_transform_logits_take_the_naive_path(model):
    assert supports_chunking(model)
    model.config.final_logit_softcapping = 30.0                              # Gemma-style
    try:
        assert not supports_chunking(model)
    finally:
        model.config.final_logit_softcapping = None


def _grads(model, lp):
    lp.sum().backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return g


@pytest.mark.parametrize("empty_row", [False, True])
@pytest.mark.parametrize("chunk", [4, 0])  # chunked path, naive path
def test_packed_equals_padded_values_and_gradients(model, chunk, empty_row):
    ids, attn, mask = batch()                  # real lengths 12, 9, 6: rows 1 and 2 right-padded
    if empty_row:
        mask[1] = False                        # row 1: prompt only, no response token
    kw = {"temperature": 0.7, "chunk_tokens": chunk, "with_entropy": True}
    want_lp, want_ent = token_logprobs(model, ids, attn, mask, **kw)
    want_grad = _grads(model, want_lp)
    lp, ent = token_logprobs(model, ids, attn, mask, packed=True, **kw)
    assert lp.shape == ent.shape == (3, 11)    # the padded layout, packed or not
    assert not lp[~mask].any() and not ent[~mask].any()
    torch.testing.assert_close(lp, want_lp, rtol=0, atol=2e-6)
    torch.testing.assert_close(ent, want_ent, rtol=1e-6, atol=1e-6)  # entropy ~8: fp32 rounding
    for n, g in _grads(model, lp).items():
        torch.testing.assert_close(g, want_grad[n], rtol=1e-4, atol=1e-5, msg=n)  # grads up to ~5


@pytest.mark.parametrize("packed", [False, True])
def test_no_response_tokens_backward_gives_zero_gradients(model, packed):
    ids, attn, mask = batch()
    mask[:] = False                            # e.g. a dummy pass for a rank with an empty shard
    lp, _ = token_logprobs(model, ids, attn, mask, temperature=1.0, chunk_tokens=4, packed=packed)
    assert lp.shape == (3, 11) and not lp.any()
    for n, g in _grads(model, lp).items():
        assert not g.any(), n
