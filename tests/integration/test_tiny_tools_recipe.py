"""The tiny multi-turn tools recipe end to end: `nemo-rlvr train recipes/tiny_cpu_tools.yaml` with a
few steps, as a user runs it (a subprocess; the tiny model is built with its vocabulary and warm
started on scripted kv_store episodes, shortened here, its stop check running greedy episodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nemo_rlvr.config import REPO_ROOT


def test_the_tools_recipe_warm_starts_then_trains_on_episodes(tmp_path):
    args = [sys.executable, "-m", "nemo_rlvr.cli", "train", "recipes/tiny_cpu_tools.yaml", "train.steps=2",
            f"output_dir={tmp_path}", f"model.cache_dir={tmp_path / 'cache'}", "cluster.mode=local",
            "model.warm_start.steps=4", "model.warm_start.num_examples=32",
            "model.warm_start.stop_eval_size=4", "model.warm_start.stop_eval_every=2",
            "model.warm_start.batch_size=8", "train.prompts_per_step=2", "algorithm.group_size=4",
            "data.val_size=4", "generation.max_new_tokens=20",
            "checkpoint.export_hf=false", "checkpoint.resume=never", "logging.console_style=lines"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    run = tmp_path / "tiny_cpu_tools"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # episodes: up to 3 turns, tool calls counted, the learner scores the generator's tokens
    assert all(1.0 <= r["rollout/turns_mean"] <= 3.0 and "rollout/tool_calls_mean" in r for r in steps)
    assert all(r["train/logprob_mismatch_max"] < 1e-5 for r in steps)
    # validation ran greedy episodes at the start and after the last step, and reports success
    val = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in val] == [0, 2] and all("val/turns_mean" in r for r in val)
    assert "validation accuracy (greedy, held-out): step 0" in out.stdout
    # the warm start ran (4 steps, stop check every 2 on greedy episodes) and is cached with the model
    (model_dir,) = (tmp_path / "cache").glob("tiny-*")
    meta = json.loads((model_dir / "nemo_rlvr_tiny.json").read_text())
    assert meta["key"]["task"]["source"] == "kv_store" and meta["key"]["tiny"]["vocab_size"] == 256
    assert meta["metrics"]["warm_start/steps"] in (2.0, 4.0) and "warm_start/stop_accuracy" in meta["metrics"]
    tok = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "tool_call" in (model_dir / "chat_template.jinja").read_text() or "tool_call" in json.dumps(tok)
