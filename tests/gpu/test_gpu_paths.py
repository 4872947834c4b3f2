"""Every GPU path of the training loop (benchmarks/gpu_smoke.py): a few real training steps each,
the samples of every step after a sync scored by the learner to within the path's tolerance.
Skipped without CUDA (conftest); a path without the GPUs or vLLM it needs reports SKIP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"
PATHS = ["hf_object_store", "learner_fsdp_2", "vllm_ipc_colocated", "vllm_nccl_split", "vllm_nccl_tp2"]


@pytest.mark.parametrize("name", PATHS)
def test_gpu_path(name):
    out = subprocess.run([sys.executable, str(SCRIPT), "--only", name], capture_output=True, text=True,
                         timeout=900)
    line = out.stdout.strip().splitlines()[-1]
    if line.startswith("SKIP"):
        pytest.skip(line)
    assert out.returncode == 0 and line.startswith(f"PASS {name}"), out.stdout + out.stderr[-4000:]
