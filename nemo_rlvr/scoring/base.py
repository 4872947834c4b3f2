"""What every scorer shares: the `Scorer` protocol, per-call counters, and in-process scoring.

    controller / evaluate / verify CLI / env server
        │  scorer.score(samples) -> Scores (a list of Score, in order, + .metrics of this call)
        ▼
    InlineScorer (this process) | VerifierPool (scoring/pool.py) | RemoteScorer (scoring/remote.py)
        │  EnvCache.score(env name, text, fields) -> checked_score
        ▼
    envs: Environment.score_record(response, fields) -> Score

A scorer never raises for a sample: a verifier that raises, exits, returns a non-`Score`
or a non-finite reward gives reward 0 with `error` set (`checked_score`). Each call returns
its own `verifier/*` counters (`Scores.metrics`), so callers that score for different
purposes (training, validation) never mix them.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.envs.base import ENVIRONMENTS, Environment
from nemo_rlvr.envs.registry import UnknownEnvError, check_env_options, get_env
from nemo_rlvr.types import Sample, Score

METRIC_KEYS = ("verifier/samples", "verifier/seconds", "verifier/errors", "verifier/timeouts",
               "verifier/crashes")


class Counters(dict):
    """Verifier metric counters (`METRIC_KEYS` and any extra keys); `pop_all` returns and resets."""

    def __init__(self, keys: Sequence[str] = METRIC_KEYS):
        super().__init__(dict.fromkeys(keys, 0.0))

    def add_batch(self, out: Sequence[Score], seconds: float) -> None:
        self["verifier/samples"] += len(out)
        self["verifier/errors"] += sum(s.error is not None for s in out)
        self["verifier/seconds"] += seconds

    def pop_all(self) -> dict[str, float]:
        out = dict(self)
        for k in self:
            self[k] = 0.0
        return out
"""errors: samples whose score has `error` set (any cause, timeouts and crashes included);
timeouts: samples killed at their time limit; crashes: workers that died mid-sample."""


class Scores(list):
    """The scores of one `Scorer.score` call, in sample order (a `list[Score]`), and `metrics`:
    that call's verifier counters (`METRIC_KEYS`, plus scorer-specific keys)."""

    def __init__(self, scores: Iterable[Score], metrics: Mapping[str, float]):
        super().__init__(scores)
        self.metrics = dict(metrics)


class Scorer(Protocol):
    """What the controller, evaluation, CLI and server score through (inline, pool or remote)."""

    def score(self, samples: Sequence[Sample]) -> Scores: ...  # len(out) == len(samples)

    def close(self) -> None: ...


def checked_score(env: Environment, text: str, fields: Mapping[str, Any]) -> Score:
    """`env.score_record(text, fields)`, made safe: an exception or exit() becomes reward 0 with
    `error`, and the result must be a `Score` with a finite float reward."""
    try:
        s = env.score_record(text, fields)
    except SystemExit as e:  # an env calling exit() must not end the worker or the trainer
        return Score(0.0, {}, f"verifier called exit({e.code})")
    except Exception as e:  # a verifier never raises into the controller
        return Score(0.0, {}, f"{type(e).__name__}: {e}")
    if not isinstance(s, Score):
        return Score(0.0, {}, f"environment returned {type(s).__name__}, not Score")
    try:
        reward = float(s.reward)
        comps = {str(k): float(v) for k, v in s.components.items()}
    except (TypeError, ValueError, AttributeError) as e:
        return Score(0.0, {}, f"environment returned a non-numeric reward or component ({e})")
    if not math.isfinite(reward):
        return Score(0.0, comps, f"environment returned a non-finite reward ({reward})")
    return Score(reward, comps, None if s.error is None else str(s.error))


class EnvCache:
    """Environments by name, built on first use; a failed build is remembered as its error.

    `options` are constructor arguments for the env named `default` (env.options)."""

    def __init__(self, module: str | None, default: str | None = None, options: Mapping[str, Any] | None = None):
        self.module = module
        self._kwargs = {default: dict(options or {})}
        self._envs: dict[str, Environment | str] = {}

    def get(self, name: str) -> Environment | str:
        if name not in self._envs:
            try:
                self._envs[name] = get_env(name, self.module, **self._kwargs.get(name, {}))
            except Exception as e:  # bad module, unknown env, failing constructor: its samples score 0
                unknown = isinstance(e, UnknownEnvError) and name not in ENVIRONMENTS and (
                    self.module is None or self.module in sys.modules)
                self._envs[name] = (
                    f"unknown environment {name!r} (the sample's env / the record's 'env' field); known: "
                    f"{', '.join(sorted(ENVIRONMENTS))}. Use one of these, or register yours with "
                    f"@register_env in a module named by env.module (--env-module)."
                ) if unknown else f"{type(e).__name__}: {e}"
        return self._envs[name]

    def score(self, name: str, text: str, fields: Mapping[str, Any]) -> Score:
        env = self.get(name)
        return Score(0.0, {}, env) if isinstance(env, str) else checked_score(env, text, fields)


def checked_options(cfg: EnvConfig) -> dict[str, Any]:
    """env.options as the default env's constructor takes them; raises EnvOptionError up front."""
    return check_env_options(cfg.name, cfg.module, cfg.options) if cfg.options else {}


class InlineScorer:
    """Scores in the calling process, no time limit; for cheap, trusted environments (arithmetic)."""

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self._envs = EnvCache(cfg.module, cfg.name, checked_options(cfg))

    def score(self, samples: Sequence[Sample]) -> Scores:
        t0 = time.perf_counter()
        out = [self._envs.score(s.env or self.cfg.name, s.text, s.fields) for s in samples]
        stats = Counters()
        stats.add_batch(out, time.perf_counter() - t0)
        return Scores(out, stats)

    def close(self) -> None:
        pass
