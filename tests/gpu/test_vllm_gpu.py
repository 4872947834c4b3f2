"""vLLM on CUDA: colocated IPC weight sync, split NCCL weight sync, sleep/wake.

Skipped without CUDA (conftest). Never run on the CPU-only development machines; they
follow vLLM 0.32's weight-transfer API (docs/vllm.md says what is measured where).
"""

from __future__ import annotations

import importlib.util
import socket

import pytest
import torch

from nemo_rlvr.types import Prompt, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> str:
    return tiny_model_dir  # the shared cached tiny Qwen2 (tests/conftest.py)


def _learner(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@torch.no_grad()
def _max_diff(model, samples, temperature):
    worst = 0.0
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids], device="cuda")
        logits = model(ids).logits[0, len(s.prompt_ids) - 1 : -1].float()
        logp = torch.log_softmax(logits / temperature, -1)
        got = logp.gather(-1, torch.tensor(s.response_ids, device="cuda")[:, None])[:, 0].cpu()
        worst = max(worst, (got - torch.tensor(s.logprobs)).abs().max().item())
    return worst


def _perturb(model):
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, device="cuda") * 0.05)


def _prompts(tok):
    return [Prompt(text=t, token_ids=tok.encode(t, add_special_tokens=False), env="x")
            for t in ("12+34=", "hello")]


def test_colocated_ipc_sync_and_sleep_wake(ray_local, model_dir):
    from nemo_rlvr.rollout.vllm import VLLMGenerator
    from nemo_rlvr.weights.cuda import pack_ipc_buckets

    ray = ray_local
    model, tok = _learner(model_dir)
    gen = ray.remote(num_gpus=0.4)(VLLMGenerator).remote(
        model_dir, placement="colocated", gpu_memory_utilization=0.2)
    sp = SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=1)
    assert _max_diff(model, ray.get(gen.generate.remote(_prompts(tok), sp)), 0.8) < 1e-3

    free_awake = torch.cuda.mem_get_info()[0]
    ray.get(gen.sleep.remote())
    assert torch.cuda.mem_get_info()[0] > free_awake  # KV cache and weights released
    ray.get(gen.wake.remote())

    _perturb(model)
    buckets, keepalive = pack_ipc_buckets(model.named_parameters(), bucket_bytes=256 * 1024)
    metrics = ray.get(gen.load_weights.remote(buckets))
    del keepalive  # the generator has copied the weights
    assert metrics["weight_sync/bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert _max_diff(model, ray.get(gen.generate.remote(_prompts(tok), sp)), 0.8) < 1e-3
    ray.kill(gen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="split placement needs 2 GPUs (NCCL ranks)")
def test_split_nccl_sync(ray_local, model_dir):
    from concurrent.futures import ThreadPoolExecutor

    from nemo_rlvr.rollout.vllm import VLLMGenerator
    from nemo_rlvr.weights.cuda import NcclWeightSender
    from nemo_rlvr.weights.gloo import param_meta

    ray = ray_local
    gen = ray.remote(num_gpus=1)(VLLMGenerator).remote(model_dir, placement="split",
                                                       gpu_memory_utilization=0.3,
                                                       weight_transfer_buffer_mb=1)
    # NCCL needs distinct GPUs per rank: the learner (this process) takes one the actor did not get
    actor_gpu = int(ray.get(gen.__ray_call__.remote(lambda self: ray.get_gpu_ids()))[0])
    torch.cuda.set_device(next(i for i in range(torch.cuda.device_count()) if i != actor_gpu))
    model, tok = _learner(model_dir)
    port = _free_port()
    with ThreadPoolExecutor(1) as ex:  # both sides block in the rendezvous
        fut = ex.submit(NcclWeightSender, "127.0.0.1", port, 2, bucket_bytes=1 << 20)
        ray.get(gen.init_weight_update_group.remote("127.0.0.1", port, 1, 2))
        sender = fut.result()
    _perturb(model)
    meta = param_meta(model.named_parameters())
    ref = gen.receive_weights.remote(meta)
    sent = sender.send(model.named_parameters())
    got = ray.get(ref)
    assert got["weight_sync/bytes"] == sent["weight_sync/bytes"]
    sp = SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=1)
    assert _max_diff(model, ray.get(gen.generate.remote(_prompts(tok), sp)), 0.8) < 1e-3
    ray.kill(gen)
