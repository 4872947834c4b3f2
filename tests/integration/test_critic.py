"""PPO's critic (learner/critic.py) on the tiny model: values start at exactly 0 (zero-initialised
head), the clipped value loss goes down when it trains on one batch's returns, and a checkpoint
restores it bit for bit with the policy (save/load of the learner)."""

from __future__ import annotations

import torch

from nemo_rlvr.config import AlgorithmConfig, LearnerConfig, load_config
from nemo_rlvr.learner.policy import PolicyWorker
from tests.integration.test_sharded_learner import make_batch


def ppo_worker(model_dir: str, **alg) -> PolicyWorker:
    algorithm = load_config(None, ["algorithm.name=ppo", "algorithm.critic_lr=1e-3",
                                   *[f"algorithm.{k}={v}" for k, v in alg.items()]]).algorithm
    assert isinstance(algorithm, AlgorithmConfig)
    return PolicyWorker(model_dir, learner=LearnerConfig(lr=1e-3), algorithm=algorithm, temperature=1.0,
                        device="cpu")


def test_values_start_at_zero_and_the_value_loss_goes_down(tiny_model_dir):
    worker = ppo_worker(tiny_model_dir)
    batch = make_batch()
    v0 = worker.values(batch)                                                        # [N, L-1]
    assert v0.shape == batch.logp_gen.shape and torch.count_nonzero(v0) == 0
    returns = torch.where(batch.loss_mask, torch.full_like(v0, 0.7), torch.zeros_like(v0))
    # first step from V = 0: 0.5 * 0.7^2 = 0.245 per token (unclipped and clipped agree at V = old)
    losses = [worker.train_critic(batch, returns, worker.values(batch))["loss/value"] for _ in range(25)]
    assert abs(losses[0] - 0.245) < 1e-6
    assert losses[-1] < 0.2 * losses[0], [round(x, 4) for x in losses]
    assert float(worker.values(batch)[batch.loss_mask].mean()) > 0.5


def test_checkpoint_restores_the_critic(tiny_model_dir, tmp_path):
    a = ppo_worker(tiny_model_dir)
    batch = make_batch()
    returns = torch.where(batch.loss_mask, torch.ones_like(batch.logp_gen), torch.zeros_like(batch.logp_gen))
    a.train_critic(batch, returns, a.values(batch))
    a.save(str(tmp_path / "ckpt"))
    b = ppo_worker(tiny_model_dir)
    b.load(str(tmp_path / "ckpt"))
    assert torch.equal(a.values(batch), b.values(batch))
    ma, mb = a.train_critic(batch, returns, a.values(batch)), b.train_critic(batch, returns, b.values(batch))
    assert ma == mb  # the AdamW moments came back too: the next step is the same


def test_a_checkpoint_without_critic_is_refused_by_a_ppo_learner(tiny_model_dir, tmp_path):
    grpo = PolicyWorker(tiny_model_dir, learner=LearnerConfig(), algorithm=load_config(None, []).algorithm,
                        temperature=1.0, device="cpu")
    grpo.save(str(tmp_path / "ckpt"))
    import pytest

    with pytest.raises(FileNotFoundError, match="no critic.pt"):
        ppo_worker(tiny_model_dir).load(str(tmp_path / "ckpt"))
