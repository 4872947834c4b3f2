"""Verifier pool: scores samples in worker processes, time-bounded, crash-isolated, in order.

    score(samples) ──► todo: deque[sample index]
                        │  chunks of (idx, env, text, fields), ≤ 2 chunks ahead per worker;
                        │  a chunk does not split a group (same env + fields) while balanced
           ┌────────────┼────────────┐
           ▼            ▼            ▼
       worker 0     worker 1 ... worker N-1      forkserver processes, each its own session
       get_env(name, module).score_record  ──► one (idx, reward, components, error) per sample
           │            │            │
           └────────────┴────────────┴──► out[idx]; the sample after it starts its clock

The parent knows which sample each worker is on: results come back one per sample, in the
order sent, so the head of a worker's in-flight queue is the one being scored; its clock
starts when the previous result arrives. Past `timeout_s` the parent SIGKILLs the worker's
process group (and any descendants that left it, e.g. sandboxes), scores the sample 0 with
error "timeout after Xs", and starts a replacement. A worker that dies on its own mid-sample
is replaced and the sample retried up to `max_retries` times, then scored 0 with error
"verifier crashed: ...". The other samples queued on a killed worker are resent untouched.
Nothing raises into the caller. `scoring.make.make_scorer(env_cfg)` picks this pool when
`env.num_workers > 0`.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing as mp
import os
import pickle
import select
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.envs.base import set_pool_workers
from nemo_rlvr.scoring.base import Counters, EnvCache, Scores, checked_options
from nemo_rlvr.types import Sample, Score

log = logging.getLogger(__name__)

_READY = "ready"
_AHEAD_MAX_BYTES = 64 * 1024
"""A chunk queued behind a busy worker must fit the socket buffer (~200 KiB on Linux):
a blocking send to a worker stuck in a hang would stop the parent enforcing deadlines."""
_STARTUP_TIMEOUT_S = 120.0
_MAX_STARTUP_FAILURES = 3
_CHUNK_TARGET_S = 0.02
"""Chunks hold about this much work: fewer round trips, still balanced at the tail."""


# ------------------------------------------------------------------ worker process


def _worker_main(conn: Connection, default_env: str, module: str | None, options: dict[str, Any],
                 num_workers: int) -> None:
    """Worker loop: chunks in, one result tuple per sample out, until None or EOF."""
    os.setsid()  # own session and process group: killpg reaches whatever the env spawns
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    set_pool_workers(num_workers)  # envs size their own parallelism to a share of the cores
    envs = EnvCache(module, default_env, options)
    envs.get(default_env)  # build (and import) the default env before taking work
    conn.send(_READY)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for idx, name, text, fields in chunk:
            s = envs.score(name, text, fields)
            conn.send((idx, s.reward, s.components, s.error))


def _die_with_parent() -> None:
    """SIGKILL this worker when its parent (the forkserver, which exits with us) dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's close() and EOF on the pipe still end the worker


def _kill_tree(w: _Worker) -> None:
    """SIGKILL a worker, its process group, and descendants that made their own session.

    A live worker is not reaped yet, so its pid and group id are still its own. A dead one
    was reaped by the forkserver and its pid may already belong to someone else: then only
    processes of its group that started during its lifetime are killed (what it left behind).
    """
    proc, pid = w.proc, w.proc.pid
    try:
        import psutil
    except ImportError:
        psutil = None
    if proc.exitcode is None:
        try:
            descendants = psutil.Process(pid).children(recursive=True) if psutil else []
        except Exception:  # it exited meanwhile
            descendants = []
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), proc.kill, *[d.kill for d in descendants]):
            try:
                kill()
            except Exception:  # already exited
                pass
    elif psutil is not None:
        now = time.time()
        for p in psutil.process_iter(["create_time"]):
            try:
                if (p.pid != pid and os.getpgid(p.pid) == pid  # pid == pid: a newcomer reusing it
                        and w.spawned_wall - 1 <= p.info["create_time"] <= now):
                    p.kill()
            except Exception:  # gone meanwhile, or not ours to see
                pass
    proc.join(timeout=5)


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        _kill_tree(w)


_LIVE_POOLS: weakref.WeakSet[VerifierPool] = weakref.WeakSet()


