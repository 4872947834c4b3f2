"""GPU weight transports: CUDA IPC exports (colocated) and an NCCL broadcast sender (split).

    GPU colocated  pack_ipc_buckets -> CUDA buffers, each --IPC handle-->  VLLMGenerator.load_weights
                   exported with reduce_tensor; keep them                 -> vLLM "ipc" weight transfer
                   alive until load_weights returns
    GPU split      NcclWeightSender.send (rank 0 broadcasts --NCCL-->    VLLMGenerator.receive_weights
                   packed chunks; every rank joins the gather)          -> vLLM "nccl" weight transfer

Written against vLLM 0.32's weight-transfer API (`vllm/distributed/weight_transfer/`).
Training does not call these yet: every run syncs CPU buckets (weights/buckets.py) until
the weight-transfer issue (#12) wires them in; only tests/gpu (skipped without CUDA) runs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nemo_rlvr.types import WeightBucket
from nemo_rlvr.weights.buckets import NamedTensors, dtype_name, fill_bucket, materialize, plan_buckets

# ---------------------------------------------------------------- GPU: colocated (CUDA IPC)


@dataclass(frozen=True)
class IpcBuffer:
    """A CUDA buffer exported to other processes: GPU UUID -> `reduce_tensor` rebuild args.

    The handle does not keep the memory alive: the exporting process holds the tensor
    (see `pack_ipc_buckets`) until the consumer's load_weights has returned.
    """

    handles: dict[str, tuple]


def _gpu_uuid(device_index: int) -> str:
    return str(torch.cuda.get_device_properties(device_index).uuid)


def pack_ipc_buckets(named_tensors: NamedTensors, bucket_bytes: int,
                     ) -> tuple[list[WeightBucket], list[torch.Tensor]]:
    """GPU buckets exported by CUDA IPC, for a generator on the same GPU(s).

    Returns (buckets whose `data` is an `IpcBuffer`, the CUDA buffers to keep alive).
    With several colocated learner ranks (torch.distributed initialised), every rank
    packs its own copy on its own GPU and the handles are all-gathered, so a
    tensor-parallel generator spanning those GPUs finds its local buffer by UUID.
    Extra GPU memory: one copy of the weights in their dtype, until the caller drops
    the returned buffers.
    """
    from torch.multiprocessing.reductions import reduce_tensor

    device = torch.cuda.current_device()
    params = [(n, t) for n, t in named_tensors]
    by_name = dict(params)
    buckets, buffers = [], []
    for plan in plan_buckets(params, bucket_bytes):
        buf = torch.empty(plan.numel, dtype=plan.dtype, device=f"cuda:{device}")     # [numel]
        fill_bucket(buf, plan, by_name)
        _, args = reduce_tensor(buf.view(torch.uint8))  # vLLM's packed IPC reads bytes
        buffers.append(buf)
        buckets.append(WeightBucket(names=plan.names, shapes=plan.shapes, offsets=plan.offsets,
                                    dtype=dtype_name(plan.dtype),
                                    data=IpcBuffer({_gpu_uuid(device): args})))
    torch.cuda.synchronize()
    return _merge_ipc_handles(buckets), buffers


def _merge_ipc_handles(buckets: list[WeightBucket]) -> list[WeightBucket]:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return buckets
    mine = [b.data.handles for b in buckets]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    out = []
    for i, b in enumerate(buckets):
        merged: dict[str, tuple] = {}
        for rank_handles in gathered:
            merged.update(rank_handles[i])
        out.append(WeightBucket(b.names, b.shapes, b.offsets, b.dtype, IpcBuffer(merged)))
    return out


IPC_INIT_INFO = {"packed": True}
"""vLLM's `IPCWeightTransferInitInfo` for packed buckets (one CUDA buffer per bucket)."""


def ipc_update_info(bucket: WeightBucket) -> dict[str, Any]:
    """vLLM's packed IPC `update_info` for one bucket (consumed by its "ipc" weight transfer)."""
    itemsize = torch.empty((), dtype=getattr(torch, bucket.dtype)).element_size()
    return {
        "names": list(bucket.names),
        "dtype_names": [bucket.dtype] * len(bucket.names),
        "shapes": [list(s) for s in bucket.shapes],
        "ipc_handles": bucket.data.handles,
        "tensor_sizes": [math.prod(s) * itemsize for s in bucket.shapes],
    }


# ---------------------------------------------------------------- GPU: split (NCCL broadcast)


class NcclWeightSender:
    """Learner side of split-placement sync: rank 0 broadcasts packed chunks over NCCL.

    The group is vLLM's own (`StatelessProcessGroup` + `PyNcclCommunicator`, through
    vllm.distributed.weight_transfer): learner rank 0 is NCCL rank 0, generator
    worker w is rank 1 + w. Setup, once, concurrently (both block in the rendezvous):

        sender = NcclWeightSender(addr, port, world_size=1 + num_generator_workers)  # rank 0
        gen.init_weight_update_group(addr, port, rank_offset=1 + w0, world_size=...)  # each generator

    Per update, concurrently: every learner rank `send(model.named_parameters())`
    (non-zero ranks only join the FSDP gathers) and every generator
    `receive_weights(param_meta(...))` (weights/gloo.py). Both sides must use the same bucket_bytes.
    """

    def __init__(self, master_address: str, master_port: int, world_size: int, *,
                 bucket_bytes: int, num_buffers: int = 2, is_sender: bool = True):
        self.bucket_bytes, self.num_buffers, self.is_sender = bucket_bytes, num_buffers, is_sender
        self.group = None
        if is_sender:
            from vllm.distributed.weight_transfer.nccl_common import trainer_init

            self.group = trainer_init({"master_address": master_address, "master_port": master_port,
                                       "world_size": world_size})

    def send(self, named_tensors: NamedTensors) -> dict[str, float]:
        from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_producer

        t0, nbytes = time.perf_counter(), 0

        def gathered() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal nbytes
            for name, t in named_tensors:
                full = materialize(t)  # a collective on every rank, in the same order
                nbytes += full.numel() * full.element_size()
                yield name, full

        if not self.is_sender:
            for _ in gathered():
                pass
        else:
            packed_nccl_broadcast_producer(iterator=gathered(), group=self.group, src=0,
                                           post_iter_func=lambda item: item[1],
                                           buffer_size_bytes=self.bucket_bytes,
                                           num_buffers=self.num_buffers)
            torch.cuda.synchronize()
        return {"weight_sync/bytes": float(nbytes), "weight_sync/send_s": time.perf_counter() - t0}
