"""Weight sync, learner -> generators, after every optimizer step: bucketed flat buffers.

Three transports, one bucket format (`WeightBucket`: names, shapes, element offsets,
one dtype, one flat buffer). Parameters keep their Hugging Face names end to end;
the generator maps them onto its own layout (vLLM fuses q/k/v, gate/up).

    learner ranks                                          generator actor(s)
    --------------------------------------------------     ---------------------------------------
    CPU / any      pack_buckets -> numpy buffers --ray.put (shared memory)--> load_weights(buckets)
                   (one control call per update)                            -> worker.reload_weights
    GPU colocated  pack_ipc_buckets -> CUDA buffers, each --IPC handle-->     load_weights(buckets)
                   exported with reduce_tensor; keep them                  -> vLLM "ipc" weight transfer
                   alive until load_weights returns
    GPU split      NcclWeightSender.send (rank 0 broadcasts --NCCL-->       receive_weights(meta)
                   packed chunks; every rank joins the gather)             -> vLLM "nccl" weight transfer

FSDP-sharded parameters (DTensor) are gathered one parameter at a time, inside the
bucket being filled (`DTensor.full_tensor()`, a collective every learner rank must
join in the same order), so a rank never holds more than one bucket of gathered
weights, never the whole model. Only CPU numpy buckets outlive the call (they sit in
Ray's object store until the generators have read them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nemo_rlvr.rollout.base import WeightBucket

NamedTensors = Iterable[tuple[str, torch.Tensor]]

_NUMPY_STORAGE = {
    torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
    torch.bfloat16: np.uint16,  # numpy has no bfloat16: the bits travel as uint16
}


def materialize(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a parameter: FSDP DTensor shards are all-gathered (a collective)."""
    full = getattr(t, "full_tensor", None)
    return (full() if callable(full) else t).detach()


@dataclass(frozen=True)
class _Plan:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    dtype: torch.dtype
    numel: int


