"""The sharded learner on GPUs: NCCL between ranks, bf16 mixed precision (FSDP2).

Skipped without CUDA (conftest); the 2-rank case needs 2 GPUs. The same code runs on the CPU
with gloo in tests/integration/test_sharded_learner.py, which these mirror.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from nemo_rlvr.config import AlgorithmConfig, LearnerConfig
from nemo_rlvr.learner.policy import PolicyWorker
from nemo_rlvr.weights.buckets import iter_bucket_tensors
from tests.helpers.dist_learner import train_one_step
from tests.integration.test_sharded_learner import assert_same_update, make_batch

pytestmark = pytest.mark.gpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference(model_dir: str) -> tuple[dict, dict]:
    """One fp32 step of the unsharded learner on the CPU: what every GPU setup must reproduce."""
    one = PolicyWorker(model_dir, learner=LearnerConfig(lr=1e-3, grad_clip=1e9), algorithm=AlgorithmConfig(),
                       temperature=1.0, device="cpu")
    metrics = one.train(make_batch())
    return metrics, {n: t.clone() for n, t in iter_bucket_tensors(one.export_weights(1 << 20))}


@pytest.mark.parametrize("world, dtype, rel", [(1, "float32", 1e-4), (1, "bfloat16", 3e-2),
                                               (2, "float32", 1e-4), (2, "bfloat16", 3e-2)])
def test_sharded_gpu_step_matches_the_cpu_reference(tiny_model_dir, tmp_path, world, dtype, rel):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    want, want_w = reference(tiny_model_dir)
    mp.spawn(train_one_step, args=(world, free_port(), tiny_model_dir, dtype, str(tmp_path)), nprocs=world,
             join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)
    for key in ("loss/total", "train/grad_norm", "train/logprob_mismatch"):
        assert got["metrics"][key] == pytest.approx(want[key], rel=rel), key
    got_w = {k: v.float().cpu() for k, v in got["weights"].items()}
    if dtype == "float32":  # TF32 is off by default for matmuls in torch: fp32 on GPU ~ fp32 on CPU
        assert_same_update(got_w, want_w, lr=1e-3)
    else:  # master weights stay fp32; bf16 compute moves each weight by ~lr either way
        for name in want_w:
            assert (got_w[name] - want_w[name]).abs().max() < 2e-3, name


def test_optimizer_offload_frees_its_memory_and_changes_nothing(tiny_model_dir):
    """Colocated runs move AdamW's moments to host memory while the generator runs: the GPU gets
    2 x the parameters' bytes back, and the next update is bit-identical to one without it."""
    kwargs = dict(learner=LearnerConfig(lr=1e-3, grad_clip=1e9), algorithm=AlgorithmConfig(), temperature=1.0,
                  device="cuda")
    plain, offloaded = PolicyWorker(tiny_model_dir, **kwargs), PolicyWorker(tiny_model_dir, **kwargs)
    for w in (plain, offloaded):
        w.train(make_batch())
    param_bytes = sum(p.numel() * p.element_size() for p in offloaded.model.parameters())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    assert offloaded.offload_optimizer() == 2 * param_bytes
    assert before - torch.cuda.memory_allocated() == 2 * param_bytes
    assert offloaded.reload_optimizer() == 2 * param_bytes
    for w in (plain, offloaded):
        w.train(make_batch())
    for (n, a), (_, b) in zip(plain.model.named_parameters(), offloaded.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
