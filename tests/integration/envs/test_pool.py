"""Verifier pool: order, per-sample timeouts, crash isolation and retries, metrics, cleanup.
In-process scoring (InlineScorer, checked_score) is tests/unit/envs/test_inline_scorer.py."""

from __future__ import annotations

import time

import psutil
import pytest

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.scoring.make import make_scorer
from nemo_rlvr.scoring.pool import VerifierPool
from nemo_rlvr.types import Sample, Score

MODULE = "tests.helpers.verifier_envs"


def sample(text: str, env: str = "test_echo", **fields) -> Sample:
    return Sample([], [], [], text, "stop", 0, env, fields)


@pytest.fixture(scope="module")
def pool():
    p = VerifierPool(EnvConfig(name="test_echo", module=MODULE, num_workers=2, timeout_s=0.5, max_retries=1))
    yield p
    p.close()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_keeps_order_across_workers_and_envs(pool):
    samples = [sample(str(i)) if i % 7 else sample("x", env="test_spin", spin=100) for i in range(500)]
    out = pool.score(samples)
    assert len(out) == 500
    for i, s in enumerate(out):
        assert s == (Score(float(i), {"len": float(len(str(i)))}) if i % 7 else Score(1.0))


def test_empty_batch(pool):
    assert pool.score([]) == []


def test_timeout_scores_zero_and_spares_the_others(pool):
    hang = sample("x", env="test_sleep", sleep_s=30)
    samples = [sample("0"), hang, *[sample(str(i)) for i in range(2, 40)]]
    t0 = time.monotonic()
    out = pool.score(samples)
    elapsed = time.monotonic() - t0
    assert out[1] == Score(0.0, {}, "timeout after 0.5s")
    assert [s.reward for i, s in enumerate(out) if i != 1] == [float(i) for i in range(40) if i != 1]
    assert all(s.error is None for i, s in enumerate(out) if i != 1)
    assert 0.5 <= elapsed < 2.0  # one timeout (0.5 s) + a respawn, not 30 s
    m = out.metrics
    assert (m["verifier/timeouts"], m["verifier/errors"], m["verifier/crashes"]) == (1, 1, 0)


def test_two_hangs_on_two_workers_time_out_together(pool):
    t0 = time.monotonic()
    out = pool.score([sample("x", env="test_sleep", sleep_s=30)] * 2 + [sample("5")])
    assert [s.error for s in out] == ["timeout after 0.5s"] * 2 + [None]
    assert time.monotonic() - t0 < 1.5  # in parallel, not one after the other


def test_timeout_kills_descendants_in_their_own_session(pool, tmp_path):
    pid_file = tmp_path / "child.pid"
    out = pool.score([sample("x", env="test_spawn_sleeper", pid_file=str(pid_file))])
    assert out[0].error == "timeout after 0.5s"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(child), "a sandbox-like child (own session) outlived its killed worker"


def test_crash_is_retried_then_scored_zero_and_pool_recovers(pool):
    out = pool.score([sample("1"), sample("x", env="test_crash", crash=True), sample("3")])
    assert out[0] == Score(1.0, {"len": 1.0}) and out[2] == Score(3.0, {"len": 1.0})
    assert out[1].reward == 0.0
    assert out[1].error == "verifier crashed: worker exit code 3 while scoring this sample (2 attempts)"
    m = out.metrics
    # crashes: the first try and one retry (max_retries=1); one sample ends with an error
    assert (m["verifier/crashes"], m["verifier/errors"], m["verifier/samples"]) == (2, 1, 3)
    after = pool.score([sample(str(i)) for i in range(20)])
    assert [s.reward for s in after] == [float(i) for i in range(20)]
    assert after.metrics["verifier/crashes"] == 0  # the next call counts only its own


