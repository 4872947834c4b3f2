"""Choose and build a scorer from `env.*`, and score verify records with it.

    make_scorer(env_cfg): env.url -> RemoteScorer | env.num_workers == 0 -> InlineScorer
                          | else VerifierPool
    score_records(records, default_env, scorer): verify records in, scored records out
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.scoring.base import InlineScorer, Scorer
from nemo_rlvr.scoring.pool import VerifierPool
from nemo_rlvr.scoring.records import record_to_sample, scored_record
from nemo_rlvr.scoring.remote import RemoteScorer


def make_scorer(cfg: EnvConfig) -> Scorer:
    """env.url → RemoteScorer; env.num_workers == 0 → InlineScorer; else VerifierPool."""
    if cfg.url:
        return RemoteScorer(cfg)
    if cfg.num_workers == 0:
        return InlineScorer(cfg)
    return VerifierPool(cfg)


def score_records(records: Sequence[Mapping[str, Any]], default_env: str,
                  scorer: Scorer | EnvConfig) -> list[dict[str, Any]]:
    """Score verify records (already checked, see records.check_record) into output records.

    `scorer` is a live scorer (reused across calls: CLI, server) or an EnvConfig, for which a
    scorer is built and closed around this one call.
    """
    own = isinstance(scorer, EnvConfig)
    s = make_scorer(scorer) if own else scorer
    try:
        scores = s.score([record_to_sample(r, default_env) for r in records])
    finally:
        if own:
            s.close()
    return [scored_record(r, sc) for r, sc in zip(records, scores)]
