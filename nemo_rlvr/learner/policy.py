"""Policy worker: log-probs, the clipped policy-gradient step, weights for sync, state.

One rank of the learner: a Ray actor in training (learner/group.py), a plain object in tests
and under torchrun (benchmarks/learner.py). With several ranks (or on CUDA) the model is
FSDP2-sharded (learner/distributed.py) and every rank gets the whole batch and trains on its
own rows:

    batch [N rows] --minibatches_per_step--> mini-batch --shard_by_tokens--> this rank's rows
        --micro_batch_bounds(max_tokens_per_microbatch, packed)--> forward/backward passes
    (every rank runs as many passes as the busiest one: FSDP2's collectives run in lockstep,
     so a rank out of rows runs a pass with no loss tokens)

The loss normaliser (`num_tokens`, `num_seqs`) is the whole mini-batch's count, known to every
rank, and gradients are summed across ranks, so neither the micro-batch budget nor the number
of ranks changes the update (tests/integration/test_learner_and_hf.py,
tests/integration/test_sharded_learner.py).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nemo_rlvr.algorithms.losses import get_loss, masked_mean, truncated_is_weights
from nemo_rlvr.config import AlgorithmConfig, LearnerConfig
from nemo_rlvr.learner.distributed import rank_and_world, reduce_metrics, shard_model
from nemo_rlvr.learner.logprobs import register_forward, token_logprobs
from nemo_rlvr.learner.packing import TrainBatch, micro_batch_bounds, shard_by_tokens, trim
from nemo_rlvr.learner.schedule import lr_multiplier
from nemo_rlvr.types import WeightBucket
from nemo_rlvr.weights.buckets import materialize, pack_buckets

log = logging.getLogger(__name__)


class PolicyWorker:
    def __init__(self, model_path: str, *, learner: LearnerConfig, algorithm: AlgorithmConfig,
                 temperature: float, total_steps: int | None = None, dtype: str = "float32",
                 seed: int = 0, device: str | None = None):
        """`total_steps`: optimizer steps of the whole run (train.steps * minibatches_per_step), the
        length of the lr schedule's decay; needed unless learner.lr_schedule is constant. When
        torch.distributed is initialised (learner.distributed.init_distributed), the model is
        sharded over its ranks."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.cfg, self.alg = learner, algorithm
        self.temperature = temperature if temperature > 0 else 1.0
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank, self.world = rank_and_world()
        self.sharded = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.train()
        if learner.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.ref = None         # the frozen starting policy as a model of its own (reference=model)
        self.ref_host = None    # ... or its (local shard of the) weights in host memory (host_copy)
        if algorithm.kl_coef > 0 and learner.reference == "model":
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._place(learner)
        if algorithm.kl_coef > 0 and learner.reference == "host_copy":
            self._reshard()
            self.ref_host = [_local(p).detach().to("cpu", copy=True) for p in self.model.parameters()]
        if algorithm.kl_coef > 0:
            held = self.ref_host or ([_local(p) for p in self.ref.parameters()])
            mib = sum(t.numel() * t.element_size() for t in held) / 2**20
            log.info("KL reference: %s, %.1f MiB per rank (%s)", learner.reference, mib,
                     "host memory" if self.ref_host else self.device.type)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused AdamW (one kernel over all parameters; CPU and CUDA): 19 -> 7 ms a step for 12M fp32
        # parameters on 2 CPU cores. A sharded model (DTensor) keeps the default foreach kernels.
        self.opt = torch.optim.AdamW(params, lr=learner.lr, betas=learner.betas,
                                     weight_decay=learner.weight_decay, fused=not self.sharded or None)
        if total_steps is None and learner.lr_schedule != "constant":
            raise ValueError(f"learner.lr_schedule={learner.lr_schedule!r} decays over the run: pass "
                             f"total_steps (train.steps * learner.minibatches_per_step).")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, functools.partial(
            lr_multiplier, kind=learner.lr_schedule, warmup_steps=learner.warmup_steps,
            total_steps=total_steps or 0, min_lr_ratio=learner.min_lr_ratio))
        self.loss_fn = get_loss(algorithm.loss)  # algorithms/losses.py's registry, by config name
        self.critic = None
        if algorithm.uses_critic:  # PPO: the value model beside this (only) rank
            from nemo_rlvr.learner.critic import Critic

            self.critic = Critic(model_path, lr=algorithm.critic_lr, value_clip=algorithm.value_clip,
                                 grad_clip=learner.grad_clip, max_tokens_per_microbatch=learner.max_tokens_per_microbatch,
                                 device=self.device, dtype=dtype)

    def _place(self, learner: LearnerConfig) -> None:
        """Shard policy and reference over the ranks (FSDP2), or move them to the one device."""
        if not self.sharded:
            if learner.dtype != "float32" or learner.cpu_offload:
                raise ValueError("learner.dtype=bfloat16 and learner.cpu_offload need the sharded learner "
                                 "(FSDP2 on CUDA); this learner is one process on the CPU. Use "
                                 "learner.dtype=float32 and learner.cpu_offload=false.")
            self.model.to(self.device)
            if self.ref is not None:
                self.ref.to(self.device)
            return
        from torch.distributed.device_mesh import init_device_mesh

        if learner.dtype == "bfloat16" and self.device.type != "cuda":
            raise ValueError("learner.dtype=bfloat16 needs CUDA (FSDP2 mixed precision); on the CPU use "
                             "learner.dtype=float32.")
        mesh = init_device_mesh(self.device.type, (self.world,))
        kw = dict(mesh=mesh, param_dtype=torch.bfloat16 if learner.dtype == "bfloat16" else None,
                  cpu_offload=learner.cpu_offload)
        for model in (self.model, self.ref):
            if model is not None:
                shard_model(model, **kw)
                register_forward(model)  # log-probs run the decoder and lm_head outside forward()

    # ------------------------------------------------------------------ micro-batches

    def _passes(self, batch: TrainBatch) -> Iterator[tuple[Tensor | None, TrainBatch]]:
        """(rows of `batch` in this pass or None, micro-batch) for this rank; every rank yields as
        many passes as the busiest rank, padding with a pass over row 0 with no loss tokens."""
        budget, packed = self.cfg.max_tokens_per_microbatch, self.cfg.sequence_packing
        lengths = batch.attention_mask.sum(1)                                        # [N] real lengths
        shards = shard_by_tokens(batch, self.world, keep_groups=self.cfg.prefix_sharing)
        bounds = [micro_batch_bounds(lengths[rows].tolist(), budget, packed=packed) for rows in shards]
        mine = shards[self.rank]
        for start, end in bounds[self.rank]:
            rows = mine[start:end]
            yield rows, trim(batch.select(rows))
        missing = max(map(len, bounds)) - len(bounds[self.rank])
        if missing:
            first = trim(batch.select(slice(0, 1)))
            idle = first.with_(loss_mask=torch.zeros_like(first.loss_mask))
            for _ in range(missing):
                yield None, idle

    def _token_logp(self, model, mb: TrainBatch, *, with_entropy: bool = False,
                    entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
        """Log-probs (and entropy) of the targets, [n, w-1], 0 off the loss mask; memory-bounded
        (learner/logprobs.py: only response tokens get logits, `logprob_chunk_tokens` at a time)."""
        return token_logprobs(model, mb.input_ids.to(self.device), mb.attention_mask.to(self.device),
                              mb.loss_mask.to(self.device), temperature=self.temperature,
                              chunk_tokens=self.cfg.logprob_chunk_tokens, with_entropy=with_entropy,
                              packed=self.cfg.sequence_packing, share_prefix=self.cfg.prefix_sharing,
                              entropy_grad=entropy_grad)

    # ------------------------------------------------------------------ forward

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch, *, policy: bool = True, reference: bool = True) -> dict[str, Tensor]:
        """Log-probs of every target token, [N, L-1], 0 off mask: the policy's (`logp_old`) and the
        frozen reference's (`logp_ref`, when KL is on), each only when asked for. Sharded: only this
        rank's rows are filled (the rest are 0), and the caller sums the ranks' results."""
        out = {}
        if policy:
            out["logp_old"] = self._all_logprobs(self.model, batch)
        if reference and self.ref is not None:
            out["logp_ref"] = self._all_logprobs(self.ref, batch)
        elif reference and self.ref_host is not None:
            with self._reference_weights():
                out["logp_ref"] = self._all_logprobs(self.model, batch)
        return out

    def _all_logprobs(self, model, batch: TrainBatch) -> Tensor:
        out = torch.zeros_like(batch.logp_gen)                                       # [N, L-1]
        for rows, mb in self._passes(batch):
            logp, _ = self._token_logp(model, mb)
            if rows is not None:
                out[rows, : mb.loss_mask.shape[1]] = logp.cpu()
        return out

    @contextlib.contextmanager
    def _reference_weights(self) -> Iterator[None]:
        """The policy module holding the reference weights for a while (reference=host_copy): its
        own go to host memory and come back after, so the device never holds two models."""
        self._reshard()  # FSDP2 may hold the root's gathered parameters: work on the shards
        params = [_local(p) for p in self.model.parameters()]
        stash = [t.to("cpu", copy=True) for t in params]
        for t, ref in zip(params, self.ref_host):
            t.copy_(ref)
        try:
            yield
        finally:
            self._reshard()
            for t, mine in zip(params, stash):
                t.copy_(mine)

    def _reshard(self) -> None:
        """Free FSDP2's gathered parameters, so `parameters()` are this rank's shards again."""
        if not self.sharded:
            return
        from torch.distributed.fsdp import FSDPModule

        for m in self.model.modules():
            if isinstance(m, FSDPModule):
                m.reshard()

    # ------------------------------------------------------------------ train

    def train(self, batch: TrainBatch) -> dict[str, float]:
        """`minibatches_per_step` optimizer steps over `batch` (logp_ref needed with KL).

        Without `batch.logp_old` (one mini-batch, on-policy samples) the pre-update log-probs are
        this step's own forward, detached: before the only optimizer step the policy is the one
        `logprobs` would have scored, so the separate forward is skipped. The generator/learner
        mismatch (`train/logprob_mismatch*`) is then measured here, on that forward."""
        if batch.logp_old is None and self.cfg.minibatches_per_step > 1:
            raise ValueError(f"learner.minibatches_per_step={self.cfg.minibatches_per_step}: every mini-batch "
                             f"after the first needs batch.logp_old; call logprobs(batch) first")
        t0 = time.perf_counter()
        n_mini = self.cfg.minibatches_per_step
        per = len(batch) // n_mini
        totals: dict[str, float] = {}
        for k in range(n_mini):
            for key, v in self._optimizer_step(batch.select(slice(k * per, (k + 1) * per))).items():
                # skipped optimizer steps add up; everything else is a mean over the mini-batches
                totals[key] = totals.get(key, 0.0) + (v if key == "faults/skipped_steps" else v / n_mini)
        totals["train/lr"] = self.sched.get_last_lr()[0]
        # the learner's own time: timing/train minus this is what reaching it cost (Ray, the batch)
        totals["timing/learner_train"] = time.perf_counter() - t0
        return totals

    def _optimizer_step(self, mini: TrainBatch) -> dict[str, float]:
        num_tokens = mini.loss_mask.sum().clamp(min=1).to(self.device)   # [] global: all ranks, all passes
        num_seqs = torch.tensor(float(len(mini)), device=self.device)
        self.opt.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for rows, mb in self._passes(mini):
            mask = mb.loss_mask.to(self.device)
            bonus = self.alg.entropy_coef > 0
            logp, ent = self._token_logp(self.model, mb, with_entropy=True, entropy_grad=bonus)
            if mb.logp_old is None:  # on-policy: this forward is the pre-update policy
                logp_old = logp.detach()
                gap = (mb.logp_gen.to(self.device) - logp_old).abs()[mask]                 # [tokens]
                acc["train/logprob_mismatch"] = acc.get("train/logprob_mismatch", 0.0) + float(gap.sum())
                acc["train/logprob_mismatch_max"] = max(acc.get("train/logprob_mismatch_max", 0.0),
                                                        float(gap.max()) if gap.numel() else 0.0)
            else:
                logp_old = mb.logp_old.to(self.device)
            tis, tis_m = None, {}
            if self.alg.tis_cap is not None:
                tis, tis_m = truncated_is_weights(logp_old, mb.logp_gen.to(self.device), mask, cap=self.alg.tis_cap)
            loss, m = self.loss_fn(
                logp, logp_old, mb.adv.to(self.device), mask,
                clip_low=self.alg.clip_low, clip_high=self.alg.clip_high,
                num_tokens=num_tokens, num_seqs=num_seqs, aggregation=self.alg.aggregation,
                logp_ref=None if mb.logp_ref is None else mb.logp_ref.to(self.device),
                kl_coef=0.0 if self.alg.kl_in_reward else self.alg.kl_coef,  # in the reward: not twice
                kl_estimator=self.alg.kl_estimator, tis_weight=tis, clip_c=self.alg.clip_c,
                entropy=ent if bonus else None, entropy_coef=self.alg.entropy_coef)
            if rows is None:  # an idle pass: joins the collectives, adds no gradient
                loss = loss * 0.0
            loss.backward()
            share = float(mask.sum()) / float(num_tokens)  # this pass's share of the tokens (0 if idle)
            m = {**m, **tis_m, "train/entropy": masked_mean(ent.detach(), mask)}
            for key, v in m.items():
                # loss/total is already normalised globally: it sums; masked means are token-weighted
                weight = (0.0 if rows is None else 1.0) if key == "loss/total" else share
                acc[key] = acc.get(key, 0.0) + float(v) * weight
        acc = reduce_metrics(acc, self.device)  # partial sums of every rank -> the mini-batch's
        if "train/logprob_mismatch" in acc:  # a sum of |diff|: the mean over the mini-batch
            acc["train/logprob_mismatch"] /= float(num_tokens)
        grad_norm = float(materialize(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)))
        acc["train/grad_norm"] = grad_norm
        # every rank sees the same reduced loss and global norm, so all skip together
        if math.isfinite(grad_norm) and math.isfinite(acc.get("loss/total", 0.0)):
            self.opt.step()
            self.sched.step()
            acc["faults/skipped_steps"] = 0.0
        else:  # a NaN/inf must reach neither the weights nor the generators nor a checkpoint
            self.opt.zero_grad(set_to_none=True)
            acc["faults/skipped_steps"] = 1.0
            log.warning("non-finite loss %s or gradient norm %s: optimizer step skipped, weights unchanged",
                        acc.get("loss/total"), grad_norm)
        return acc

    # ------------------------------------------------------------------ critic (PPO)

    def values(self, batch: TrainBatch) -> Tensor:
        """The critic's V(s_t) for every target column, [N, L-1] (algorithm.advantage=gae)."""
        return self.critic.values(batch)

    def train_critic(self, batch: TrainBatch, returns: Tensor, old_values: Tensor) -> dict[str, float]:
        return self.critic.train(batch, returns, old_values)

    # ------------------------------------------------------------------ memory (colocated GPUs)

    def offload_optimizer(self) -> int:
        """Move the optimizer state (AdamW's two moments: twice the parameters' bytes) to host
        memory, so a generator sharing this GPU has that memory while it generates; returns the
        bytes moved (0 when the model is on the CPU: nothing to free). `reload_optimizer` brings it
        back before the next update."""
        if self.device.type == "cpu":
            return 0
        moved = move_optimizer_state(self.opt, torch.device("cpu"))
        torch.cuda.empty_cache()
        return moved

    def reload_optimizer(self) -> int:
        return 0 if self.device.type == "cpu" else move_optimizer_state(self.opt, self.device)

    # ------------------------------------------------------------------ weights and state

    def export_weights(self, bucket_bytes: int) -> list[WeightBucket]:
        """The policy's parameters (HF names, tied weights once) packed into flat buckets. Sharded:
        every rank must call it (each parameter is gathered in turn) and gets the same buckets."""
        return pack_buckets(((n, p.detach()) for n, p in self.model.named_parameters()), bucket_bytes)

    def save(self, path: str) -> None:
        """Full learner state into folder `path`: model + optimizer through torch.distributed.checkpoint
        (`dcp/`, FQN-keyed, one shard file per rank: loadable by another world size with resharding),
        scheduler + RNG per rank (`rank_<r>.pt`, loadable with weights_only=True)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.opt)
        with warnings.catch_warnings():  # single process: DCP says it saves without a process group
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(path, "dcp"))
        torch.save({"sched": self.sched.state_dict(), "rng": rng_state()},
                   os.path.join(path, f"rank_{self.rank}.pt"))
        if self.critic is not None:
            torch.save(self.critic.state_dict(), os.path.join(path, "critic.pt"))

    def load(self, path: str) -> None:
        """Restore what `save(path)` wrote, in place (bit-exact: model, AdamW moments and step, lr
        schedule, RNG), from any number of ranks: DCP reshards model and optimizer state; a rank
        that did not exist when saving takes rank 0's schedule and RNG."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.opt)  # templates (optim state initialised)
        state = {"model": model_sd, "optim": optim_sd}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
        set_state_dict(self.model, self.opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        mine = os.path.join(path, f"rank_{self.rank}.pt")
        extra = torch.load(mine if os.path.exists(mine) else os.path.join(path, "rank_0.pt"), weights_only=True)
        self.sched.load_state_dict(extra["sched"])
        set_rng_state(extra["rng"])
        self._apply_hparams()
        if self.critic is not None:
            critic = os.path.join(path, "critic.pt")
            if not os.path.exists(critic):
                raise FileNotFoundError(f"{path} has no critic.pt: it was saved by a run without a critic "
                                        f"(algorithm.advantage != gae); resume it with the same algorithm")
            self.critic.load_state_dict(torch.load(critic, weights_only=True))

    def _apply_hparams(self) -> None:
        """This run's lr, betas and weight decay over the ones loaded with the optimizer state (a
        resume may change them); the same values when unchanged, so resuming stays bit-exact."""
        scale = self.sched.lr_lambdas[0](self.sched.last_epoch)
        self.sched.base_lrs = [self.cfg.lr for _ in self.opt.param_groups]
        for group in self.opt.param_groups:
            group.update(lr=self.cfg.lr * scale, initial_lr=self.cfg.lr, betas=self.cfg.betas,
                         weight_decay=self.cfg.weight_decay)

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        """Write a Hugging Face folder (`save_pretrained`, safetensors) with the tokenizer. Sharded:
        every rank calls it; the full state is gathered to rank 0's host memory, which writes the
        same files an unsharded model would."""
        if self.sharded:
            self._save_hf_gathered(path)
        else:
            self.model.save_pretrained(path, safe_serialization=True)
        if tokenizer_path and self.rank == 0:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(path)

    def _save_hf_gathered(self, path: str) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from transformers import AutoModelForCausalLM

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return
        with torch.device("meta"):  # a plain (unsharded) model of the same class, filled by `assign`
            plain = AutoModelForCausalLM.from_config(self.model.config, dtype=next(iter(state.values())).dtype)
        plain.load_state_dict(state, assign=True)
        plain.tie_weights()
        plain.save_pretrained(path, safe_serialization=True)

    def param_checksum(self) -> float:
        """Sum of all parameters in float64: a cheap fingerprint for tests (every rank calls it)."""
        return float(sum(materialize(p).double().sum() for p in self.model.parameters()))


def move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> int:
    """Every tensor of the optimizer's per-parameter state (sharded ones as DTensors) to `device`,
    in place in `opt.state`; returns the bytes that changed device. AdamW's `step` counters live on
    the CPU already and stay there."""
    moved = 0

    def there(t: Tensor) -> bool:  # "cuda" means the current device, as Tensor.to reads it
        return t.device.type == device.type and device.index in (None, t.device.index)

    for state in opt.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and key != "step" and not there(value):
                state[key] = value.to(device)
                moved += value.numel() * value.element_size()
    return moved


def _local(p: Tensor) -> Tensor:
    """The tensor this rank holds of a parameter: its shard of a DTensor (same storage), else itself."""
    return p.to_local() if hasattr(p, "to_local") else p


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch, numpy, python, cuda) as tensors, lists and ints only,
    so `torch.load(..., weights_only=True)` reads them back (no pickled objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    keys = torch.from_numpy(keys.astype(np.int64))
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, keys, int(pos), int(has_gauss), float(cached)],
             "python": list(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
