"""Verifier pool: scores a batch through an environment, never raising into the controller.

Placeholder until the verifier-pool issue lands: scores in-process through
`score_safely`. `make_scorer(env_cfg)` is the only entry the controller uses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.envs.base import Score, get_env, score_safely
from nemo_rlvr.rollout.base import Sample


class InlineScorer:
    """Scores in the calling process; for cheap, trusted environments (arithmetic)."""

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self._envs: dict[str, object] = {}
        self._stats = {"verifier/errors": 0.0, "verifier/timeouts": 0.0, "verifier/seconds": 0.0}

    def _env(self, name: str):
        if name not in self._envs:
            self._envs[name] = get_env(name, self.cfg.module)
        return self._envs[name]

    def score(self, samples: Sequence[Sample]) -> list[Score]:
        t0 = time.perf_counter()
        out = [score_safely(self._env(s.env or self.cfg.name), s.text, s.fields) for s in samples]
        self._stats["verifier/errors"] += sum(s.error is not None for s in out)
        self._stats["verifier/seconds"] += time.perf_counter() - t0
        return out

    def metrics(self) -> dict[str, float]:
        """Counters since the last call (then reset)."""
        out, self._stats = self._stats, dict.fromkeys(self._stats, 0.0)
        return out

    def close(self) -> None:
        pass


def make_scorer(cfg: EnvConfig) -> InlineScorer:
    return InlineScorer(cfg)
