"""The gloo transport: a process group of its own between learner rank 0 and every generator,
and the packed broadcast both sides run (pure torch; vLLM is not needed to send or receive).

    learner rank 0 (rank 0)                      generator g (rank 1 + g)
    join_group(addr, port, 0, W)                 join_group(addr, port, 1 + g, W)
    broadcast_buckets(named_params, meta, B)     receive_buckets(meta, B) -> (name, tensor) ...
        every bucket of `plan_buckets(meta, B)`: one flat buffer of one dtype, broadcast from 0

Both sides derive the same buckets from the same metadata (names, dtypes, shapes, in order) and
bucket size, so only the buffers travel. The group is "stateless": a TCPStore at the learner's
address and a ProcessGroupGloo on it, apart from any torch.distributed default group (the
learner ranks' FSDP group, or the one vLLM makes in its own process).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Iterator, Sequence

import torch

from nemo_rlvr.weights.buckets import NamedTensors, materialize, plan_buckets

ParamMeta = tuple[str, str, list[int]]
"""(HF name, dtype name e.g. "float32", full shape): what the receiver allocates."""


def join_group(master_address: str, master_port: int, rank: int, world_size: int, *,
               timeout_s: float = 300.0) -> torch.distributed.ProcessGroup:
    """A gloo group of `world_size` processes; rank 0 hosts the store. Blocks until all join."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_address, master_port, world_size, is_master=rank == 0, timeout=timeout)
    return dist.ProcessGroupGloo(dist.PrefixStore("nemo_rlvr_weights", store), rank, world_size, timeout)


def param_meta(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[ParamMeta]:
    """Names, dtypes and full shapes (a DTensor knows its global shape), without gathering."""
    return [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in named_tensors]


def _meta_tensors(meta: Sequence[ParamMeta]) -> list[tuple[str, torch.Tensor]]:
    return [(n, torch.empty(s, dtype=getattr(torch, d), device="meta")) for n, d, s in meta]


def broadcast_buckets(group: torch.distributed.ProcessGroup | None, named_tensors: NamedTensors,
                      bucket_bytes: int) -> int:
    """Send every parameter (gathered one at a time when sharded) in buckets; returns bytes sent.
    Every learner rank calls this in the same order; only rank 0 passes a group and sends."""
    params = list(named_tensors)
    by_name = dict(params)
    sent = 0
    for plan in plan_buckets(params, bucket_bytes):
        buf = torch.empty(plan.numel, dtype=plan.dtype)                              # [numel]
        for name, off, shape in zip(plan.names, plan.offsets, plan.shapes):
            full = materialize(by_name[name])                                        # a collective if sharded
            buf[off : off + full.numel()].copy_(full.reshape(-1))                    # D2H on a GPU learner
            del full
        if group is not None:
            group.broadcast(buf, 0).wait()
        sent += buf.numel() * buf.element_size()
    return sent


def receive_buckets(group: torch.distributed.ProcessGroup, meta: Sequence[ParamMeta], bucket_bytes: int,
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """Receive what `broadcast_buckets` sends: (name, tensor) per parameter, bucket after bucket
    (views into that bucket's buffer, valid until the next one arrives)."""
    for plan in plan_buckets(_meta_tensors(meta), bucket_bytes):
        buf = torch.empty(plan.numel, dtype=plan.dtype)                              # [numel]
        group.broadcast(buf, 0).wait()
        for name, off, shape in zip(plan.names, plan.offsets, plan.shapes):
            yield name, buf[off : off + math.prod(shape)].view(shape)
