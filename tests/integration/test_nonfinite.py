"""A step whose loss is not finite is skipped: no optimizer step, the generators keep the weights
they had (the next step's samples still match the learner to fp32 precision), the step's
checkpoint holds finite weights equal to the previous step's; `train.max_skipped_steps` in a row
stop the run with a message. The NaN comes from a test environment (tests/helpers/training_envs.py),
not a switch in product code."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_rlvr.checkpoint import load_checkpoint_model, verify
from nemo_rlvr.config import load_config
from tests.helpers.training_envs import write_addition_prompts

PER_STEP = 4 * 4  # prompts x samples


def run(tiny_model_dir, out, steps: int, env_options: str, *extra: str):
    from nemo_rlvr.build import build_run
    from nemo_rlvr.controller import train

    data = write_addition_prompts(out)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"train.steps={steps}", f"output_dir={out}",
                             f"data.source={data}", "env.name=explode_at_step", "env.module=tests.helpers.training_envs",
                             f"env.options={env_options}", "env.num_workers=0", "cluster.mode=local",
                             "train.prompts_per_step=4", "algorithm.group_size=4", "learner.lr=1e-3",
                             "algorithm.name=dr_grpo", "algorithm.kl_coef=0", "validation.every_steps=0",
                             "validation.at_start=false", "checkpoint.every_steps=1", "checkpoint.keep_last=10", "checkpoint.export_hf=false",
                             "checkpoint.resume=never", *extra])
    r = build_run(cfg)
    try:
        train(r)
    finally:
        r.logger.close()
        r.scorer.close()
    return cfg


def rows(cfg) -> list[dict]:
    return [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if "loss/total" in x]


def test_a_nonfinite_step_is_skipped_and_reaches_nothing(tiny_model_dir, tmp_path):
    cfg = run(tiny_model_dir, tmp_path, 4, f'{{"step": 2, "per_step": {PER_STEP}}}')
    got = rows(cfg)
    assert [r["faults/skipped_steps"] for r in got] == [0.0, 1.0, 0.0, 0.0]
    assert got[1]["loss/total"] is None or got[1]["loss/total"] in ("inf", "-inf")  # NaN/inf logged as such
    assert got[3]["train/logprob_mismatch_max"] < 1e-5  # the generator has the learner's (finite) weights
    ck = cfg.run_dir / "checkpoints"
    assert verify(ck / "step_2") is None
    before, skipped = load_checkpoint_model(ck / "step_1"), load_checkpoint_model(ck / "step_2")
    for (name, a), (_, b) in zip(before.named_parameters(), skipped.named_parameters()):
        assert torch.isfinite(b).all() and torch.equal(a, b), name
    after = load_checkpoint_model(ck / "step_3")
    assert any(not torch.equal(a, b) for a, b in zip(skipped.parameters(), after.parameters()))


def test_too_many_skipped_steps_in_a_row_stop_the_run(tiny_model_dir, tmp_path):
    from nemo_rlvr.controller import RunStopped

    with pytest.raises(RunStopped, match=r"2 steps in a row had a NaN or inf loss or gradient norm \(up to step 3"):
        run(tiny_model_dir, tmp_path, 6, f'{{"step": 2, "per_step": {PER_STEP}, "until": 5}}',
            "train.max_skipped_steps=2")


def test_an_env_server_that_is_down_stops_the_run_with_a_message(tiny_model_dir, tmp_path):
    """env.url names a port nothing listens on: every sample's request fails (after its retry) ->
    reward 0 with error for all -> the run stops at step 1 naming the server, not 20 steps of 0."""
    import socket

    from nemo_rlvr.build import build_run
    from nemo_rlvr.controller import RunStopped, train

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # closed again: nothing listens there
    data = write_addition_prompts(tmp_path)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "train.steps=3", f"output_dir={tmp_path}",
                             f"data.source={data}", "env.name=digit_share", f"env.url=http://127.0.0.1:{port}",
                             "env.max_retries=0", "cluster.mode=local", "train.prompts_per_step=2",
                             "algorithm.group_size=2", "validation.every_steps=0", "validation.at_start=false",
                             "checkpoint.export_hf=false", "checkpoint.resume=never"])
    r = build_run(cfg)
    try:
        with pytest.raises(RunStopped, match=rf"4 of step 1's 4 samples got a verifier error \(env.max_error_rate=1\), "
                                             rf"from the env server http://127.0.0.1:{port} \(is it up"):
            train(r)
    finally:
        r.logger.close()
        r.scorer.close()
