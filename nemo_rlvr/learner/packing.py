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

import numpy as np
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


def shard_by_tokens(batch: TrainBatch, world: int, *, keep_groups: bool = False) -> list[Tensor]:
    """For each of `world` ranks, the rows it trains on: [n_r] long, ascending; every row once.

    Greedy longest-processing-time: rows by real length, longest first (ties: lower row index
    first), each to the rank with the fewest tokens so far (ties: lower rank). Deterministic, so
    every rank computes the same split from the same batch. With N < world (or many long rows)
    some ranks get an empty tensor: such a rank must still run its forward/backward (FSDP
    all-gathers and reduce-scatters need every rank) on a dummy row with its loss multiplied by 0,
    and the loss normaliser stays the global token count, so its zero adds nothing.

    `keep_groups` (prefix sharing): the units are runs of consecutive rows with the same prompt
    (the tokens before the first loss target), a group's G samples, so they stay on one rank and
    share their prompt there; by tokens as above, rows alone when there are fewer runs than ranks.
    """
    if world <= 0:
        raise ValueError(f"world={world}: the number of ranks must be positive.")
    lengths = batch.attention_mask.sum(1).tolist()                                # [N] real lengths
    units = _prompt_runs(batch) if keep_groups and world > 1 else [[i] for i in range(len(lengths))]
    if len(units) < world:
        units = [[i] for i in range(len(lengths))]
    size = [sum(lengths[i] for i in u) for u in units]
    order = sorted(range(len(units)), key=lambda u: (-size[u], u))
    load, rows = [0] * world, [[] for _ in range(world)]
    for u in order:
        r = min(range(world), key=lambda k: (load[k], k))                         # least loaded rank
        load[r] += size[u]
        rows[r] += units[u]
    return [torch.tensor(sorted(r), dtype=torch.long) for r in rows]


def _prompt_runs(batch: TrainBatch) -> list[list[int]]:
    """Runs of consecutive rows whose tokens before the first loss target are the same."""
    first = batch.loss_mask.float().argmax(1).tolist()                            # [N] prompt length - 1
    ids = batch.input_ids
    runs: list[list[int]] = []
    for i, p in enumerate(first):
        j = runs[-1][0] if runs else -1
        if j >= 0 and first[j] == p and torch.equal(ids[i, : p + 1], ids[j, : p + 1]):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _right_padded_lengths(who: str, attention_mask: Tensor, loss_mask: Tensor) -> Tensor:
    """Each row's real length, [n], after checking what packing needs of the rows."""
    lengths = attention_mask.sum(1)
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask, cols < lengths[:, None]):
        raise ValueError(f"{who} needs right-padded rows (attention_mask True on a prefix of each row); "
                         "left-padded or holed masks would pack tokens of different rows out of order.")
    if (loss_mask & ~attention_mask[:, 1:]).any():
        raise ValueError("loss_mask is True on a padding target; in a packed row that position would predict "
                         "the next row's first token. Build loss_mask with collate.")
    return lengths


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
    lengths = _right_padded_lengths("pack_rows", attention_mask, loss_mask)       # [n]
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


