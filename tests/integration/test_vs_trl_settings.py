"""benchmarks/vs_trl.py matches its settings: our overrides resolve to what the TRL config says, and
the TRL-side reward is our `arithmetic` env's. No TRL run (TRL lives in .venv-bench/); < 1 s."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest

from nemo_rlvr.config import load_config
from nemo_rlvr.envs.arithmetic import ArithmeticEnv
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
vs_trl = importlib.util.module_from_spec(spec)
sys.modules["vs_trl"] = vs_trl
spec.loader.exec_module(vs_trl)

ARGS = argparse.Namespace(prompts=8, group=8, steps=20, max_new_tokens=16, lr=5e-5, seed=0)


@pytest.mark.parametrize("mode", ["ray", "local"])
def test_our_overrides_resolve_to_the_trl_config(mode, tmp_path):
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", vs_trl.our_overrides(ARGS, str(tmp_path), str(tmp_path),
                                                                            "x", mode))
    trl = vs_trl.trl_config(ARGS, gradient_checkpointing=True, out_dir=str(tmp_path))
    alg, learner, gen = cfg.algorithm, cfg.learner, cfg.generation
    assert cfg.cluster.mode == mode and cfg.model.path == str(tmp_path)
    # one optimizer step on all B*G samples of one generation batch
    assert trl["per_device_train_batch_size"] == cfg.train.prompts_per_step * alg.group_size == 64
    assert trl["gradient_accumulation_steps"] == trl["steps_per_generation"] == trl["num_iterations"] == 1
    assert learner.minibatches_per_step == 1 and trl["num_generations"] == alg.group_size
    assert trl["max_steps"] == cfg.train.steps and trl["max_completion_length"] == gen.max_new_tokens
    assert (trl["temperature"], trl["top_p"], trl["top_k"]) == (gen.temperature, gen.top_p, 0)
    assert trl["learning_rate"] == learner.lr and learner.lr_schedule == "constant" == trl["lr_scheduler_type"]
    assert trl["warmup_steps"] == learner.warmup_steps == 0 and trl["optim"] == "adamw_torch"
    assert (trl["adam_beta1"], trl["adam_beta2"]) == tuple(learner.betas)
    assert trl["weight_decay"] == learner.weight_decay and trl["max_grad_norm"] == learner.grad_clip
    assert alg.aggregation == "token_mean" and trl["loss_type"] == "dapo"  # both: sum / tokens in the batch
    assert (trl["epsilon"], trl["epsilon_high"]) == (alg.clip_low, alg.clip_high)
    assert alg.baseline == "mean" and alg.normalize_std and trl["scale_rewards"] == "group"
    assert trl["beta"] == alg.kl_coef == 0.0 and alg.tis_cap is None and trl["entropy_coef"] == 0.0
    assert not learner.activation_checkpointing and not trl["bf16"] and cfg.model.dtype == "float32"
    assert not cfg.data.chat_template and not trl["shuffle_dataset"] and trl["seed"] == cfg.seed


def test_trl_reward_is_the_arithmetic_env():
    env = ArithmeticEnv()
    for text in ["46", " 46\n", "046", "46 ", "-3", "46 or 47", "46x", "", "4 6", "+46", "٤٦", "47"]:
        for answer in (46, -3):
            assert vs_trl.arithmetic_reward(text, answer) == env.score_record(text, {"answer": answer}).reward, text
