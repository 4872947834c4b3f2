"""`nemo-rlvr train` as a user runs it (a subprocess): bad configs exit 2 with one paragraph and no
traceback; --print-config prints the resolved config and starts nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from nemo_rlvr.config import REPO_ROOT


@pytest.mark.parametrize("args, needle", [
    (["train", "learner.lrr=1"], "unknown key 'learner.lrr'"),
    (["train", "train.steps=x"], "train.steps='x'"),
    (["train", "missing_recipe.yaml"], "does not exist"),
    (["train", "--print-config", "generation.tensor_parallel_size=2"], "tensor_parallel_size=2 needs generation.backend=vllm"),
])
def test_cli_bad_config_exits_2_without_traceback(args, needle):
    res = subprocess.run([sys.executable, "-m", "nemo_rlvr.cli", *args], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1        # one paragraph


def test_cli_print_config():
    res = subprocess.run([sys.executable, "-m", "nemo_rlvr.cli", "train", "--print-config", "learner.lr=0.5"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["learner"]["lr"] == 0.5