def _plan(params: Sequence[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[_Plan]:
    """Split parameters, in order, into runs of one dtype of at most bucket_bytes each.

    Shapes and dtypes are read without gathering (a DTensor knows its global shape).
    A parameter larger than bucket_bytes gets a bucket of its own. Offsets are
    contiguous (no padding), the layout vLLM's packed transfers expect.
    """
    plans: list[_Plan] = []
    cur: list[tuple[str, tuple[int, ...]]] = []
    cur_dtype, cur_numel = None, 0

    def flush() -> None:
        nonlocal cur, cur_numel
        if cur:
            offsets, off = [], 0
            for _, shape in cur:
                offsets.append(off)
                off += math.prod(shape)
            plans.append(_Plan(tuple(n for n, _ in cur), tuple(s for _, s in cur), tuple(offsets),
                               cur_dtype, off))
        cur, cur_numel = [], 0

    for name, t in params:
        shape, numel = tuple(t.shape), t.numel()
        itemsize = t.element_size()
        if t.dtype != cur_dtype or (cur and (cur_numel + numel) * itemsize > bucket_bytes):
            flush()
            cur_dtype = t.dtype
        cur.append((name, shape))
        cur_numel += numel
    flush()
    return plans


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def iter_buckets(named_tensors: NamedTensors, bucket_bytes: int) -> Iterator[WeightBucket]:
    """Yield CPU buckets whose `data` is a 1-D numpy array (bf16 travels as uint16 bits).

    Every learner rank must run this in lockstep when parameters are DTensors; each
    gathered parameter is copied into the bucket and dropped before the next one.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes={bucket_bytes} must be positive "
                         "(generation.weight_sync_bucket_mb sets it, in MiB).")
    params = [(n, t) for n, t in named_tensors]
    by_name = dict(params)
    for plan in _plan(params, bucket_bytes):
        if plan.dtype not in _NUMPY_STORAGE:
            raise TypeError(f"weight sync: parameter {plan.names[0]!r} has dtype {plan.dtype}; "
                            f"supported: {', '.join(map(str, _NUMPY_STORAGE))}.")
        data = np.empty(plan.numel, dtype=_NUMPY_STORAGE[plan.dtype])
        flat = torch.from_numpy(data).view(plan.dtype)                          # [numel]
        for name, off, shape in zip(plan.names, plan.offsets, plan.shapes):
            full = materialize(by_name[name])
            flat[off : off + full.numel()].copy_(full.reshape(-1))               # D2H if on GPU
            del full
        yield WeightBucket(names=plan.names, shapes=plan.shapes, offsets=plan.offsets,
                           dtype=_dtype_name(plan.dtype), data=data)


def pack_buckets(named_tensors: NamedTensors, bucket_bytes: int) -> list[WeightBucket]:
    """All parameters as CPU numpy buckets of at most `bucket_bytes` (one dtype per bucket)."""
    return list(iter_buckets(named_tensors, bucket_bytes))


def bucket_nbytes(bucket: WeightBucket) -> int:
    """Bytes of parameter data in a bucket (IPC buckets included)."""
    itemsize = torch.empty((), dtype=getattr(torch, bucket.dtype)).element_size()
    return itemsize * sum(math.prod(s) for s in bucket.shapes)


def bucket_flat_tensor(bucket: WeightBucket) -> torch.Tensor:
    """The bucket's buffer as a 1-D torch tensor of its dtype (no copy)."""
    data = bucket.data
    if isinstance(data, np.ndarray):
        with warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; we only ever read them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"weight sync: bucket data of type {type(data).__name__} is not a buffer "
                        "(IPC buckets go through VLLMGenerator.load_weights on a GPU).")
    dtype = getattr(torch, bucket.dtype)
    return data if data.dtype == dtype else data.view(dtype)


def iter_bucket_tensors(buckets: Iterable[WeightBucket]) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor view) for every parameter of every bucket; views share the buffers."""
    for bucket in buckets:
        flat = bucket_flat_tensor(bucket)
        for name, shape, off in zip(bucket.names, bucket.shapes, bucket.offsets):
            yield name, flat[off : off + math.prod(shape)].view(shape)


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
    for plan in _plan(params, bucket_bytes):
        buf = torch.empty(plan.numel, dtype=plan.dtype, device=f"cuda:{device}")     # [numel]
        for name, off, shape in zip(plan.names, plan.offsets, plan.shapes):
            full = materialize(by_name[name])
            buf[off : off + full.numel()].copy_(full.reshape(-1))
            del full
        _, args = reduce_tensor(buf.view(torch.uint8))  # vLLM's packed IPC reads bytes
        buffers.append(buf)
        buckets.append(WeightBucket(names=plan.names, shapes=plan.shapes, offsets=plan.offsets,
                                    dtype=_dtype_name(plan.dtype),
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


def weight_meta(named_tensors: NamedTensors) -> list[tuple[str, str, list[int]]]:
    """(name, dtype name, full shape) per parameter, without gathering anything."""
    return [(n, _dtype_name(t.dtype), list(t.shape)) for n, t in named_tensors]


class NcclWeightSender:
    """Learner side of split-placement sync: rank 0 broadcasts packed chunks over NCCL.

    The group is vLLM's own (`StatelessProcessGroup` + `PyNcclCommunicator`, through
    vllm.distributed.weight_transfer): learner rank 0 is NCCL rank 0, generator
    worker w is rank 1 + w. Setup, once, concurrently (both block in the rendezvous):

        sender = NcclWeightSender(addr, port, world_size=1 + num_generator_workers)  # rank 0
        gen.init_weight_update_group(addr, port, rank_offset=1 + w0, world_size=...)  # each generator

    Per update, concurrently: every learner rank `send(model.named_parameters())`
    (non-zero ranks only join the FSDP gathers) and every generator
    `receive_weights(weight_meta(...))`. Both sides must use the same bucket_bytes.
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
        import time

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
