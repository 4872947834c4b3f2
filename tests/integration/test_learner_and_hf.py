"""Learner numerics and the HF generator, on the tiny model, without Ray (plain objects)."""

from __future__ import annotations

import pytest
import torch

from nemo_rlvr.config import AlgorithmConfig, LearnerConfig
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.learner.policy import PolicyWorker
from nemo_rlvr.rollout.hf import HFGenerator
from nemo_rlvr.types import Prompt, SamplingParams


def _prompts(tok, texts):
    return [Prompt(text=t, token_ids=tok(t, add_special_tokens=False)["input_ids"], env="arithmetic",
                   fields={"answer": 0}) for t in texts]


def _rollout(model_dir, n=4, seed=1):
    gen = HFGenerator(model_dir)
    prompts = _prompts(gen.tokenizer, ["12+34=", "7+8=", "99+1="])
    samples = gen.generate(prompts, SamplingParams(n=n, temperature=1.0, max_new_tokens=5, seed=seed))
    return gen, samples


def _worker(model_dir, **learner_kw):
    return PolicyWorker(model_dir, learner=LearnerConfig(lr=1e-3, **learner_kw),
                        algorithm=AlgorithmConfig(kl_coef=0.0), temperature=1.0)


def test_generator_logprobs_equal_learner_logprobs(tiny_model_dir):
    gen, samples = _rollout(tiny_model_dir)
    assert len(samples) == 12 and [s.group_id for s in samples] == [0] * 4 + [1] * 4 + [2] * 4
    batch = collate(samples, torch.zeros(len(samples)), pad_id=gen.pad_id)
    logp_old = _worker(tiny_model_dir).logprobs(batch)["logp_old"]
    diff = (logp_old - batch.logp_gen).abs()[batch.loss_mask]
    assert diff.numel() == sum(len(s.response_ids) for s in samples)
    assert diff.max() < 1e-5, f"fp32 CPU mismatch {diff.max():.2e}"


def test_same_seed_same_samples_and_different_seed_differs(tiny_model_dir):
    _, a = _rollout(tiny_model_dir, seed=7)
    _, b = _rollout(tiny_model_dir, seed=7)
    _, c = _rollout(tiny_model_dir, seed=8)
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]


@pytest.mark.parametrize("packed", [True, False])
def test_token_budget_and_packing_do_not_change_the_update(tiny_model_dir, packed):
    gen, samples = _rollout(tiny_model_dir)
    adv = torch.linspace(-1, 1, len(samples))
    batch = collate(samples, adv, pad_id=gen.pad_id)
    results = []
    # one padded pass of everything (the reference), then budgets that split the batch in
    # several passes and one sequence per pass
    for budget, pack in ((100_000, False), (60, packed), (1, packed)):
        w = _worker(tiny_model_dir, max_tokens_per_microbatch=budget, sequence_packing=pack)
        b = batch.with_(**w.logprobs(batch))
        metrics = w.train(b)
        # compare accumulated gradients (Adam's first step, ~lr*sign(g), amplifies rounding on g ~ 0)
        results.append((metrics["loss/total"], [p.grad.clone() for p in w.model.parameters()]))
    for loss, grads in results[1:]:
        assert abs(loss - results[0][0]) < 1e-6
        for g, h in zip(grads, results[0][1]):
            torch.testing.assert_close(g, h, atol=1e-7, rtol=1e-4)


def test_load_weights_makes_generator_match_learner(tiny_model_dir):
    gen, samples = _rollout(tiny_model_dir)
    batch = collate(samples, torch.linspace(-1, 1, len(samples)), pad_id=gen.pad_id)
    w = _worker(tiny_model_dir)
    before = w.param_checksum()
    w.train(batch.with_(**w.logprobs(batch)))
    assert w.param_checksum() != before                     # the step changed the weights
    buckets = w.export_weights(bucket_bytes=64 * 1024)     # several buckets for a 0.7M model
    assert len(buckets) > 3
    gen.load_weights(buckets)
    new = gen.generate(_prompts(gen.tokenizer, ["12+34="]), SamplingParams(n=4, max_new_tokens=5, seed=3))
    nb = collate(new, torch.zeros(4), pad_id=gen.pad_id)
    diff = (w.logprobs(nb)["logp_old"] - nb.logp_gen).abs()[nb.loss_mask]
    assert diff.max() < 1e-5
