"""Policy worker: log-probs, the clipped policy-gradient step, weights for sync, state.

One process (a Ray actor in training, a plain object in tests and benchmarks).
A step splits the batch into `minibatches_per_step` optimizer steps and each of
those into micro-batches whose gradients accumulate; the loss normaliser
(`num_tokens`, `num_seqs`) is the mini-batch's global count, so the micro-batch
size never changes the update (tests/integration/test_learner_and_hf.py).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nemo_rlvr.algorithms.losses import clipped_pg_loss, entropy_from_logits, masked_mean, truncated_is_weights
from nemo_rlvr.config import AlgorithmConfig, LearnerConfig
from nemo_rlvr.learner.packing import TrainBatch, micro_batches
from nemo_rlvr.types import WeightBucket
from nemo_rlvr.weights.buckets import pack_buckets

log = logging.getLogger(__name__)


class PolicyWorker:
    def __init__(self, model_path: str, *, learner: LearnerConfig, algorithm: AlgorithmConfig,
                 temperature: float, dtype: str = "float32", seed: int = 0, device: str | None = None):
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.cfg, self.alg = learner, algorithm
        self.temperature = temperature if temperature > 0 else 1.0
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.train()
        self.ref = None
        if algorithm.kl_coef > 0:  # frozen copy of the starting policy
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=learner.lr, betas=learner.betas,
                                     weight_decay=learner.weight_decay)
        warm = learner.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / (warm + 1)) if warm else 1.0)

    # ------------------------------------------------------------------ forward

    def _token_logp(self, model, mb: TrainBatch, *, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        ids, attn = mb.input_ids.to(self.device), mb.attention_mask.to(self.device)
        logits = model(input_ids=ids, attention_mask=attn.long()).logits[:, :-1].float()  # [n, w-1, V]
        logits = logits / self.temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [n, w-1]
        ent = entropy_from_logits(logits.detach()) if with_entropy else None               # [n, w-1]
        return logp, ent

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch) -> dict[str, Tensor]:
        """Learner (and reference) log-probs of every target token, [N, L-1], 0 off mask."""
        out = {"logp_old": torch.zeros_like(batch.logp_gen)}
        if self.ref is not None:
            out["logp_ref"] = torch.zeros_like(batch.logp_gen)
        row = 0
        for mb in micro_batches(batch, self.cfg.micro_batch_size):
            n, w = mb.loss_mask.shape
            for key, model in (("logp_old", self.model), ("logp_ref", self.ref)):
                if key in out:
                    logp, _ = self._token_logp(model, mb)
                    out[key][row : row + n, :w] = torch.where(mb.loss_mask, logp.cpu(), 0.0)
            row += n
        return out

    # ------------------------------------------------------------------ train

    def train(self, batch: TrainBatch) -> dict[str, float]:
        """`minibatches_per_step` optimizer steps over `batch` (needs logp_old, and logp_ref with KL)."""
        if batch.logp_old is None:
            raise ValueError("train(batch) needs batch.logp_old; call logprobs(batch) first")
        n_mini = self.cfg.minibatches_per_step
        per = len(batch) // n_mini
        totals: dict[str, float] = {}
        for k in range(n_mini):
            for key, v in self._optimizer_step(batch.select(slice(k * per, (k + 1) * per))).items():
                totals[key] = totals.get(key, 0.0) + v / n_mini
        totals["train/lr"] = self.sched.get_last_lr()[0]
        return totals

    def _optimizer_step(self, mini: TrainBatch) -> dict[str, float]:
        num_tokens = mini.loss_mask.sum().clamp(min=1).to(self.device)   # [] global over micro-batches
        num_seqs = torch.tensor(float(len(mini)), device=self.device)
        self.opt.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for mb in micro_batches(mini, self.cfg.micro_batch_size):
            mask = mb.loss_mask.to(self.device)
            logp, ent = self._token_logp(self.model, mb, with_entropy=True)
            logp_old = mb.logp_old.to(self.device)
            tis, tis_m = None, {}
            if self.alg.tis_cap is not None:
                tis, tis_m = truncated_is_weights(logp_old, mb.logp_gen.to(self.device), mask, cap=self.alg.tis_cap)
            loss, m = clipped_pg_loss(
                logp, logp_old, mb.adv.to(self.device), mask,
                clip_low=self.alg.clip_low, clip_high=self.alg.clip_high,
                num_tokens=num_tokens, num_seqs=num_seqs, aggregation=self.alg.aggregation,
                logp_ref=None if mb.logp_ref is None else mb.logp_ref.to(self.device),
                kl_coef=self.alg.kl_coef, kl_estimator=self.alg.kl_estimator, tis_weight=tis)
            loss.backward()
            share = float(mask.sum()) / float(num_tokens)  # this micro-batch's share of tokens
            m = {**m, **tis_m, "train/entropy": masked_mean(ent, mask)}
            for key, v in m.items():
                # loss/total is already normalised globally: it sums; masked means are token-weighted
                acc[key] = acc.get(key, 0.0) + float(v) * (1.0 if key == "loss/total" else share)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        acc["train/grad_norm"] = float(grad_norm)
        return acc

    # ------------------------------------------------------------------ weights and state

    def export_weights(self, bucket_bytes: int) -> list[WeightBucket]:
        """The policy's parameters (HF names, tied weights once) packed into flat buckets."""
        return pack_buckets(((n, p.detach()) for n, p in self.model.named_parameters()), bucket_bytes)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optim": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        set_rng_state(state["rng"])

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
                   os.path.join(path, f"rank_{_rank()}.pt"))

    def load(self, path: str) -> None:
        """Restore what `save(path)` wrote, in place (bit-exact: model, AdamW moments and step, lr
        schedule, RNG)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.opt)  # templates (optim state initialised)
        state = {"model": model_sd, "optim": optim_sd}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
        set_state_dict(self.model, self.opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        extra = torch.load(os.path.join(path, f"rank_{_rank()}.pt"), weights_only=True)
        self.sched.load_state_dict(extra["sched"])
        set_rng_state(extra["rng"])
        self._apply_hparams()

    def _apply_hparams(self) -> None:
        """This run's lr, betas and weight decay over the ones loaded with the optimizer state (a
        resume may change them); the same values when unchanged, so resuming stays bit-exact."""
        scale = self.sched.lr_lambdas[0](self.sched.last_epoch)
        self.sched.base_lrs = [self.cfg.lr for _ in self.opt.param_groups]
        for group in self.opt.param_groups:
            group.update(lr=self.cfg.lr * scale, initial_lr=self.cfg.lr, betas=self.cfg.betas,
                         weight_decay=self.cfg.weight_decay)

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        """Write a Hugging Face folder (`save_pretrained`, safetensors) with the tokenizer."""
        self.model.save_pretrained(path, safe_serialization=True)
        if tokenizer_path:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(path)

    def param_checksum(self) -> float:
        """Sum of all parameters in float64: a cheap fingerprint for tests."""
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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
