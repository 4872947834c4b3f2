"""Supervised warm start of the tiny model on task solutions, and greedy accuracy to measure it.

RL from a random policy on arithmetic never sees a reward, so the tiny recipe first
trains briefly on "prompt + answer + eos" (loss on answer tokens and eos only), stopping
part way: the policy is right some of the time and RL has headroom to show. Optimizer:
AdamW (betas 0.9/0.95, no weight decay), linear warmup over the first 10 % of steps, then
cosine decay to 10 % of `lr`; grad norm clipped at 1. Deterministic for a seed on one
machine (batches come from a seeded generator; the model has no dropout).

What we measured (default TinyModelConfig, 2-digit "+", batch 64, lr 3e-3, 2000 examples,
200 val prompts, 1 thread on a shared 2-core CPU, ~0.1 s a step when the machine is quiet):
- The model learns the answer length and first digit in ~200 steps, then sits at ~10 %
  (the last digit is a guess) until it learns the ones-digit table: a jump from ~10 % to
  ~99 % within ~100 steps, at a seed-dependent step.
- Mixing in 25 % one-digit problems (data/arithmetic.py `warm_start_records`) brings the
  jump forward: after 800 cosine steps (4000 examples) 100 % with the mix, 14 % without.
- Even so a fixed step count lands anywhere: 300 / 400 / 500 steps gave 71 / 12 / 99 %
  (seed 0) and 18 / 6 / 40 % (seed 1). Stopping at 50 % on held-out train problems
  (`stop_accuracy=0.5`, cap 800 steps), seeds 0-5: four stopped, at 430 / 490 / 260 / 690
  steps with 55 / 56.5 / 62.5 / 50.5 % val; seeds 2 and 3 reached the cap at 27 / 26.5 %.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nemo_rlvr.config import WarmStartConfig
from nemo_rlvr.data.arithmetic import arithmetic_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _encode(tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids of prompt + answer + eos, and the mask of tokens the loss sees.

    The prompt and the answer are encoded separately and concatenated, exactly as the
    generator sees them (prompt ids, then sampled response ids).
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs, starts = [], []
    for r in records:
        prompt = tokenizer.encode(r["prompt"], add_special_tokens=False)
        answer = tokenizer.encode(arithmetic_text(r)[len(r["prompt"]):], add_special_tokens=False)
        seqs.append(prompt + answer + [eos])
        starts.append(len(prompt))
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)                # [M, L]
    loss_mask = torch.zeros((len(seqs), L), dtype=torch.bool)              # [M, L]
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        loss_mask[i, st : len(s)] = True  # answer tokens and eos
    return ids, loss_mask


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warmup over 10 % of the steps, then cosine to 0.1 * lr; step is 1-based.

    The decay matters: the last answer digit is typically learned only once the lr has
    come down (at a constant 2e-3..3e-3 runs stall at ~10 % accuracy for 800+ steps).
    """
    warm = max(1, steps // 10)
    if step <= warm:
        return lr * step / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def warm_start(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               records: Sequence[Mapping[str, Any]], cfg: WarmStartConfig, seed: int, *,
               stop_records: Sequence[Mapping[str, Any]] = (), stop_accuracy: float | None = None,
               eval_every: int = 10) -> dict[str, float]:
    """Train `model` in place for up to cfg.steps AdamW steps on arithmetic `records`; return metrics.

    The loss is the mean next-token NLL over answer and eos tokens (`train_supervised`). With
    `stop_accuracy`, greedy accuracy on `stop_records` (held-out *train* problems, never val) is
    checked every `eval_every` steps and training stops once it is reached: the jump in accuracy
    comes at a seed-dependent step, so a fixed step count can land anywhere between 10 % and 99 %,
    while stopping on accuracy lands close to the target.
    """
    if not records:
        raise ValueError("warm_start needs at least one record; raise model.warm_start.num_examples.")
    if stop_accuracy is not None and not stop_records:
        raise ValueError("warm_start: stop_accuracy needs stop_records to measure it on.")
    ids, loss_mask = _encode(tokenizer, records)                           # [M, L]
    return train_supervised(model, ids, loss_mask, cfg, seed,
                            evaluate=lambda: greedy_accuracy(model, tokenizer, stop_records),
                            stop_accuracy=stop_accuracy, eval_every=eval_every)


def train_supervised(model: PreTrainedModel, ids: torch.Tensor, loss_mask: torch.Tensor, cfg: WarmStartConfig,
                     seed: int, *, evaluate: Callable[[], float] | None = None,
                     stop_accuracy: float | None = None, eval_every: int = 10) -> dict[str, float]:
    """Up to cfg.steps AdamW steps of next-token NLL on the tokens `loss_mask` marks; return metrics.

    ids [M, L] are right-padded sequences, loss_mask [M, L] is True on the tokens the model must
    produce (a True at position t trains the prediction of ids[t] from ids[:t]). Batches of
    cfg.batch_size are drawn in seeded passes over the rows (each pass a fresh permutation). With
    `stop_accuracy`, `evaluate()` is called every `eval_every` steps and training stops once it
    returns at least that (logged as warm_start/stop_accuracy).
    """
    if stop_accuracy is not None and evaluate is None:
        raise ValueError("train_supervised: stop_accuracy needs an evaluate function.")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    losses: list[float] = []
    metrics: dict[str, float] = {}
    step = 0
    for step in range(1, cfg.steps + 1):
        while len(order) < cfg.batch_size:
            order = torch.cat([order, torch.randperm(len(ids), generator=gen)])
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        x, m = ids[idx], loss_mask[idx]                                    # [B, L]
        # No attention mask: padding is on the right and attention is causal, so no
        # trained position sees a pad (and the mask costs time on a tiny model).
        logits = model(input_ids=x).logits.float()                         # [B, L, V]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")  # [B, L-1]
        tgt = m[:, 1:]                                                     # [B, L-1] targets trained
        loss = (nll * tgt).sum() / tgt.sum()                               # []
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if stop_accuracy is not None and step % eval_every == 0:
            acc = evaluate()
            metrics["warm_start/stop_accuracy"] = acc
            if acc >= stop_accuracy:
                break
    model.eval()
    tail = losses[-10:] or [float("nan")]
    return metrics | {"warm_start/loss": sum(tail) / len(tail), "warm_start/steps": float(step),
                      "warm_start/seconds": time.perf_counter() - t0}


@torch.no_grad()
def greedy_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    records: Sequence[Mapping[str, Any]], *, max_new_tokens: int = 8,
                    batch_size: int = 256) -> float:
    """Share of records whose greedy response (special tokens skipped, stripped) == str(answer).

    Prompts are left-padded into batches of `batch_size` and decoded with
    `model.generate(do_sample=False)`; generation stops at eos.
    """
    if not records:
        return 0.0
    was_training = model.training
    model.eval()
    prompts = [tokenizer.encode(r["prompt"], add_special_tokens=False) for r in records]
    new = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    correct = sum(t.strip() == str(r["answer"]) for t, r in zip(texts, records))
    model.train(was_training)
    return correct / len(records)


@torch.no_grad()
def greedy_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                    *, max_new_tokens: int, batch_size: int = 256) -> list[list[int]]:
    """The greedy new tokens of each prompt (ids), `max_new_tokens` each: prompts left-padded into
    batches of `batch_size`, `model.generate(do_sample=False)` stopping at eos (a row that stopped
    early is padded with pad ids after its eos)."""
    pad = tokenizer.pad_token_id
    out: list[list[int]] = []
    for lo in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[lo : lo + batch_size]]
        L = max(map(len, chunk))
        ids = torch.tensor([[pad] * (L - len(p)) + p for p in chunk])               # [B, L]
        attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in chunk])     # [B, L]
        gen = model.generate(input_ids=ids, attention_mask=attn, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id)                   # [B, L+T]
        out += gen[:, L:].tolist()
    return out
