"""benchmarks/gpu_smoke.py on a machine without the GPUs a path needs: every path reports SKIP
with its reason and the script exits 0 (so one run on a lent GPU is the only thing left to do)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the paths run: tests/gpu/test_gpu_paths.py")
def test_every_path_says_why_it_skipped():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [x.split(":")[0] for x in lines] == [
        "SKIP hf_object_store", "SKIP learner_fsdp_2", "SKIP vllm_ipc_colocated", "SKIP vllm_nccl_split",
        "SKIP vllm_nccl_tp2"]
    assert lines[2].endswith("needs 1 GPU(s), this machine has 0") and "needs 3 GPU(s)" in lines[4]


def test_one_step_is_refused():
    out = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--steps must be at least 2" in out.stderr
