"""vLLM's layerwise reload warns "<Layer>: Failed to load weights" on every update for layers that
are fine (rollout/vllm.py ExpectedReloadWarnings); only those two are dropped."""

from __future__ import annotations

import logging

from nemo_rlvr.rollout.vllm import ExpectedReloadWarnings


def _record(layer: str) -> logging.LogRecord:
    return logging.LogRecord("vllm", logging.WARNING, "f", 1, "%s: Failed to load weights", (layer,), None)


def test_vllm_reload_warnings_that_are_expected_are_dropped_and_others_kept():
    tied, untied = ExpectedReloadWarnings(True), ExpectedReloadWarnings(False)
    assert not tied.filter(_record("RotaryEmbedding")) and not untied.filter(_record("RotaryEmbedding"))
    assert not tied.filter(_record("ParallelLMHead")) and untied.filter(_record("ParallelLMHead"))
    assert tied.filter(_record("QKVParallelLinear"))
    assert tied.filter(logging.LogRecord("vllm", logging.WARNING, "f", 1, "other", (), None))
