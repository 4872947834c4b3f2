"""The synchronous GRPO loop, read top to bottom. Construction lives in build.py.

    loader ──prompts──▶ generators (Ray actors) ──samples──▶ scorer (verifier pool)
       ▲                      ▲                                   │ scores
       │                      │ weights (gloo group / object store)▼
    checkpointer ◀── state ── learner (Ray actor) ◀── batch ── advantages (pure)

With cluster.placement=colocated the generators sleep from scoring to the weight sync (vLLM frees
its KV cache and offloads its weights on a GPU; a no-op on the CPU) and wake before it.
Each phase runs in a named timer (`timing/<phase>`); one metrics dict per step goes
to the logger; validation runs at the start, every `validation.every_steps` and at
the end; the checkpointer saves full state so a resumed run continues the same curve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from nemo_rlvr.algorithms.advantages import group_stats, grpo_advantages
from nemo_rlvr.config import RunConfig
from nemo_rlvr.evaluate import evaluate
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.logging import Timer
from nemo_rlvr.metrics import logprob_mismatch, rollout_metrics
from nemo_rlvr.types import Prompt, SamplingParams

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Controller state that a checkpoint restores (with the workers' own state)."""

    step: int = 0
    consumed_samples: int = 0
    best_metric: float | None = None
    wandb_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass
class Components:
    """Everything the loop talks to, built by `build.build_run`."""

    cfg: RunConfig
    generators: Any          # GeneratorGroup (Generator protocol)
    learner: Any             # LearnerGroup (Learner contract)
    scorer: Any              # scoring.make.make_scorer(...): Scorer protocol (score, close)
    loader: Any              # PromptLoader
    val_prompts: list[Prompt]
    logger: Any              # MetricLogger
    checkpointer: Any        # Checkpointer
    pad_id: int
    state: RunState


def sampling_params(cfg: RunConfig, *, step: int) -> SamplingParams:
    g = cfg.generation
    return SamplingParams(n=cfg.algorithm.group_size, temperature=g.temperature, top_p=g.top_p,
                          max_new_tokens=g.max_new_tokens, stop=g.stop, seed=cfg.seed * 100_003 + step)


def extra_forwards(cfg: RunConfig) -> dict[str, bool]:
    """The no-grad forwards a step needs before training: the policy's log-probs only when the
    batch is split into several optimizer steps (on-policy, one step reuses the training forward),
    the reference's only when KL is on. {} when none is."""
    need = {"policy": cfg.learner.minibatches_per_step > 1, "reference": cfg.algorithm.kl_coef > 0}
    return need if any(need.values()) else {}


def validate(run: Components, step: int) -> dict[str, float]:
    """Greedy accuracy (and sampled pass@k when configured) on the held-out prompts."""
    g = run.cfg.generation
    return evaluate(run.generators, run.scorer, run.val_prompts, max_new_tokens=g.max_new_tokens, stop=g.stop,
                    temperature=g.temperature, top_p=g.top_p, pass_k=run.cfg.validation.pass_k,
                    seed=10_000_019 + step)


def train(run: Components) -> RunState:
    cfg, st = run.cfg, run.state
    timer = Timer()
    bucket_bytes = cfg.generation.weight_sync_bucket_bytes
    colocated = cfg.cluster.placement == "colocated"  # generators share the learner's GPUs
    if st.step == 0 and cfg.validation.at_start:
        run.logger.write(0, validate(run, 0))
    if st.step >= cfg.train.steps:
        log.warning("train.steps=%d already reached (the run is at step %d); nothing to train. Raise "
                    "train.steps to continue.", cfg.train.steps, st.step)

    for step in range(st.step + 1, cfg.train.steps + 1):
        with timer("step"):
            with timer("generate"):
                prompts = run.loader.next_batch(cfg.train.prompts_per_step)
                samples = run.generators.generate(prompts, sampling_params(cfg, step=step))  # N = B*G
            if colocated:  # the learner's phases: vLLM drops its KV cache and offloads its weights
                run.generators.sleep()
                run.learner.reload_optimizer()  # (both no-ops on CPU)
            with timer("score"):
                scores = run.scorer.score(samples)          # never raises; .metrics: verifier/*
            rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)        # [N]
            groups = torch.tensor([s.group_id for s in samples])                            # [N]
            adv = grpo_advantages(rewards, groups, baseline=cfg.algorithm.baseline,
                                  normalize_std=cfg.algorithm.normalize_std)                # [N]
            batch = collate(samples, adv, pad_id=run.pad_id)
            if passes := extra_forwards(cfg):  # else train's own forward gives logp_old
                with timer("logprobs"):
                    batch = batch.with_(**run.learner.logprobs(batch, **passes))            # logp_old, logp_ref
            with timer("train"):
                train_metrics = run.learner.train(batch)
            if colocated:  # the generators' phase: optimizer state to host, vLLM's weights back
                run.learner.offload_optimizer()
                run.generators.wake(["weights"])   # then the new weights arrive, then the KV cache
            with timer("weight_sync"):
                sync_metrics = run.learner.push_weights(run.generators, bucket_bytes)
            if colocated:
                run.generators.wake(["kv_cache"])

        mismatch = {} if batch.logp_old is None else logprob_mismatch(batch.logp_gen, batch.logp_old, batch.loss_mask)
        metrics = (rollout_metrics(samples, scores) | mismatch
                   | {k: float(v) for k, v in group_stats(rewards, groups).items()}
                   | train_metrics | sync_metrics | scores.metrics | timer.flush())
        metrics |= throughput(metrics, samples, batch, gen_devices=cfg.generation.num_workers
                              * cfg.generation.tensor_parallel_size, train_devices=cfg.learner.num_workers)
        st.step, st.consumed_samples = step, st.consumed_samples + len(samples)
        if step == cfg.train.steps or (cfg.validation.every_steps and step % cfg.validation.every_steps == 0):
            metrics |= validate(run, step)
        run.logger.write(step, metrics)
        if cfg.logging.sample_table_every and step % cfg.logging.sample_table_every == 0:
            run.logger.write_samples(step, sample_rows(samples, scores))
        run.checkpointer.maybe_save(step, metrics, final=step == cfg.train.steps)
    return st


def throughput(metrics: dict[str, float], samples: list, batch, *, gen_devices: int,
               train_devices: int) -> dict[str, float]:
    gen = sum(len(s.response_ids) for s in samples) / max(metrics.get("timing/generate", 0.0), 1e-9)
    trained = int(batch.attention_mask.sum()) / max(metrics.get("timing/train", 0.0), 1e-9)
    return {
        "throughput/gen_tokens_per_s": gen,
        "throughput/train_tokens_per_s": trained,
        "throughput/gen_tokens_per_s_per_device": gen / gen_devices,
        "throughput/train_tokens_per_s_per_device": trained / train_devices,
    }


def sample_rows(samples: list, scores: list, limit: int = 16) -> list[dict[str, Any]]:
    return [{"prompt": s.prompt_text, "response": s.text, "reward": sc.reward, "error": sc.error}
            for s, sc in list(zip(samples, scores))[:limit]]
