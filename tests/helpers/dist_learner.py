"""Workers for tests/gpu/test_sharded_learner_gpu.py: learner ranks as plain processes
(torch.multiprocessing.spawn), one GPU each, NCCL, no Ray."""

from __future__ import annotations

import os

import torch


def train_one_step(rank: int, world: int, port: int, model_dir: str, dtype: str, out_dir: str) -> None:
    """Join an NCCL group on cuda:rank, train one on-policy step on the shared test batch with
    the sharded learner, and save rank 0's metrics and exported weights."""
    from nemo_rlvr.config import AlgorithmConfig, LearnerConfig
    from nemo_rlvr.learner.distributed import init_distributed
    from nemo_rlvr.learner.policy import PolicyWorker
    from nemo_rlvr.weights.buckets import iter_bucket_tensors
    from tests.integration.test_sharded_learner import make_batch

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    init_distributed(rank, world, "127.0.0.1", port, device=device)
    try:
        worker = PolicyWorker(model_dir, learner=LearnerConfig(lr=1e-3, grad_clip=1e9, dtype=dtype),
                              algorithm=AlgorithmConfig(), temperature=1.0, device=str(device))
        metrics = worker.train(make_batch())
        weights = {n: t.clone() for n, t in iter_bucket_tensors(worker.export_weights(1 << 20))}
        if rank == 0:
            torch.save({"metrics": metrics, "weights": weights}, os.path.join(out_dir, "rank0.pt"))
    finally:
        torch.distributed.destroy_process_group()
