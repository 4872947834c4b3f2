"""In-process scoring: InlineScorer, checked_score's guard on what an env returns, score_records,
and which backend make_scorer picks. Worker processes are tests/integration/envs/test_pool.py."""

from __future__ import annotations

import math
import os

import pytest

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.scoring.base import InlineScorer, checked_score
from nemo_rlvr.scoring.make import make_scorer, score_records
from nemo_rlvr.types import Sample, Score

MODULE = "tests.helpers.verifier_envs"


def sample(text: str, env: str = "test_echo", **fields) -> Sample:
    return Sample([], [], [], text, "stop", 0, env, fields)


def test_inline_scorer_never_raises():
    s = InlineScorer(EnvConfig(name="test_echo", module=MODULE))
    out = s.score([sample("4"), sample("x", env="test_raise"), sample("1", env="no_such_env")])
    assert out[0] == Score(4.0, {"len": 1.0})
    assert out[1].error == "ValueError: bad response 'x'"
    assert out[2].error.startswith("unknown environment 'no_such_env' (the sample's env")
    assert out.metrics["verifier/errors"] == 2


class _Weird:
    name = "weird"

    def __init__(self, ret):
        self.ret = ret

    def score_record(self, response, fields):
        if self.ret == "exit":
            raise SystemExit(7)
        return self.ret


@pytest.mark.parametrize("ret, error", [
    (Score(math.nan), "environment returned a non-finite reward (nan)"),
    (0.5, "environment returned float, not Score"),
    (Score("high"), ("environment returned a non-numeric reward or component "
                     "(could not convert string to float: 'high')")),
    ("exit", "verifier called exit(7)"),
])
def test_checked_score_rejects_bad_results(ret, error):
    assert checked_score(_Weird(ret), "", {}) == Score(0.0, {}, error)


def test_make_scorer_picks_inline_or_remote():
    """env.num_workers=0: in-process; env.url: remote. The pool (num_workers >= 1) is
    tests/integration/envs/test_pool.py."""
    assert isinstance(make_scorer(EnvConfig(num_workers=0)), InlineScorer)
    remote = make_scorer(EnvConfig(url="http://127.0.0.1:9"))
    assert type(remote).__name__ == "RemoteScorer"
    remote.close()


def test_score_records_with_a_config():
    records = [{"id": "a", "prompt": "1+1", "response": "2", "answer": 2},
               {"id": "b", "env": "arithmetic", "prompt": "2+2", "response": "5", "answer": 4, "extra": 1},
               {"id": "c", "env": "test_scaled", "response": "3"}]
    out = score_records(records, "arithmetic", EnvConfig(module=MODULE, num_workers=0))
    assert out[0] == {**records[0], "reward": 1.0, "reward_components": {"correct": 1.0}, "error": None}
    assert out[1] == {**records[1], "reward": 0.0, "reward_components": {"correct": 0.0}, "error": None}
    # test_scaled: 1.0 * 3, tagged with the pid of the process that scored it: this one (num_workers=0)
    assert out[2] == {**records[2], "reward": 3.0, "reward_components": {"pid": float(os.getpid())}, "error": None}
