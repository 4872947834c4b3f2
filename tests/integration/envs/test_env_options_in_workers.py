"""env.options reach the env built in each pool worker, and the code env's sandbox limits;
the code env sizes its parallelism to its worker's share of the cores."""

from __future__ import annotations

import os
import time

import pytest

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.envs.code import CodeEnv
from nemo_rlvr.scoring.base import InlineScorer
from nemo_rlvr.scoring.pool import VerifierPool
from nemo_rlvr.types import Sample

MODULE = "tests.helpers.verifier_envs"


def sample(text: str, env: str | None = None, **fields) -> Sample:
    return Sample([], [], [], text, "stop", 0, env, fields)


def test_pool_workers_build_the_default_env_with_the_options():
    cfg = EnvConfig(name="test_scaled", module=MODULE, num_workers=2, options={"scale": 0.5, "tag": "w"})
    with VerifierPool(cfg) as pool:
        out = pool.score([sample("4"), sample("2", env="test_scaled"), sample("3", env="test_echo")])
        workers = set(pool.worker_pids())
    assert [s.reward for s in out] == [2.0, 1.0, 3.0]  # test_echo is another env: its own defaults
    assert {int(out[0].components["w"]), int(out[1].components["w"])} <= workers  # scored in the workers
    inline = InlineScorer(cfg).score([sample("4")])
    assert inline[0].reward == 2.0 and inline[0].components == {"w": float(os.getpid())}


@pytest.mark.sandbox(isolated=False)
def test_code_env_options_reach_the_sandbox():
    """timeout_s=0.5 per test instead of the default 5 s: a hanging solution fails fast."""
    hang = "```python\ndef f():\n    while True:\n        pass\n```"
    cfg = EnvConfig(name="code", num_workers=1, timeout_s=30, options={"timeout_s": 0.5, "max_parallel": 1})
    with VerifierPool(cfg) as pool:
        t0 = time.monotonic()
        out = pool.score([sample(hang, tests=["f()"], entry_point="f")])
        elapsed = time.monotonic() - t0
    assert out[0].reward == 0.0 and out[0].components["passed"] == 0.0 and out[0].error is None
    assert elapsed < 4.0, f"the 0.5 s per-test limit did not apply ({elapsed:.1f}s; the default is 5 s)"


def test_code_env_parallelism_defaults_to_its_share_of_the_cores():
    """In-process: up to 4 of the usable cores; in a pool of N workers: cores // N (at least 1),
    so a worker per core runs one test at a time instead of oversubscribing the machine."""
    cores = len(os.sched_getaffinity(0))
    assert CodeEnv().max_parallel == min(4, cores)
    assert CodeEnv(max_parallel=3).max_parallel == 3  # an explicit value always wins
    for workers in (1, 2, cores + 1):
        with VerifierPool(EnvConfig(name="test_cores", module=MODULE, num_workers=workers)) as pool:
            comps = pool.score([sample("x")])[0].components
        share = max(1, cores // workers)
        assert comps == {"cores": float(share), "max_parallel": float(min(4, share))}, workers
