"""Per-token log-probs (and entropy) of a causal LM, without materialising full-vocabulary logits.

    padded (packed=False):  input_ids [n, w], attention_mask [n, w]
        --decoder--> hidden [n, w, H] --[:, :-1][loss_mask]--> h [M, H]
    packed (packed=True):   pack_rows: ids [R, C] (R <= n rows as long as the longest sequence),
        position_ids [R, C] restarting at 0 per sequence, attention_mask=None
        --decoder--> hidden [R, C, H] --flatten, [at]--> h [M, H]
    then, either way, for each chunk of <= chunk_tokens rows of h:
        logits = lm_head(h_c).float() / T   [c, V]
        logp_c = log_softmax(logits)[target],  ent_c = entropy(logits)   [c]
    --masked_scatter(loss_mask)--> logp [n, w-1], ent [n, w-1]   (0 off the mask; same layout packed or not)

The naive way computes fp32 logits for every position of the micro-batch, `[n, w, V]`: for a
150k vocabulary and 64 x 1k tokens that is ~39 GB before the backward. Here only the M response
tokens get logits, a chunk at a time, and each chunk runs under activation checkpointing, so
the backward recomputes its logits instead of keeping them: peak logit memory is one chunk,
`chunk_tokens * V * 4` bytes (32 MiB for 2,048 tokens of a 4k vocabulary), however long the
batch. The result equals the naive computation to fp32 rounding (tests/unit/test_logprobs.py).

Packing drops padding from the decoder's work: sequences of lengths 900, 500, 300, 100 fill two
rows of 900 instead of four. Rows are never longer than the longest sequence, because on the
CPU (sdpa, eager) attention is dense over a whole row: one row of everything would cost
S^2 instead of n x w^2 (measured: 2x slower and 11x the memory on 16 sequences). With `attention_mask=None`, position ids that restart at 0 and no KV
cache (`use_cache=False`; an empty cache also turns the detection off), transformers builds a
block-diagonal causal mask itself for sdpa/eager/flex (`masking_utils.find_packed_sequence_indices`)
and flash-attention runs varlen from the position ids, so no token attends across rows and the
rotary positions are each row's own: packed equals padded to fp32 rounding.

The chunked path needs the model's logits to be exactly `lm_head(last hidden state)` (Qwen2,
Qwen3, Llama, Mistral, SmolLM2, ...). Models that scale or soft-cap logits after the head
(Gemma 2/3 `final_logit_softcapping`, Cohere `logit_scale`, Granite `logits_scaling`) take the
naive path, as does `chunk_tokens=0`: the full model's logits, `[n, w, V]` (or `[R, C, V]`
packed), at the M response positions, in one piece.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nemo_rlvr.algorithms.losses import entropy_from_logits
from nemo_rlvr.learner.packing import pack_prefix_tree, pack_rows

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config attributes that mean the logits are not just lm_head(hidden)."""


def supports_chunking(model: nn.Module) -> bool:
    """True when `model`'s logits are `lm_head(decoder(...).last_hidden_state)`, nothing more."""
    cfg = getattr(model, "config", None)
    if cfg is None or any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return False
    return callable(getattr(model, "get_decoder", None)) and model.get_output_embeddings() is not None


