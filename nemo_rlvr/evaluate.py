"""Evaluation on held-out prompts: greedy accuracy, sampled accuracy and pass@k.

    controller.validate (every validation.every_steps) ─┐
                                                         ├─▶ evaluate(generators, scorer, prompts, ...)
    nemo-rlvr eval CKPT_OR_HF_DIR (local, no Ray) ──────┘

One function serves training and the standalone command, so the numbers agree. pass@k uses
the unbiased estimator over n = max(pass_k) samples per prompt (metrics.accuracy_metrics).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemo_rlvr.metrics import accuracy_metrics
from nemo_rlvr.rollout.base import Prompt, SamplingParams

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


def eval_config(model: Path, overrides: Sequence[str]):
    """The run config for evaluating `model`: a checkpoint's own config.yaml, else the default
    recipe; then `overrides` (key=value)."""
    from nemo_rlvr.checkpoint import is_checkpoint
    from nemo_rlvr.config import ConfigError, load_config

    if not model.is_dir():
        raise ConfigError(f"{model} is not a folder; give a checkpoint (runs/<name>/checkpoints/step_N) "
                          f"or a Hugging Face model folder.")
    base = model / "config.yaml" if is_checkpoint(model) else None
    return load_config(base, list(overrides))


def run_eval(model: Path, overrides: Sequence[str], *, output: Path | None = None) -> dict[str, float]:
    """Evaluate a checkpoint or HF folder on the config's held-out prompts, in this process."""
    from transformers import AutoTokenizer

    from nemo_rlvr.build import load_val_prompts, vllm_kwargs
    from nemo_rlvr.checkpoint import export_checkpoint, is_checkpoint
    from nemo_rlvr.envs.pool import make_scorer
    from nemo_rlvr.rollout.group import GeneratorGroup, GeneratorWorker

    cfg = eval_config(model, overrides)
    with tempfile.TemporaryDirectory(prefix="nemo-rlvr-eval-") as tmp:
        model_dir = model
        if is_checkpoint(model):
            model_dir = export_checkpoint(model, Path(tmp) / "hf")
        prompts = load_val_prompts(cfg, AutoTokenizer.from_pretrained(model_dir))
        kwargs: dict[str, Any] = {"dtype": cfg.model.dtype}
        if cfg.generation.backend == "vllm":
            kwargs |= vllm_kwargs(cfg)
        worker = GeneratorWorker(cfg.generation.backend, str(model_dir), num_threads=0, **kwargs)
        gens = GeneratorGroup([worker])
        scorer = make_scorer(cfg.env)
        rows: list[dict[str, Any]] = []
        try:
            g = cfg.generation
            metrics = evaluate(gens, scorer, prompts, max_new_tokens=g.max_new_tokens, stop=g.stop,
                               temperature=g.temperature, top_p=g.top_p, pass_k=cfg.validation.pass_k,
                               seed=cfg.seed, rows=rows)
        finally:
            scorer.close()
    metrics["val/prompts"] = float(len(prompts))
    if output is not None:
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return metrics


def format_table(metrics: dict[str, float], title: str) -> str:
    width = max(len(k) for k in metrics)
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v:.4f}" if k != "val/prompts" else f"{k:<{width}}  {int(v)}"
              for k, v in metrics.items()]
    return "\n".join(lines)
