"""The synchronous GRPO loop, read top to bottom. Construction lives in build.py.

    loader ──prompts──▶ generators (Ray actors) ──samples──▶ scorer (verifier pool)
       ▲                      ▲                                   │ scores
       │                      │ weights (gloo group / object store)▼
    checkpointer ◀── state ── learner (Ray actor) ◀── batch ── advantages (pure, by name)

The algorithm is configuration (config.py PRESETS): the advantage estimator and the loss come from
the registries in algorithms/ by name; DAPO's dynamic sampling repeats generate + score until the
batch has enough informative groups (`rollout`); PPO's critic gives values before the advantages
and trains on their returns beside the policy.

With cluster.placement=colocated the generators sleep from scoring to the weight sync (vLLM frees
its KV cache and offloads its weights on a GPU; a no-op on the CPU) and wake before it.
Each phase runs in a named timer (`timing/<phase>`); one metrics dict per step goes
to the logger; validation runs at the start, every `validation.every_steps` and at
the end; the checkpointer saves full state so a resumed run continues the same curve.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from nemo_rlvr.algorithms.advantages import compute_advantages, group_stats
from nemo_rlvr.algorithms.dapo import DynamicSampler, overlong_penalty
from nemo_rlvr.config import RunConfig
from nemo_rlvr.dispatch import is_actor_death
from nemo_rlvr.evaluate import evaluate
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.logging import Timer
from nemo_rlvr.metrics import logprob_mismatch, rollout_metrics
from nemo_rlvr.scoring.base import Scores
from nemo_rlvr.types import Prompt, Sample, SamplingParams

log = logging.getLogger(__name__)


PREEMPTED_EXIT_CODE = 75
"""Exit status of a run stopped by SIGTERM / SIGINT after it checkpointed (EX_TEMPFAIL: try again;
launchers requeue on it). The same command resumes from that checkpoint."""


class StopRequested(Exception):
    """The first SIGTERM / SIGINT: the step in flight finished, `path` holds its checkpoint."""

    def __init__(self, signame: str, step: int, path: Any):
        super().__init__(f"{signame}: stopped after step {step}" + (f", checkpoint {path}" if path else ""))
        self.signame, self.step, self.path = signame, step, path


class RunStopped(RuntimeError):
    """The run cannot go on (repeated non-finite steps, a dead learner); the message says why and
    how to continue."""


@contextlib.contextmanager
def stop_on_signal() -> Iterator[dict[str, str]]:
    """While training: the first SIGTERM or SIGINT only sets `flag["signal"]` (the loop finishes the
    step, checkpoints and raises StopRequested); a second one raises KeyboardInterrupt at once. The
    previous handlers come back after. Outside the main thread (a test driving `train`) nothing is
    installed."""
    flag: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag:
            flag["second"] = signal.Signals(signum).name
            raise KeyboardInterrupt(f"second {flag['second']}")
        flag["signal"] = signal.Signals(signum).name
        log.warning("%s: finishing this step, then checkpointing and stopping (send it again to stop at "
                    "once)", flag["signal"])

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
    tokenizer: Any = None    # multi-turn rollouts render tool answers with its chat template


def sampling_params(cfg: RunConfig, *, step: int, round: int = 0) -> SamplingParams:
    """A step's sampling; dynamic sampling's later rounds (round > 0) draw with other seeds."""
    g = cfg.generation
    return SamplingParams(n=cfg.algorithm.group_size, temperature=g.temperature, top_p=g.top_p,
                          max_new_tokens=g.max_new_tokens, stop=g.stop,
                          seed=cfg.seed * 100_003 + step + round * 1_000_003)


def extra_forwards(cfg: RunConfig) -> dict[str, bool]:
    """The no-grad forwards a step needs before training: the policy's log-probs when the batch is
    split into several optimizer steps (on-policy, one step reuses the training forward) or when
    the KL goes into the reward (it needs them before the advantages), the reference's only when
    KL is on. {} when none is."""
    a = cfg.algorithm
    kl_reward = bool(a.kl_in_reward) and a.kl_coef > 0
    need = {"policy": cfg.learner.minibatches_per_step > 1 or kl_reward, "reference": a.kl_coef > 0}
    return need if any(need.values()) else {}


def shaped_rewards(cfg: RunConfig, samples: list[Sample], scores: list) -> torch.Tensor:
    """The verifier's rewards plus DAPO's soft overlong penalty when algorithm.overlong_buffer_len > 0. [N]"""
    a = cfg.algorithm
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)                    # [N]
    if a.overlong_buffer_len:
        lengths = torch.tensor([len(s.response_ids) for s in samples])                         # [N]
        rewards = rewards + overlong_penalty(lengths, max_len=a.overlong_max_len or cfg.generation.max_new_tokens,
                                             buffer_len=a.overlong_buffer_len)
    return rewards


def episodes(run: Components, prompts: list[Prompt], sp: SamplingParams) -> tuple[list[Sample], list, dict]:
    """Multi-turn rollouts (generation.max_turns > 1) against the prompts' environments."""
    from nemo_rlvr.envs.multiturn import is_multi_turn
    from nemo_rlvr.envs.registry import env_class, get_env
    from nemo_rlvr.rollout.multiturn import run_episodes

    envs: dict[str, Any] = {}

    def make_env(name: str):
        if name not in envs:
            if not is_multi_turn(env_class(name, run.cfg.env.module)):
                raise RunStopped(f"generation.max_turns={run.cfg.generation.max_turns} needs multi-turn "
                                 f"environments, and {name!r} is single-turn; use e.g. kv_store, or "
                                 f"generation.max_turns=1")
            options = run.cfg.env.options if name == run.cfg.env.name else {}
            envs[name] = get_env(name, run.cfg.env.module, **options)
        return envs[name]

    g = run.cfg.generation
    return run_episodes(run.generators.generate, run.tokenizer, prompts, make_env, sp, max_turns=g.max_turns,
                        max_episode_tokens=g.max_episode_tokens)


