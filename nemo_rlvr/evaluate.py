"""Evaluation on held-out prompts: greedy accuracy, sampled accuracy and pass@k.

    controller.validate (every validation.every_steps) ─┐
                                                         ├─▶ evaluate(generators, scorer, prompts, ...)
    nemo-rlvr eval CKPT_OR_HF_DIR (build.run_eval, ─────┘
                                   local, no Ray)

One function serves training and the standalone command, so the numbers agree. pass@k uses
the unbiased estimator over n = max(pass_k) samples per prompt (metrics.accuracy_metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from nemo_rlvr.metrics import accuracy_metrics
from nemo_rlvr.types import Prompt, SamplingParams

log = logging.getLogger(__name__)


def evaluate(generators: Any, scorer: Any, prompts: Sequence[Prompt], *, max_new_tokens: int,
             stop: tuple[str, ...], temperature: float, top_p: float, pass_k: Sequence[int], seed: int,
             prefix: str = "val/", rows: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """`{prefix}accuracy` greedy; with pass_k also `{prefix}sampled_accuracy` and `{prefix}sampled_pass@k`
    from max(pass_k) samples per prompt at `temperature`. `rows` (if given) gets one record per greedy
    sample: prompt, response, reward, error."""
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=stop, seed=0)
    samples = generators.generate(prompts, greedy)
    scores = scorer.score(samples)
    out = accuracy_metrics(prefix, scores, [s.group_id for s in samples], ())
    if rows is not None:
        rows.extend({"prompt": s.prompt_text, "response": s.text, "reward": sc.reward, "error": sc.error}
                    for s, sc in zip(samples, scores))
    if pass_k:
        sampled = SamplingParams(n=max(pass_k), temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, stop=stop, seed=seed)
        samples = generators.generate(prompts, sampled)
        scores = scorer.score(samples)
        out |= accuracy_metrics(f"{prefix}sampled_", scores, [s.group_id for s in samples], pass_k)
    return out
