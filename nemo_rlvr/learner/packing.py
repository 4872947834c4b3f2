"""Turn samples into padded training tensors, and split them into micro-batches.

Layout: each row is prompt + response, right-padded to the batch's longest row.
Per-token arrays have L-1 columns: column t holds the log-prob of token t+1 given
tokens 0..t, so `loss_mask[:, t]` is True iff token t+1 is a response token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from nemo_rlvr.types import Sample


@dataclass(frozen=True)
class TrainBatch:
    input_ids: Tensor        # [N, L] long, prompt + response, right-padded
    attention_mask: Tensor   # [N, L] bool
    loss_mask: Tensor        # [N, L-1] bool, True where the target token is a response token
    logp_gen: Tensor         # [N, L-1] generator log-probs of the targets (0 off mask)
    adv: Tensor              # [N] one advantage per sequence
    logp_old: Tensor | None = None   # [N, L-1] learner log-probs before this step's update
    logp_ref: Tensor | None = None   # [N, L-1] reference-model log-probs (KL on)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: slice | Tensor) -> TrainBatch:
        """Rows `idx` of every tensor field."""
        return TrainBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx])
                             for f in fields(self)})

    def with_(self, **kw: Tensor) -> TrainBatch:
        return replace(self, **kw)


def collate(samples: Sequence[Sample], adv: Tensor, *, pad_id: int) -> TrainBatch:
    """Pad samples into a TrainBatch; `adv` is [N], aligned with `samples`."""
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    n, width = len(samples), max(lengths)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)                  # [N, L]
    attn = torch.zeros((n, width), dtype=torch.bool)                              # [N, L]
    loss_mask = torch.zeros((n, width - 1), dtype=torch.bool)                     # [N, L-1]
    logp_gen = torch.zeros((n, width - 1), dtype=torch.float32)                   # [N, L-1]
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, : p + r] = torch.tensor(list(s.prompt_ids) + list(s.response_ids))
        attn[i, : p + r] = True
        loss_mask[i, p - 1 : p - 1 + r] = True       # targets p .. p+r-1 are the response
        logp_gen[i, p - 1 : p - 1 + r] = torch.tensor(s.logprobs, dtype=torch.float32)
    return TrainBatch(input_ids, attn, loss_mask, logp_gen, adv.to(torch.float32))


def micro_batches(batch: TrainBatch, size: int) -> Iterator[TrainBatch]:
    """Consecutive slices of at most `size` rows, trimmed of all-padding columns."""
    for start in range(0, len(batch), size):
        mb = batch.select(slice(start, start + size))
        width = int(mb.attention_mask.sum(1).max())          # longest row in this slice
        yield TrainBatch(
            mb.input_ids[:, :width], mb.attention_mask[:, :width], mb.loss_mask[:, : width - 1],
            mb.logp_gen[:, : width - 1], mb.adv,
            None if mb.logp_old is None else mb.logp_old[:, : width - 1],
            None if mb.logp_ref is None else mb.logp_ref[:, : width - 1],
        )