def without_truncated(batch, samples: list[Sample]):
    """The batch with the loss mask of every truncated response (finish_reason "length") cleared:
    DAPO's overlong filtering. They still count in their group's advantage baseline."""
    cut = torch.tensor([s.finish_reason == "length" for s in samples])                          # [N]
    return batch.with_(loss_mask=batch.loss_mask & ~cut[:, None])


def check_verifier_errors(cfg: RunConfig, step: int, scores: list) -> None:
    """RunStopped when env.max_error_rate of the step's samples failed to verify (training on
    rewards that are all 0 by error would only waste the run)."""
    errors = [s.error for s in scores if s.error is not None]
    if scores and len(errors) / len(scores) >= cfg.env.max_error_rate:
        where = f"the env server {cfg.env.url} (is it up? `nemo-rlvr serve-env`)" if cfg.env.url else \
            f"environment {cfg.env.name!r}"
        raise RunStopped(f"{len(errors)} of step {step}'s {len(scores)} samples got a verifier error (env."
                         f"max_error_rate={cfg.env.max_error_rate:g}), from {where}; the first: {errors[0]}")


def restart_generators(run: Components, faults: dict[str, float]) -> list[int]:
    """Replace the dead generator replicas, reconnect the weight transfer, give every replica the
    current weights; returns the replicas restarted ([]: none was dead). RunStopped when a replica
    died cluster.max_restarts times in a row."""
    dead = run.generators.restart_dead()
    if not dead:
        return dead
    in_a_row = run.state.extra.setdefault("generator_deaths_in_a_row", {})
    for i in dead:
        in_a_row[str(i)] = in_a_row.get(str(i), 0) + 1
        if in_a_row[str(i)] > run.cfg.cluster.max_restarts:
            raise RunStopped(f"generator replica {i} died {in_a_row[str(i)]} times in a row (cluster.max_restarts="
                             f"{run.cfg.cluster.max_restarts}); look at its log (out of memory?) and raise "
                             f"cluster.max_restarts or lower the generator's memory use")
    log.warning("generator replica(s) %s died: restarted, weights pushed, generating again", dead)
    faults["faults/generator_restarts"] = faults.get("faults/generator_restarts", 0.0) + len(dead)
    run.learner.reconnect(run.generators.workers)
    run.learner.push_weights(run.generators, run.cfg.generation.weight_sync_bucket_bytes)
    return dead