@atexit.register  # registered after multiprocessing's own exit hook, so it runs first: that
def _kill_live_pools() -> None:  # hook joins non-daemon children, which idle workers never end
    for pool in list(_LIVE_POOLS):
        pool._finalizer()


# ------------------------------------------------------------------ parent side


@dataclass(eq=False)  # identity: workers are looked up in the pool's list
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection
    spawned_at: float
    spawned_wall: float
    """time.time() at spawn: its leftovers are processes of its group created after this."""
    ready: bool = False
    inflight: deque[int] = field(default_factory=deque)
    """Sample indices sent, in order; the head is the one being scored."""
    chunks: deque[int] = field(default_factory=deque)
    """Sizes of the chunks in flight; all but the first still sit unread in the pipe."""
    head_since: float = 0.0
    """When the head sample started (monotonic s)."""
    readable: Any = None
    """select.poll() on `conn` alone: "is another result waiting?" in one syscall."""


@dataclass
class _Batch:
    items: list[tuple[int, str, str, dict[str, Any]]]
    out: list[Score | None]
    todo: deque[int]
    attempts: list[int]
    suspects: set[int] = field(default_factory=set)
    """Samples whose worker crashed; retried alone so they take no neighbours down."""
    left: int = 0


class VerifierPool:
    """N worker processes scoring in parallel; see the module docstring for the mechanics."""

    def __init__(self, cfg: EnvConfig):
        if cfg.num_workers < 1:
            raise ValueError(f"env.num_workers={cfg.num_workers}: a VerifierPool needs >= 1 worker; "
                             f"use InlineScorer (make_scorer with env.num_workers=0) to score in-process.")
        self.cfg = cfg
        self._options = checked_options(cfg)
        self._ctx = mp.get_context("forkserver")  # never fork a process that may hold threads/Ray
        self._ctx.set_forkserver_preload([__name__])  # workers start with envs + this module imported
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._poll = select.poll()  # every worker's pipe and exit sentinel
        self._fds: dict[int, _Worker] = {}
        self._closed = False
        self._startup_failures = 0
        self._item_s = 0.005  # running estimate of seconds per sample, sizes chunks
        self._stats = Counters()
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)
        _LIVE_POOLS.add(self)
        for _ in range(cfg.num_workers):
            self._workers.append(self._spawn())

    # -------------------------------------------------------------- public

    def score(self, samples: Sequence[Sample]) -> Scores:
        """Score in order; each sample gets a Score, never an exception. `.metrics` holds this
        call's counters (METRIC_KEYS: timeouts and crashes included)."""
        t0 = time.perf_counter()
        with self._lock:  # one call at a time: the counters are this call's alone
            self._stats = Counters()
            if self._closed:
                out = [Score(0.0, {}, "verifier pool is closed") for _ in samples]
            else:
                out = self._score_guarded(samples)
            self._stats.add_batch(out, time.perf_counter() - t0)
            return Scores(out, self._stats)

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def close(self) -> None:
        """Stop the workers (politely, then SIGKILL their process groups); idempotent."""
        with self._lock:
            self._closed = True
            for w in self._workers:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
            deadline = time.monotonic() + 0.5
            for w in self._workers:
                w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            self._finalizer()  # SIGKILL anything left, e.g. sandboxes in the workers' groups
            for w in self._workers:
                self._unwatch(w)
                w.conn.close()
            self._workers.clear()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- the loop

    def _score_guarded(self, samples: Sequence[Sample]) -> list[Score]:
        try:
            items = [(i, s.env or self.cfg.name, s.text, dict(s.fields)) for i, s in enumerate(samples)]
            b = _Batch(items, [None] * len(items), deque(range(len(items))), [0] * len(items))
            b.left = len(items)
            while b.left:
                self._step(b)
            return [s if s is not None else Score(0.0, {}, "verifier pool lost this sample") for s in b.out]
        except Exception as e:  # a bug here must not take the controller down: reset the pool
            log.exception("verifier pool failed; restarting its workers")
            self._reset()
            return [Score(0.0, {}, f"verifier pool internal error: {type(e).__name__}: {e}") for _ in samples]

    def _step(self, b: _Batch) -> None:
        """Dispatch, wait for results/deaths/deadlines, handle them."""
        for ahead in (1, 2):  # first a chunk for every worker, then one more each behind it
            for w in self._workers:
                self._dispatch(w, b, max_chunks=ahead)
        now = time.monotonic()
        busy = [w for w in self._workers if w.inflight]
        timeout = max(0.0, min(self._deadline(w) for w in busy) - now) if busy else 0.05
        events = self._poll.poll(math.ceil(timeout * 1000))  # ms; a persistent poll set: cheap wake-ups
        ready: dict[_Worker, bool] = {}  # worker -> its sentinel fired (it exited)
        for fd, _ in events:
            w = self._fds[fd]
            ready[w] = ready.get(w, False) or fd == w.proc.sentinel
        for w, exited in ready.items():
            if w in self._workers:
                self._receive(w, b, exited)
        now = time.monotonic()
        for w in list(self._workers):
            if w in self._workers and w.inflight and now >= self._deadline(w):
                self._expire(w, b)

    def _deadline(self, w: _Worker) -> float:
        return w.head_since + self.cfg.timeout_s if w.ready else w.spawned_at + _STARTUP_TIMEOUT_S

    def _dispatch(self, w: _Worker, b: _Batch, *, max_chunks: int) -> None:
        """Send chunks while `w` may take them: any size when idle, else small ones ahead."""
        while b.todo and len(w.chunks) < max_chunks:
            idle = not w.chunks and w.ready
            ids = self._take_chunk(b)
            payload = self._pickle_chunk(ids, b)
            if payload is None:
                continue
            if not idle and len(payload) > _AHEAD_MAX_BYTES:
                b.todo.extendleft(reversed(ids))
                return
            try:
                w.conn.send_bytes(payload)
            except OSError:  # it died; its sentinel is ready and _receive replaces it
                b.todo.extendleft(reversed(ids))
                return
            if not w.inflight:
                w.head_since = time.monotonic()
            w.inflight.extend(ids)
            w.chunks.append(len(ids))

    def _take_chunk(self, b: _Batch) -> list[int]:
        """The next samples for one worker: about _CHUNK_TARGET_S of work, extended so that it
        does not split a run of samples with the same env and fields (a GRPO group: one
        reference answer), as long as the batch stays balanced across workers."""
        if b.todo[0] in b.suspects:
            return [b.todo.popleft()]
        per_worker = math.ceil(len(b.todo) / (2 * len(self._workers)))
        k = max(1, min(64, per_worker, int(_CHUNK_TARGET_S / self._item_s)))
        k_group = max(k, min(64, per_worker))
        ids: list[int] = []
        while b.todo and b.todo[0] not in b.suspects and (
                len(ids) < k or (len(ids) < k_group and self._same_group(b, ids[-1], b.todo[0]))):
            ids.append(b.todo.popleft())
        return ids

    @staticmethod
    def _same_group(b: _Batch, i: int, j: int) -> bool:
        """Samples i and j share env and fields, so an env's per-worker caches (math: the parsed
        reference answer) serve both when one worker scores them."""
        (_, env_i, _, fields_i), (_, env_j, _, fields_j) = b.items[i], b.items[j]
        try:
            return env_i == env_j and fields_i == fields_j
        except Exception:  # fields whose __eq__ raises (numpy arrays): treat as different
            return False

    def _pickle_chunk(self, ids: list[int], b: _Batch) -> bytes | None:
        """Pickle a chunk; samples that cannot be pickled are scored 0 here and left out."""
        try:
            return pickle.dumps([b.items[i] for i in ids], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            chunk_error = e
        good = []
        for i in ids:
            try:
                pickle.dumps(b.items[i])
                good.append(i)
            except Exception as e:
                self._finish(b, i, Score(0.0, {}, f"env fields cannot be sent to a worker: {e}"))
        if len(good) == len(ids):  # each pickles alone but not together: never loop on it
            for i in good:
                self._finish(b, i, Score(0.0, {}, f"env fields cannot be sent to a worker: {chunk_error}"))
        else:
            b.todo.extendleft(reversed(good))
        return None

    def _receive(self, w: _Worker, b: _Batch, exited: bool) -> None:
        """Take every result `w` has sent; if it died, blame its head sample and replace it."""
        try:
            while w.readable.poll(0):
                self._on_message(w, b, w.conn.recv())
        except (EOFError, OSError):
            exited = True
        if exited:
            self._on_death(w, b)

    def _on_message(self, w: _Worker, b: _Batch, msg: Any) -> None:
        now = time.monotonic()
        if msg == _READY:
            w.ready, w.head_since = True, now
            self._startup_failures = 0
            return
        idx, reward, comps, error = msg
        head = w.inflight.popleft()
        assert head == idx, f"worker returned sample {idx}, expected {head}"  # results come in order
        self._item_s = 0.9 * self._item_s + 0.1 * max(now - w.head_since, 1e-6)
        w.head_since = now
        w.chunks[0] -= 1
        if not w.chunks[0]:
            w.chunks.popleft()
        self._finish(b, idx, Score(reward, comps, error))

    def _on_death(self, w: _Worker, b: _Batch) -> None:
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if not w.ready:
            self._startup_failures += 1
            self._replace(w, b, requeue=list(w.inflight))
            if self._startup_failures >= _MAX_STARTUP_FAILURES:
                self._fail_all(b, f"verifier worker failed to start ({how}) {self._startup_failures} times; "
                                  f"check env.module={self.cfg.module!r} and env.name={self.cfg.name!r}")
            return
        if not w.inflight:
            self._replace(w, b, requeue=[])
            return
        head, rest = w.inflight[0], list(w.inflight)[1:]
        self._stats["verifier/crashes"] += 1
        b.attempts[head] += 1
        self._replace(w, b, requeue=rest)
        if b.attempts[head] > self.cfg.max_retries:
            self._finish(b, head, Score(0.0, {}, f"verifier crashed: worker {how} while scoring this "
                                                 f"sample ({b.attempts[head]} attempts)"))
        else:
            b.suspects.add(head)
            b.todo.appendleft(head)

    def _expire(self, w: _Worker, b: _Batch) -> None:
        """`w` ran past a deadline: its head sample timed out (or it never started)."""
        if not w.ready:
            self._startup_failures += 1
            self._replace(w, b, requeue=list(w.inflight))
            if self._startup_failures >= _MAX_STARTUP_FAILURES:
                self._fail_all(b, f"verifier worker did not start within {_STARTUP_TIMEOUT_S:g}s")
            return
        head = w.inflight[0]
        self._replace(w, b, requeue=list(w.inflight)[1:])
        self._stats["verifier/timeouts"] += 1
        self._finish(b, head, Score(0.0, {}, f"timeout after {self.cfg.timeout_s:g}s"))

    def _replace(self, w: _Worker, b: _Batch, *, requeue: list[int]) -> None:
        """Kill `w` (if it died on its own: what it left in its group), resend `requeue`, respawn."""
        self._unwatch(w)
        _kill_tree(w)
        w.conn.close()
        b.todo.extendleft(reversed(requeue))
        self._workers[self._workers.index(w)] = self._spawn()

    def _fail_all(self, b: _Batch, error: str) -> None:
        for w in self._workers:
            while w.inflight:  # can't start workers: nothing in flight will come back
                self._finish(b, w.inflight.popleft(), Score(0.0, {}, error))
            w.chunks.clear()
        while b.todo:
            self._finish(b, b.todo.popleft(), Score(0.0, {}, error))
        self._reset()

    def _finish(self, b: _Batch, idx: int, s: Score) -> None:
        if b.out[idx] is None:
            b.out[idx] = s
            b.left -= 1

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.cfg.name, self.cfg.module, self._options,
                                                           self.cfg.num_workers),
                                 name="verifier-worker", daemon=False)
        proc.start()
        child.close()
        w = _Worker(proc, parent, spawned_at=time.monotonic(), spawned_wall=time.time(),
                    readable=select.poll())
        w.readable.register(parent.fileno(), select.POLLIN)
        for fd in (parent.fileno(), proc.sentinel):
            self._poll.register(fd, select.POLLIN)
            self._fds[fd] = w
        return w

    def _unwatch(self, w: _Worker) -> None:
        """Forget `w`'s fds (before closing them: the numbers get reused)."""
        for fd in (w.conn.fileno(), w.proc.sentinel):
            if self._fds.get(fd) is w:
                self._poll.unregister(fd)
                del self._fds[fd]

    def _reset(self) -> None:
        """Kill every worker and start fresh ones (after an internal error or startup failures)."""
        _kill_all(self._workers)
        for w in self._workers:
            self._unwatch(w)
            w.conn.close()
        self._workers[:] = [self._spawn() for _ in range(self.cfg.num_workers)]
        self._startup_failures = 0