def pack_prefix_tree(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, *,
                     attn_cost: float, max_row: int = 2048,
                     min_saving: float = 0.1) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Pack right-padded rows as prefix trees: tokens that rows share from their start are
    computed once, e.g. a group's prompt, which its G samples all repeat, or the chat template's
    opening, which every row repeats.

    A causal LM's output at position t depends only on tokens 0..t, so rows that agree on their
    first k tokens have the same hidden states there. Each row is laid out as a path of tree
    nodes: its longest common prefix with the rows already in the tree reuses their nodes, the
    rest are new nodes. A node attends to its ancestors and itself (an explicit [C, C] mask), its
    position id is its depth, and the output that predicts a row's target t is the node of the
    row's token t. The forward then costs the tree's nodes instead of every row's tokens, and the
    backward sums each shared node's gradient over the rows that share it: the same log-probs and
    gradients as separate rows, to fp32 rounding (tests/unit/test_prefix_tree.py).

    Attention over a tree is dense (C x C per row, like any row on the CPU), so a row joins the
    current tree only while that is cheaper by a FLOP estimate: `attn_cost` is the cost of one
    (query, key) pair relative to one token through the rest of the model (4 hidden x layers /
    2 non-embedding parameters), so a row of l tokens with d of them new costs d + (2Td + d^2)
    attn_cost in a tree of T nodes, or l + l^2 attn_cost in a tree of its own. Long, distinct
    responses behind short prompts stay in their own trees; short ones behind a long prompt
    share it. No tree grows past max(`max_row`, the longest row) nodes. Trees are placed back to
    back in rows as long as the largest tree (next fit, as `pack_rows` does). When the trees hold
    more than 1 - `min_saving` of the tokens, this returns None: `pack_rows` saves as much without
    a [C, C] mask.

    input_ids, attention_mask: [n, w] (right-padded); loss_mask: [n, w-1] bool. Returns
      ids  [R, C] long: the nodes' tokens, C = the largest tree,
      pos  [R, C] long: each node's depth (position id),
      mask [R, 1, C, C] bool: True where query node i may attend to key node j (an ancestor or
           itself); a row's unused tail attends to itself only, so no softmax row is empty,
      at   [M] long: for each True of `loss_mask`, row-major, the index into the flattened [R * C]
           outputs that predicts that target.
    """
    n, w = attention_mask.shape
    lengths = _right_padded_lengths("pack_prefix_tree", attention_mask, loss_mask)
    ids_np, lens = input_ids.cpu().numpy(), np.asarray(lengths.cpu().tolist(), dtype=np.int64)
    cap = max(max_row, int(lens.max()) if n else 1, 1)
    sizes: list[int] = []                          # nodes of each tree
    members: list[int] = []                        # rows of the current (last) tree
    node_of = np.zeros((n, w), dtype=np.int64)     # node (within its tree) of each real token
    tree_of = np.zeros(n, dtype=np.int64)
    shared = np.zeros(n, dtype=np.int64)           # tokens each row shares with earlier rows
    for i, length in enumerate(lens.tolist()):
        lcp, via = 0, -1
        if members:
            m = np.asarray(members)
            span = min(length, int(lens[m].max()))
            same = ids_np[m, :span] == ids_np[i, :span]                            # [members, span]
            k = np.minimum(np.where(same.all(1), span, same.argmin(1)), lens[m])   # common prefix each
            best = int(k.argmax())
            lcp, via = int(k[best]), int(m[best])
        size, new = (sizes[-1] if sizes else 0), length - lcp
        if not (lcp and size + new <= cap
                and new + (2 * size * new + new * new) * attn_cost <= length + length * length * attn_cost):
            sizes.append(0)
            members, lcp, size, new = [], 0, 0, length
        node_of[i, :lcp] = node_of[via, :lcp]
        node_of[i, lcp:length] = np.arange(size, size + new)
        members.append(i)
        sizes[-1] = size + new
        tree_of[i], shared[i] = len(sizes) - 1, lcp
    if sum(sizes) > (1 - min_saving) * int(lens.sum()):
        return None
    width = max(sizes, default=1)
    offset, row, used = [], 0, 0                   # flat start of each tree, next fit
    for s in sizes:
        if used + s > width:
            row, used = row + 1, 0
        offset.append(row * width + used)
        used += s
    rows_used = row + 1
    flat_ids = np.zeros(rows_used * width, dtype=np.int64)
    flat_pos = np.arange(rows_used * width, dtype=np.int64) % width   # the unused tail: any position
    mask = np.zeros((rows_used, width, width), dtype=bool)
    mask[:, np.arange(width), np.arange(width)] = True                 # every node sees itself
    flat_node = np.zeros((n, w), dtype=np.int64)
    for i, length in enumerate(lens.tolist()):
        if not length:
            continue
        nodes = offset[tree_of[i]] + node_of[i, :length]                  # [length] flat indices
        flat_node[i, :length] = nodes
        k = int(shared[i])
        flat_ids[nodes[k:]] = ids_np[i, k:length]
        flat_pos[nodes[k:]] = np.arange(k, length)
        local = nodes % width
        # each new node t of this path sees nodes 0..t (shared nodes got theirs from an earlier row)
        mask[nodes[0] // width, local[k:, None], local[None, :]] |= \
            np.arange(length)[None, :] <= np.arange(k, length)[:, None]
    r, t = loss_mask.cpu().nonzero(as_tuple=True)
    dev = input_ids.device
    at = torch.from_numpy(flat_node[r.numpy(), t.numpy()]).to(dev)
    return (torch.from_numpy(flat_ids).view(rows_used, width).to(dev),
            torch.from_numpy(flat_pos).view(rows_used, width).to(dev),
            torch.from_numpy(mask)[:, None].to(dev), at)