def surviving(run: Components, faults: dict[str, float], fn: Callable[[], Any]) -> Any:
    """`fn()`, again after restarting the generators whenever one died during it (the same
    prompts and seeds: the samples do not depend on the restart)."""
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_actor_death(e) or run.generators.respawn is None:
                raise
            if not restart_generators(run, faults):  # it was not a generator that died
                raise


def rollout(run: Components, step: int, timer: Timer, faults: dict[str, float]) -> tuple[list[Sample], list, torch.Tensor, torch.Tensor,
                                                                  dict[str, float]]:
    """Generate and score a step's samples: (samples, scores, rewards [N], group ids [N], metrics).

    With algorithm.dynamic_sampling (DAPO), groups whose rewards are all equal are dropped and
    more prompts are generated until train.prompts_per_step informative groups are in hand, for
    at most algorithm.max_resample_rounds rounds (algorithms/dapo.py decides)."""
    cfg, a = run.cfg, run.cfg.algorithm
    sampler = DynamicSampler(cfg.train.prompts_per_step, a.max_resample_rounds) if a.dynamic_sampling else None
    kept_samples, kept_scores, kept_rewards, verifier = [], [], [], {}
    need, rnd = cfg.train.prompts_per_step, 0
    while True:
        prompts = run.loader.next_batch(need)
        sp = sampling_params(cfg, step=step, round=rnd)
        if cfg.generation.max_turns > 1:  # episodes over turns: the environment scores them
            with timer("generate"):
                samples, scores, turn_metrics = surviving(run, faults, lambda: episodes(run, prompts, sp))
            scores = Scores(scores, turn_metrics)
        else:
            with timer("generate"):
                samples = surviving(run, faults, lambda: run.generators.generate(prompts, sp))        # B*G
            with timer("score"):
                scores = run.scorer.score(samples)          # never raises; .metrics: verifier/*
        for k, v in scores.metrics.items():
            verifier[k] = verifier.get(k, 0.0) + v      # counters of every round
        rewards = shaped_rewards(cfg, samples, scores)                                         # [B*G]
        groups = torch.tensor([s.group_id for s in samples])                                   # [B*G]
        if sampler is None:
            return samples, scores, rewards, groups, verifier
        kept_samples += samples
        kept_scores += list(scores)
        kept_rewards.append(rewards)
        decision = sampler.add(rewards, groups)
        if decision.done:
            break
        need, rnd = decision.missing_groups, rnd + 1
    idx = sampler.kept_indices()                                                               # [K]
    rewards = torch.cat(kept_rewards)[idx]                                                     # [K]
    return ([kept_samples[i] for i in idx.tolist()], [kept_scores[i] for i in idx.tolist()], rewards,
            sampler.kept_group_ids(), verifier | sampler.metrics())


