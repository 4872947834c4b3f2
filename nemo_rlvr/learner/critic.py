"""PPO's critic: a value head on a causal LM's decoder, its own AdamW, trained on GAE returns.

    values(batch)                       -> [N, L-1]  V(s_t) at every target column t (0 off mask)
    train(batch, returns, old_values)   -> loss/value, loss/value_clip_frac, critic/*   (one step)
    state_dict() / load_state_dict()    -> model + optimizer, saved with the learner's checkpoint

Column t of a batch's per-token arrays is the target token t+1 (learner/packing.py), so the
state s_t is tokens 0..t and V(s_t) is the head on the decoder's hidden state at position t:
the value of the prefix before the action (token t+1) is taken. GAE (algorithms/advantages.py)
reads these columns under the loss mask. The critic starts from the policy's weights (the usual
choice when no reward model exists) with a zero-initialised head, so every value starts at 0.

It runs beside learner rank 0 in the same process (one device), unsharded: algorithm.advantage=gae
with learner.num_workers > 1 is refused at config time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nemo_rlvr.algorithms.losses import masked_mean, value_loss
from nemo_rlvr.learner.packing import TrainBatch, micro_batch_bounds, trim


class ValueModel(nn.Module):
    """A decoder (the causal LM without its lm_head) and a linear head to one scalar per position."""

    def __init__(self, model_path: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.decoder = lm.get_decoder()
        self.head = nn.Linear(lm.config.hidden_size, 1, dtype=dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[n, w] tokens -> [n, w-1] values of the prefixes ending at columns 0..w-2."""
        h = self.decoder(input_ids=input_ids, attention_mask=attention_mask.long(),
                         use_cache=False).last_hidden_state                              # [n, w, H]
        return self.head(h[:, :-1]).squeeze(-1).float()                                 # [n, w-1]


class Critic:
    def __init__(self, model_path: str, *, lr: float, value_clip: float | None, grad_clip: float,
                 max_tokens_per_microbatch: int, device: torch.device, dtype: str = "float32"):
        self.device, self.value_clip, self.grad_clip = device, value_clip, grad_clip
        self.budget = max_tokens_per_microbatch
        self.model = ValueModel(model_path, getattr(torch, dtype)).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def _micro_batches(self, batch: TrainBatch):
        lengths = batch.attention_mask.sum(1).tolist()
        for start, end in micro_batch_bounds(lengths, self.budget, packed=False):
            yield slice(start, end), trim(batch.select(slice(start, end)))

    @torch.no_grad()
    def values(self, batch: TrainBatch) -> Tensor:
        """V(s_t) for every target column, [N, L-1], 0 off the loss mask (CPU)."""
        self.model.eval()
        out = torch.zeros_like(batch.logp_gen)                                            # [N, L-1]
        for rows, mb in self._micro_batches(batch):
            v = self.model(mb.input_ids.to(self.device), mb.attention_mask.to(self.device)).cpu()  # [n, w-1]
            out[rows, : v.shape[1]] = torch.where(mb.loss_mask, v, torch.zeros_like(v))
        return out

    def train(self, batch: TrainBatch, returns: Tensor, old_values: Tensor) -> dict[str, float]:
        """One optimizer step of the clipped value loss over the whole batch (gradients accumulate
        over micro-batches with the batch's token count as normaliser)."""
        self.model.train()
        num_tokens = batch.loss_mask.sum().clamp(min=1).to(self.device)
        self.opt.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for rows, mb in self._micro_batches(batch):
            w = mb.loss_mask.shape[1]
            mask = mb.loss_mask.to(self.device)                                           # [n, w-1]
            v = self.model(mb.input_ids.to(self.device), mb.attention_mask.to(self.device))  # [n, w-1]
            loss, m = value_loss(v, old_values[rows, :w].to(self.device), returns[rows, :w].to(self.device), mask,
                                 clip_range=self.value_clip, num_tokens=num_tokens)
            loss.backward()
            share = float(mask.sum()) / float(num_tokens)
            acc["loss/value"] = acc.get("loss/value", 0.0) + float(m["loss/value"])   # globally normalised: sums
            acc["loss/value_clip_frac"] = acc.get("loss/value_clip_frac", 0.0) + float(m["loss/value_clip_frac"]) * share
            acc["critic/values_mean"] = acc.get("critic/values_mean", 0.0) + float(masked_mean(v.detach(), mask)) * share
        acc["critic/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        self.opt.step()
        return acc

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
