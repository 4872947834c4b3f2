"""Weight buckets: the learner's parameters packed into flat buffers, and read back by generators.

    learner (policy.export_weights)                       generators (hf.py, vllm.py)
    pack_buckets(named_parameters, bucket_bytes)  --->   iter_bucket_tensors(buckets)
      -> WeightBuckets whose data is a 1-D numpy            -> (HF name, view) per parameter
         array (Ray's object store carries it zero-copy)

One format for every transport (`types.WeightBucket`: names, shapes, element offsets, one
dtype, one flat buffer). Parameters keep their Hugging Face names end to end; the
generator maps them onto its own layout (vLLM fuses q/k/v, gate/up). Training today
sends CPU buckets through Ray's object store (learner/group.py, rollout/group.py); the
GPU transports are vLLM's own trainer engines (weights/transfer.py).

A parameter that is a DTensor (an FSDP2-sharded model) is gathered one at a time inside
the bucket being filled (`materialize`: `DTensor.full_tensor()`, a collective every rank
must join in the same order), so a rank holds at most one gathered parameter beyond the
bucket, never the whole model (tests/integration/test_weight_buckets_dtensor.py runs this
on two gloo ranks, as the sharded learner runs it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nemo_rlvr.types import WeightBucket

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
class BucketPlan:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    dtype: torch.dtype
    numel: int


def plan_buckets(params: Sequence[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[BucketPlan]:
    """Split parameters, in order, into runs of one dtype of at most bucket_bytes each.

    Shapes and dtypes are read without gathering (a DTensor knows its global shape).
    A parameter larger than bucket_bytes gets a bucket of its own. Offsets are
    contiguous (no padding), the layout vLLM's packed transfers expect.
    """
    plans: list[BucketPlan] = []
    cur: list[tuple[str, tuple[int, ...]]] = []
    cur_dtype, cur_numel = None, 0

    def flush() -> None:
        nonlocal cur, cur_numel
        if cur:
            offsets, off = [], 0
            for _, shape in cur:
                offsets.append(off)
                off += math.prod(shape)
            plans.append(BucketPlan(tuple(n for n, _ in cur), tuple(s for _, s in cur), tuple(offsets),
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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fill_bucket(buf: torch.Tensor, plan: BucketPlan, by_name: dict[str, torch.Tensor]) -> None:
    """Copy the plan's parameters into the flat buffer `buf` (any device), gathering each sharded
    one in turn (a collective: every rank fills in the same order) and dropping it before the next."""
    for name, off in zip(plan.names, plan.offsets):
        full = materialize(by_name[name])
        buf[off : off + full.numel()].copy_(full.reshape(-1))                    # D2H from a GPU learner
        del full


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
    for plan in plan_buckets(params, bucket_bytes):
        if plan.dtype not in _NUMPY_STORAGE:
            raise TypeError(f"weight sync: parameter {plan.names[0]!r} has dtype {plan.dtype}; "
                            f"supported: {', '.join(map(str, _NUMPY_STORAGE))}.")
        data = np.empty(plan.numel, dtype=_NUMPY_STORAGE[plan.dtype])
        flat = torch.from_numpy(data).view(plan.dtype)                          # [numel]
        fill_bucket(flat, plan, by_name)
        yield WeightBucket(names=plan.names, shapes=plan.shapes, offsets=plan.offsets,
                           dtype=dtype_name(plan.dtype), data=data)


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