TREE_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take an explicit 4D mask (flash attention only takes position
ids, so prefix trees fall back to `pack_rows` there)."""


def attention_pair_cost(model: nn.Module) -> float:
    """FLOPs of one (query, key) pair of dense attention relative to one token through the rest of
    the decoder: 4 hidden x layers (QK^T and AV) over 2 x its non-embedding parameters."""
    cfg = model.config
    emb = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
           if m is not None}
    body = sum(p.numel() for p in model.parameters() if id(p) not in emb)
    return 4 * cfg.hidden_size * cfg.num_hidden_layers / max(2 * body, 1)


def _tree_layout(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor):
    """`pack_prefix_tree`'s layout with the mask in the form the model's attention takes (bool for
    sdpa, additive for eager), or None where it does not apply or saves too little."""
    cfg = model.config
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in TREE_ATTENTION:
        return None
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if (window or kinds != {"full_attention"}) and int(attention_mask.sum(1).max()) > (window or 0):
        return None  # a custom mask replaces the sliding window's: only exact while rows fit in it
    tree = pack_prefix_tree(input_ids, attention_mask, loss_mask, attn_cost=attention_pair_cost(model))
    if tree is None:
        return None
    ids, pos, mask, at = tree
    if impl == "eager":
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    return ids, pos, mask, at


def _response_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, *,
                     chunked: bool, packed: bool, share_prefix: bool = False) -> Tensor:
    """The outputs whose next token is a response token, row-major as `x[loss_mask]` orders them:
    last hidden states [M, H] (`chunked`, the decoder alone) or logits [M, V] (the whole model)."""
    net = model.get_decoder() if chunked else model
    tree = _tree_layout(model, input_ids, attention_mask, loss_mask) if share_prefix else None
    if tree is not None:
        ids, pos, mask, at = tree                                                        # [R, C] x2, [R,1,C,C], [M]
        out = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        states = out.last_hidden_state if chunked else out.logits                       # [R, C, H | V]
        return states.flatten(0, 1)[at]                                                 # [M, H | V]
    if packed:
        ids, pos, at = pack_rows(input_ids, attention_mask, loss_mask)                  # [R, C], [R, C], [M]
        out = net(input_ids=ids, attention_mask=None, position_ids=pos, use_cache=False)
        states = out.last_hidden_state if chunked else out.logits                       # [R, C, H | V]
        return states.flatten(0, 1)[at]                                                 # [M, H | V]
    out = net(input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False)
    states = out.last_hidden_state if chunked else out.logits                           # [n, w, H | V]
    return states[:, :-1][loss_mask]                                                    # [M, H | V]


FORWARD_METHOD = "nemo_rlvr_response_logprobs"
"""Name under which `register_forward` attaches `response_logprobs` to a sharded model."""


def response_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, *,
                      temperature: float, chunk_tokens: int, with_entropy: bool, packed: bool,
                      share_prefix: bool = False, entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """Everything that touches the model's parameters: log-probs [M] of the M response targets
    (row-major, as `x[loss_mask]` orders them) and their entropies [M] (empty without
    `with_entropy`; detached unless `entropy_grad`, for an entropy bonus in the loss). A sharded
    model runs this as an FSDP2 forward method (`register_forward`)."""
    chunked = chunk_tokens > 0 and supports_chunking(model)
    h = _response_states(model, input_ids, attention_mask, loss_mask, chunked=chunked, packed=packed,
                         share_prefix=share_prefix)
    tgt = input_ids[:, 1:][loss_mask]                                                   # [M]
    # naive: `h` already holds the logits, taken in one piece
    head, step = (model.get_output_embeddings(), chunk_tokens) if chunked else (nn.Identity(), max(len(h), 1))

    def chunk(h_c: Tensor, t_c: Tensor) -> tuple[Tensor, Tensor]:
        logits = head(h_c).float() / temperature                                        # [c, V]
        logp_c = logits.log_softmax(-1).gather(-1, t_c[:, None]).squeeze(-1)            # [c]
        ent_c = (entropy_from_logits(logits if entropy_grad else logits.detach()) if with_entropy
                 else logp_c.new_zeros(0))
        return logp_c, ent_c

    parts, ents = [], []
    # at least one chunk, empty when M = 0, so the output stays on the graph and a backward
    # through a micro-batch without response tokens works (zero gradients, e.g. a dummy pass)
    for start in range(0, max(h.shape[0], 1), step):
        h_c, t_c = h[start:start + step], tgt[start:start + step]
        if chunked and h_c.requires_grad:  # backward recomputes this chunk's logits instead of keeping them
            logp_c, ent_c = checkpoint(chunk, h_c, t_c, use_reentrant=False)
        else:
            logp_c, ent_c = chunk(h_c, t_c)
        parts.append(logp_c)
        ents.append(ent_c)
    return torch.cat(parts), torch.cat(ents)


def register_forward(model: nn.Module) -> None:
    """Make `response_logprobs` a forward method of an FSDP2-sharded `model`, so its all-gathers
    and gradient hooks run around it (the decoder and lm_head are used outside `forward`)."""
    import types

    from torch.distributed.fsdp import register_fsdp_forward_method

    setattr(model, FORWARD_METHOD, types.MethodType(response_logprobs, model))
    register_fsdp_forward_method(model, FORWARD_METHOD)


def token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, *,
                   temperature: float, chunk_tokens: int, with_entropy: bool = False, packed: bool = False,
                   share_prefix: bool = False, entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """log_softmax(logits / T) of each next token, [n, w-1] (0 where `loss_mask` is False), and
    with `with_entropy` the entropy of that distribution, [n, w-1] (detached, a metric, unless
    `entropy_grad`: then the loss's entropy bonus trains through it).

    input_ids, attention_mask: [n, w], rows right-padded; loss_mask: [n, w-1] bool, True where
    token t+1 is a response token. `chunk_tokens` > 0 bounds the logits held at once; `packed`
    runs the rows as one padding-free row (see the module docstring). Same output either way.
    """
    forward = getattr(model, FORWARD_METHOD, None)
    kw = dict(temperature=temperature, chunk_tokens=chunk_tokens, with_entropy=with_entropy, packed=packed,
              share_prefix=share_prefix, entropy_grad=entropy_grad)
    if forward is not None:
        lp, ent = forward(input_ids, attention_mask, loss_mask, **kw)
    else:
        lp, ent = response_logprobs(model, input_ids, attention_mask, loss_mask, **kw)
    zeros = torch.zeros(loss_mask.shape, dtype=torch.float32, device=lp.device)         # [n, w-1]
    logp = zeros.masked_scatter(loss_mask, lp)                                          # [n, w-1]
    return logp, zeros.masked_scatter(loss_mask, ent) if with_entropy else None
