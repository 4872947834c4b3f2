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
from typing import Any

import torch

from nemo_rlvr.weights.buckets import NamedTensors, fill_bucket, plan_buckets

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


def update_info_dict(meta: Sequence[ParamMeta]) -> dict[str, Any]:
    """One update's info, parsed as vLLM's `NCCLWeightTransferUpdateInfo`: names, dtype names, shapes
    (gloo and shm send the same)."""
    return {"names": [m[0] for m in meta], "dtype_names": [m[1] for m in meta],
            "shapes": [list(m[2]) for m in meta]}


def update_info_meta(update_info: dict[str, Any]) -> list[ParamMeta]:
    """The parameter metadata back from `update_info_dict`'s dict (the receiving side)."""
    return list(zip(update_info["names"], update_info["dtype_names"], update_info["shapes"]))


def _meta_tensors(meta: Sequence[ParamMeta]) -> list[tuple[str, torch.Tensor]]:
    return [(n, torch.empty(s, dtype=getattr(torch, d), device="meta")) for n, d, s in meta]


class Scratch(dict):
    """One reusable flat buffer per dtype, as large as the largest bucket seen. A fresh buffer per
    bucket per update costs page faults on every byte (allocations over 32 MiB are new memory
    maps), which measured 2.5x slower for 64 MiB buckets than reusing one."""

    def get_buffer(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        buf = self.get(dtype)
        if buf is None or buf.numel() < numel:
            buf = self[dtype] = torch.empty(numel, dtype=dtype)
        return buf[:numel]


def broadcast_buckets(group: torch.distributed.ProcessGroup | None, named_tensors: NamedTensors,
                      bucket_bytes: int, scratch: Scratch | None = None) -> int:
    """Send every parameter (gathered one at a time when sharded) in buckets; returns bytes sent.
    Every learner rank calls this in the same order; only rank 0 passes a group and sends. With
    `scratch` the bucket buffers are reused across updates."""
    params = list(named_tensors)
    by_name = dict(params)
    sent = 0
    scratch = Scratch() if scratch is None else scratch
    for plan in plan_buckets(params, bucket_bytes):
        buf = scratch.get_buffer(plan.dtype, plan.numel)                             # [numel]
        fill_bucket(buf, plan, by_name)
        if group is not None:
            group.broadcast(buf, 0).wait()
        sent += buf.numel() * buf.element_size()
    return sent


def receive_buckets(group: torch.distributed.ProcessGroup, meta: Sequence[ParamMeta], bucket_bytes: int,
                    scratch: Scratch | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Receive what `broadcast_buckets` sends: (name, tensor) per parameter, bucket after bucket
    (views into that bucket's buffer). With `scratch` the buffers are reused, so a view is valid
    only until the next bucket arrives: pass it only when each tensor is copied out at once."""
    for plan in plan_buckets(_meta_tensors(meta), bucket_bytes):
        buf = torch.empty(plan.numel, dtype=plan.dtype) if scratch is None else \
            scratch.get_buffer(plan.dtype, plan.numel)                               # [numel]
        group.broadcast(buf, 0).wait()
        for name, off, shape in zip(plan.names, plan.offsets, plan.shapes):
            yield name, buf[off : off + math.prod(shape)].view(shape)
