"""Turn samples into padded training tensors, split them into micro-batches and ranks, and pack
a micro-batch's sequences into fewer rows for a forward with little padding.

Layout: each row is prompt + response, right-padded to the batch's longest row.
Per-token arrays have L-1 columns: column t holds the log-prob of token t+1 given
tokens 0..t, so `loss_mask[:, t]` is True iff token t+1 is a response token.

Token budgets: a padded forward costs rows x longest row (padding is computed too); a packed
one (`pack_rows`, learner/logprobs.py `packed=True`) about the sum of the real lengths.
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
    adv: Tensor              # [N] one advantage per sequence, or [N, L-1] one per target token
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
    """Pad samples into a TrainBatch; `adv` is [N], aligned with `samples` (token-level advantages
    are computed on the batch's loss mask afterwards and set with `with_(adv=...)`)."""
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
        if s.response_mask is not None:              # multi-turn: the model's tokens only
            loss_mask[i, p - 1 : p - 1 + r] = torch.tensor(s.response_mask, dtype=torch.bool)
        logp_gen[i, p - 1 : p - 1 + r] = torch.tensor(s.logprobs, dtype=torch.float32)
    return TrainBatch(input_ids, attn, loss_mask, logp_gen, adv.to(torch.float32))


def trim(mb: TrainBatch) -> TrainBatch:
    """`mb` without the padding columns past its longest row."""
    width = int(mb.attention_mask.sum(1).max())                                   # longest row here
    return TrainBatch(
        mb.input_ids[:, :width], mb.attention_mask[:, :width], mb.loss_mask[:, : width - 1],
        mb.logp_gen[:, : width - 1], mb.adv if mb.adv.dim() == 1 else mb.adv[:, : width - 1],
        None if mb.logp_old is None else mb.logp_old[:, : width - 1],
        None if mb.logp_ref is None else mb.logp_ref[:, : width - 1],
    )


def micro_batch_bounds(lengths: Sequence[int], max_tokens: int, *, packed: bool) -> list[tuple[int, int]]:
    """[start, end) row ranges of consecutive slices, each as many rows as fit `max_tokens`.

    Cost of a slice: with `packed` the sum of its rows' real lengths (what a packed forward
    computes); without, rows x its longest row (padding is computed too). A row longer than the
    budget alone gets a slice of its own: never dropped, never split. Rows keep their order.

    The number of slices depends on the lengths: under FSDP every rank must run the same number
    of forward/backward passes, so each rank computes every rank's count from the lengths
    (cheap: no tensors) and makes up the difference with zero-weight passes.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens={max_tokens}: a micro-batch token budget must be positive, "
                         f"e.g. 16384 (the longest row always fits: it gets a micro-batch alone).")
    bounds: list[tuple[int, int]] = []
    start, total, longest = 0, 0, 0
    for i, n_tok in enumerate(lengths):
        total, longest = total + n_tok, max(longest, n_tok)
        cost = total if packed else (i - start + 1) * longest
        if cost > max_tokens and i > start:  # row i does not fit: close [start, i), row i opens the next
            bounds.append((start, i))
            start, total, longest = i, n_tok, n_tok
    if start < len(lengths):
        bounds.append((start, len(lengths)))
    return bounds


def micro_batches_by_tokens(batch: TrainBatch, max_tokens: int, *, packed: bool) -> Iterator[TrainBatch]:
    """The slices of `micro_batch_bounds` over `batch`'s real lengths, trimmed of all-padding columns."""
    for start, end in micro_batch_bounds(batch.attention_mask.sum(1).tolist(), max_tokens, packed=packed):
        yield trim(batch.select(slice(start, end)))


def shard_by_tokens(batch: TrainBatch, world: int) -> list[Tensor]:
    """For each of `world` ranks, the rows it trains on: [n_r] long, ascending; every row once.

    Greedy longest-processing-time: rows by real length, longest first (ties: lower row index
    first), each to the rank with the fewest tokens so far (ties: lower rank). Deterministic, so
    every rank computes the same split from the same batch. With N < world (or many long rows)
    some ranks get an empty tensor: such a rank must still run its forward/backward (FSDP
    all-gathers and reduce-scatters need every rank) on a dummy row with its loss multiplied by 0,
    and the loss normaliser stays the global token count, so its zero adds nothing.
    """
    if world <= 0:
        raise ValueError(f"world={world}: the number of ranks must be positive.")
    lengths = batch.attention_mask.sum(1).tolist()                                # [N] real lengths
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    load, rows = [0] * world, [[] for _ in range(world)]
    for i in order:
        r = min(range(world), key=lambda k: (load[k], k))                         # least loaded rank
        load[r] += lengths[i]
        rows[r].append(i)
    return [torch.tensor(sorted(r), dtype=torch.long) for r in rows]


def pack_rows(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pack right-padded rows into fewer rows, each as long as the longest sequence, for a forward
    with `attention_mask=None` (position ids mark where sequences start).

    Sequences go in order into the current row while they fit, else into a new row (next fit).
    A row is never longer than the longest sequence, so attention, which on the CPU is dense over
    a row, costs no more than padded rows do; the padding left over is what does not fit.

    input_ids, attention_mask: [n, w]; loss_mask: [n, w-1] bool. Returns
      ids  [R, C] long: the packed tokens, C = the longest sequence, R <= n rows (0 after the end),
      pos  [R, C] long: position ids, restarting at 0 for each sequence (and for a row's tail),
      at   [M] long: for each True of `loss_mask`, row-major (as `x[loss_mask]` orders them), the
           index into the flattened [R * C] outputs that predicts that target.
    """
    n, w = attention_mask.shape
    cols = torch.arange(w, device=attention_mask.device)                          # [w]
    lengths = attention_mask.sum(1)                                               # [n]
    if not torch.equal(attention_mask, cols < lengths[:, None]):
        raise ValueError("pack_rows needs right-padded rows (attention_mask True on a prefix of each row); "
                         "left-padded or holed masks would pack tokens of different rows out of order.")
    if (loss_mask & ~attention_mask[:, 1:]).any():
        raise ValueError("loss_mask is True on a padding target; in a packed row that position would predict "
                         "the next row's first token. Build loss_mask with collate.")
    cap = max(int(lengths.max()), 1) if n else 1
    starts, row, used = [], 0, 0                                                  # flat start of each sequence
    for length in lengths.tolist():
        if used + length > cap:
            row, used = row + 1, 0
        starts.append(row * cap + used)
        used += length
    rows_used = row + 1
    ids = torch.zeros(rows_used * cap, dtype=input_ids.dtype, device=input_ids.device)       # [R*C]
    pos = torch.zeros(rows_used * cap, dtype=torch.long, device=input_ids.device)           # [R*C]
    start = torch.tensor(starts, dtype=torch.long, device=input_ids.device)                 # [n]
    flat = (start[:, None] + cols)[attention_mask]                                # [S] packed index per token
    ids[flat] = input_ids[attention_mask]
    pos[flat] = cols.expand(n, w)[attention_mask]
    free = torch.ones(rows_used * cap, dtype=torch.bool, device=input_ids.device)
    free[flat] = False
    if free.any():  # a row's unused tail: its own block of positions 0, 1, ... (outputs unused)
        tail = free.view(rows_used, cap)
        pos.view(rows_used, cap)[tail] = (cols[:cap] - (cap - tail.sum(1, keepdim=True)))[tail]
    r, t = loss_mask.nonzero(as_tuple=True)                                       # [M], [M] row-major
    return ids.view(rows_used, cap), pos.view(rows_used, cap), start[r] + t