def advantages(cfg: RunConfig, batch, rewards: torch.Tensor, groups: torch.Tensor,
               values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """algorithm.advantage from the registry (algorithms/advantages.py): [N, L-1] advantages on the
    batch's loss mask, and the critic's targets (gae) or None."""
    a = cfg.algorithm
    group_kw = dict(baseline=a.baseline, normalize_std=a.normalize_std) if a.advantage == "grpo" else {}
    kl_reward = a.kl_coef if a.kl_in_reward else 0.0
    return compute_advantages(a.advantage, rewards=rewards, group_ids=groups, mask=batch.loss_mask,
                              values=values, logp=batch.logp_old if kl_reward else None,
                              logp_ref=batch.logp_ref if kl_reward else None, gamma=a.gamma, lam=a.lam,
                              kl_coef=kl_reward, whiten_advantages=bool(a.whiten_advantages), **group_kw)


def validate(run: Components, step: int) -> dict[str, float]:
    """Greedy accuracy (and sampled pass@k when configured) on the held-out prompts; multi-turn:
    the share of greedy episodes the environment rewards 1, and their turns."""
    g = run.cfg.generation
    if g.max_turns > 1:
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=g.max_new_tokens, stop=g.stop,
                                seed=10_000_019 + step)
        _, scores, turns = episodes(run, run.val_prompts, greedy)
        return {"val/accuracy": sum(s.reward >= 1.0 for s in scores) / max(len(scores), 1),
                "val/reward_mean": sum(s.reward for s in scores) / max(len(scores), 1),
                "val/turns_mean": turns["rollout/turns_mean"]}
    return evaluate(run.generators, run.scorer, run.val_prompts, max_new_tokens=g.max_new_tokens, stop=g.stop,
                    temperature=g.temperature, top_p=g.top_p, pass_k=run.cfg.validation.pass_k,
                    seed=10_000_019 + step)


def train(run: Components) -> RunState:
    """Train from `run.state.step` to train.steps. Raises StopRequested after the first SIGTERM /
    SIGINT (the step finished and checkpointed), KeyboardInterrupt on a second, RunStopped when the
    run cannot go on."""
    with stop_on_signal() as stop:
        if run.state.step == 0 and run.cfg.validation.at_start:
            run.logger.write(0, validate(run, 0))
        if run.state.step >= run.cfg.train.steps:
            log.warning("train.steps=%d already reached (the run is at step %d); nothing to train. Raise "
                        "train.steps to continue.", run.cfg.train.steps, run.state.step)
        try:
            _loop(run, Timer(), stop)
        except Exception as e:
            # the second signal's KeyboardInterrupt, wrapped by whatever it landed in (DCP's
            # checkpoint writer turns it into a CheckpointException, and then into a write error)
            if "second" in stop:
                raise KeyboardInterrupt(f"second {stop['second']}") from e
            raise
    return run.state