def test_crash_kills_what_the_worker_left_in_its_group(pool, tmp_path):
    pid_file = tmp_path / "children"
    out = pool.score([sample("x", env="test_crash_leaving_child", pid_file=str(pid_file))])
    assert out[0].error.startswith("verifier crashed")
    children = [int(x) for x in pid_file.read_text().split()]
    assert len(children) == 2  # first try + one retry
    deadline = time.monotonic() + 2
    while not all(gone(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(gone(c) for c in children)


def test_crash_once_succeeds_on_retry(pool, tmp_path):
    out = pool.score([sample("x", env="test_crash", crash_once=str(tmp_path / "crashed"))])
    assert out[0].reward == 1.0 and out[0].error is None
    assert out.metrics["verifier/crashes"] == 1


def test_env_that_raises_sets_error(pool):
    out = pool.score([sample("oops", env="test_raise"), sample("2")])
    assert out == [Score(0.0, {}, "ValueError: bad response 'oops'"), Score(2.0, {"len": 1.0})]


def test_unknown_env_is_a_per_sample_error(pool):
    out = pool.score([sample("1", env="no_such_env"), sample("2")])
    assert out[0].reward == 0.0 and out[0].error.startswith("unknown environment 'no_such_env'")
    assert out[1].error is None


def test_unpicklable_fields_fail_only_that_sample(pool):
    out = pool.score([sample("1"), sample("2", f=lambda: 0), sample("3")])
    assert [s.reward for s in out] == [1.0, 0.0, 3.0]
    assert out[1].error.startswith("env fields cannot be sent to a worker")


def test_metrics_are_per_call(pool):
    m = pool.score([sample("1"), sample("x", env="test_raise"), sample("2")]).metrics
    counts = [m[f"verifier/{k}"] for k in ("samples", "errors", "timeouts", "crashes")]
    assert counts == [3, 1, 0, 0]
    assert m["verifier/seconds"] > 0
    m2 = pool.score([sample("4")]).metrics  # a second call (e.g. validation) has its own counts
    assert [m2[f"verifier/{k}"] for k in ("samples", "errors")] == [1, 0]
    assert m["verifier/samples"] == 3  # and leaves the first call's untouched


def test_close_leaves_no_processes():
    p = VerifierPool(EnvConfig(name="test_echo", module=MODULE, num_workers=2, timeout_s=5))
    assert p.score([sample("1")])[0].reward == 1.0
    pids = p.worker_pids()
    assert len(pids) == 2
    p.close()
    p.close()  # idempotent
    assert all(gone(pid) for pid in pids)
    assert p.score([sample("1")]) == [Score(0.0, {}, "verifier pool is closed")]


def test_close_kills_a_worker_stuck_mid_sample():
    """close() after an interrupted score() (e.g. Ctrl-C) still ends every worker."""
    p = VerifierPool(EnvConfig(name="test_sleep", module=MODULE, num_workers=1, timeout_s=60))
    p.score([sample("x", sleep_s=0)])
    w = p._workers[0]
    w.conn.send([(0, "test_sleep", "x", {"sleep_s": 60})])  # as if score() had been interrupted
    time.sleep(0.1)
    t0 = time.monotonic()
    p.close()
    assert time.monotonic() - t0 < 3 and gone(w.proc.pid)


def test_workers_that_cannot_start_fail_the_batch_quickly():
    p = VerifierPool(EnvConfig(name="test_echo", module="tests.helpers.verifier_env_exit_on_import",
                               num_workers=1, timeout_s=5))
    t0 = time.monotonic()
    out = p.score([sample("1"), sample("2")])
    p.close()
    assert time.monotonic() - t0 < 5
    assert all(s.reward == 0.0 and "failed to start (exit code 5)" in s.error for s in out)


def test_make_scorer_picks_the_pool_with_workers():
    pool = make_scorer(EnvConfig(num_workers=1))
    assert isinstance(pool, VerifierPool)
    pool.close()


def test_chunks_keep_a_group_together_while_the_batch_stays_balanced():
    """40 samples in 5 groups of 8 (equal fields), 2 workers, ~5 ms per sample: a chunk holds
    about 20 ms of work (4 samples) but grows to the end of its group, up to a quarter of what
    is left (todo / (2 * workers)); near the end of the batch groups may be split again."""
    from collections import deque

    from nemo_rlvr.scoring.pool import _Batch

    with VerifierPool(EnvConfig(name="test_echo", module=MODULE, num_workers=2)) as p:
        p._item_s = 0.005
        items = [(i, "test_echo", "1", {"answer": i // 8}) for i in range(40)]
        b = _Batch(items, [None] * 40, deque(range(40)), [0] * 40)
        sizes = []
        while b.todo:
            sizes.append(len(p._take_chunk(b)))
        # left 40 -> cap 10: all of group 0 (8); 32 -> cap 8: group 1; 24 -> cap 6: 6 of group 2;
        # 18 -> 4 (2 of group 2, 2 of group 3) + 1 more of group 3 (cap 5); then the tail
        # shrinks to single samples, as without groups, so no worker idles at the end.
        assert sizes == [8, 8, 6, 5, 4, 3, 2, 1, 1, 1, 1]
        # different fields are never merged past the ~20 ms target
        items = [(i, "test_echo", "1", {"answer": i}) for i in range(40)]
        b = _Batch(items, [None] * 40, deque(range(40)), [0] * 40)
        assert len(p._take_chunk(b)) == 4
        # same fields but another env: not a group
        items = [(i, "test_echo" if i % 2 else "arithmetic", "1", {"answer": 1}) for i in range(40)]
        b = _Batch(items, [None] * 40, deque(range(40)), [0] * 40)
        assert len(p._take_chunk(b)) == 4


def test_a_group_is_scored_by_one_worker():
    samples = [sample("1", "test_scaled", answer=g) for g in range(8) for _ in range(8)]
    with VerifierPool(EnvConfig(name="test_scaled", module=MODULE, num_workers=2)) as p:
        p.score(samples[:4])  # warm: the per-sample estimate drops to microseconds
        p._item_s = 0.005   # as for math: ~4 samples per chunk without the group rule
        out = p.score(samples)
    pids = [{out[g * 8 + k].components["pid"] for k in range(8)} for g in range(8)]
    # the first 4 chunks go out before any result: caps 16, 14, 12, 10 -> groups 0-3 whole
    assert all(len(s) == 1 for s in pids[:4]), pids
    assert [o.reward for o in out] == [1.0] * 64
