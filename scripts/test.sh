#!/usr/bin/env bash
# Set up the dev environment and run the whole test suite. Extra arguments go to pytest.
# Fails on any failing test, and when no test was collected (pytest exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev || exit $?
export RAY_AUTH_MODE=disabled WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NEMO_RLVR_CACHE="${NEMO_RLVR_CACHE:-$PWD/.cache/nemo_rlvr}"
# On Linux the sandbox must work: its tests fail instead of skipping without it (0 skips them).
if [ "$(uname -s)" = Linux ]; then export NEMO_RLVR_REQUIRE_SANDBOX="${NEMO_RLVR_REQUIRE_SANDBOX:-1}"; fi
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "[test] no tests were collected: failing" >&2; exit 1; fi
exit $rc