def _loop(run: Components, timer: Timer, stop: dict[str, str]) -> None:
    cfg, st, alg = run.cfg, run.state, run.cfg.algorithm
    bucket_bytes = cfg.generation.weight_sync_bucket_bytes
    colocated = cfg.cluster.placement == "colocated"  # generators share the learner's GPUs
    if stop:  # a signal while validating at the start: nothing new to save
        raise StopRequested(stop["signal"], st.step, None)
    for step in range(st.step + 1, cfg.train.steps + 1):
        with timer("step"):
            faults = {"faults/generator_restarts": 0.0}
            samples, scores, rewards, groups, verifier = rollout(run, step, timer, faults)      # N = B*G
            check_verifier_errors(cfg, step, scores)
            if colocated:  # the learner's phases: vLLM drops its KV cache and offloads its weights
                run.generators.sleep()
                run.learner.reload_optimizer()  # (both no-ops on CPU)
            batch = collate(samples, torch.zeros(len(samples)), pad_id=run.pad_id)
            if alg.overlong_filter:  # DAPO: truncated responses leave the update
                batch = without_truncated(batch, samples)
            if passes := extra_forwards(cfg):  # else train's own forward gives logp_old
                with timer("logprobs"):
                    batch = batch.with_(**run.learner.logprobs(batch, **passes))            # logp_old, logp_ref
            values = None
            if alg.uses_critic:
                with timer("values"):
                    values = run.learner.values(batch)                                      # [N, L-1]
            adv, returns = advantages(cfg, batch, rewards, groups, values)                  # [N, L-1]
            batch = batch.with_(adv=adv)
            train_metrics = {}
            if alg.uses_critic:
                with timer("critic"):
                    train_metrics |= run.learner.train_critic(batch, returns, values)
            if step > (alg.critic_warmup_steps if alg.uses_critic else 0):
                with timer("train"):
                    # not colocated: nothing runs between train and the push, so queue it behind train
                    train_metrics |= run.learner.train(batch, push_after=not colocated)
            if colocated:  # the generators' phase: optimizer state to host, vLLM's weights back
                run.learner.offload_optimizer()
                run.generators.wake(["weights"])   # then the new weights arrive, then the KV cache
            with timer("weight_sync"):
                sync_metrics = surviving(run, faults, lambda: run.learner.push_weights(run.generators, bucket_bytes))
            if colocated:
                run.generators.wake(["kv_cache"])

        mismatch = {} if batch.logp_old is None else logprob_mismatch(batch.logp_gen, batch.logp_old, batch.loss_mask)
        metrics = (rollout_metrics(samples, scores) | mismatch
                   | {k: float(v) for k, v in group_stats(rewards, groups).items()}
                   | ({"train/shaped_reward_mean": float(rewards.mean())} if alg.overlong_buffer_len else {})
                   | train_metrics | sync_metrics | verifier | faults | timer.flush())
        metrics |= throughput(metrics, samples, batch, gen_devices=cfg.generation.num_workers
                              * cfg.generation.tensor_parallel_size, train_devices=cfg.learner.num_workers)
        st.step, st.consumed_samples = step, st.consumed_samples + len(samples)
        if step == cfg.train.steps or (cfg.validation.every_steps and step % cfg.validation.every_steps == 0):
            metrics |= validate(run, step)
        run.logger.write(step, metrics)
        if cfg.logging.sample_table_every and step % cfg.logging.sample_table_every == 0:
            run.logger.write_samples(step, sample_rows(samples, scores))
        if not faults["faults/generator_restarts"]:
            st.extra["generator_deaths_in_a_row"] = {}
        skipped = int(st.extra.get("skipped_in_a_row", 0))
        skipped = skipped + 1 if metrics.get("faults/skipped_steps", 0) else 0
        st.extra["skipped_in_a_row"] = skipped
        saved = run.checkpointer.maybe_save(step, metrics, final=step == cfg.train.steps)
        if skipped >= cfg.train.max_skipped_steps:
            raise RunStopped(
                f"{skipped} steps in a row had a NaN or inf loss or gradient norm (up to step {step}; none "
                f"of them changed the weights). Lower learner.lr, check the rewards (train/reward_*), or "
                f"raise train.max_skipped_steps; the newest checkpoint holds the last good weights")
        if stop:
            raise StopRequested(stop["signal"], step, saved or run.checkpointer.save_or_report(step, metrics))


def throughput(metrics: dict[str, float], samples: list, batch, *, gen_devices: int,
               train_devices: int) -> dict[str, float]:
    gen = sum(len(s.response_ids) for s in samples) / max(metrics.get("timing/generate", 0.0), 1e-9)
    # no policy update in a critic warm-up step: nothing trained
    trained = int(batch.attention_mask.sum()) / metrics["timing/train"] if "timing/train" in metrics else 0.0
    return {
        "throughput/gen_tokens_per_s": gen,
        "throughput/train_tokens_per_s": trained,
        "throughput/gen_tokens_per_s_per_device": gen / gen_devices,
        "throughput/train_tokens_per_s_per_device": trained / train_devices,
    }


def sample_rows(samples: list, scores: list, limit: int = 16) -> list[dict[str, Any]]:
    return [{"prompt": s.prompt_text, "response": s.text, "reward": sc.reward, "error": sc.error}
            for s, sc in list(zip(samples, scores))[:limit]]
