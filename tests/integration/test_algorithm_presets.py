"""Every algorithm preset runs 2 steps of the tiny recipe end to end through Ray (one generator
and one learner actor, CPU), and each shows its own machinery in the step metrics: DAPO's
dynamic sampling fills the batch with informative groups, PPO's critic trains (`loss/value`),
GSPO and CISPO report their own clip fractions, the KL-in-reward presets log no KL loss term."""

from __future__ import annotations

import json

import pytest

from nemo_rlvr.config import PRESETS, load_config
from tests.helpers.training_envs import write_addition_prompts

ray = pytest.importorskip("ray")


def run_preset(name: str, model_dir: str, out, extra: list[str] = ()) -> list[dict]:
    from nemo_rlvr.build import build_run
    from nemo_rlvr.controller import train

    data = write_addition_prompts(out)
    cfg = load_config(None, [f"model.path={model_dir}", "train.steps=2", f"output_dir={out}", f"name={name}",
                             f"data.source={data}", "env.name=digit_share", "env.module=tests.helpers.training_envs",
                             "train.prompts_per_step=4", "algorithm.group_size=4", "learner.lr=1e-3",
                             f"algorithm.name={name}", "validation.every_steps=0", "validation.at_start=false",
                             "checkpoint.export_hf=false", "checkpoint.resume=never", "cluster.num_cpus=2",
                             *extra])
    run = build_run(cfg)
    try:
        before = run.learner.param_checksum()
        train(run)
        changed = run.learner.param_checksum() != before
    finally:
        run.logger.close()
        run.scorer.close()
        ray.shutdown()
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    return rows, changed


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_runs_two_steps_through_ray(name, tiny_model_dir, tmp_path):
    rows, changed = run_preset(name, tiny_model_dir, tmp_path)
    last = rows[-1]
    assert changed, "the policy did not move"
    assert last["weight_sync/bytes"] > 0
    if name == "dapo":  # only informative groups are trained on, and it says how many rounds it took
        for r in rows:
            assert r["rollout/resample_rounds"] >= 1 and "rollout/dropped_groups" in r
            if r["rollout/resample_short"] == 0:
                assert r["rollout/zero_std_frac"] == 0.0
    if name == "ppo":
        assert all(r["loss/value"] > 0 for r in rows) and "critic/values_mean" in last
    else:
        assert "loss/value" not in last
    if name in ("reinforce_pp", "ppo"):  # the KL went into the reward; the loss has none (its metric still logs)
        assert last["timing/logprobs"] > 0
    assert "loss/clip_frac" in last and "loss/total" in last


def test_critic_warmup_holds_the_policy(tiny_model_dir, tmp_path):
    rows, changed = run_preset("ppo", tiny_model_dir, tmp_path, ["algorithm.critic_warmup_steps=2"])
    assert not changed, "the policy moved during the critic's warm-up"
    assert all("loss/value" in r and "loss/pg" not in r for r in rows)
