"""Learner ranks: the process group, FSDP2 sharding of a Hugging Face causal LM, and metric reduction.

    rank 0 .. rank W-1 (Ray actors, or torchrun processes)
        init_distributed(rank, world, addr, port)     gloo on CPU, NCCL on CUDA
        shard_model(model, mesh=..., ...)             fully_shard(each decoder block), fully_shard(root)
        every rank: the same batch -> its own rows (packing.shard_by_tokens) -> forward/backward
        FSDP2 reduce-scatters gradients (summed: the loss is already normalised by the global count)
        reduce_metrics(partial sums) -> the same metrics on every rank

Plain functions in the order they are applied (torchtitan's `parallelize_*` shape); the model
code itself holds no parallelism.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Mapping

import torch
from torch import nn

MAX_KEYS_SUFFIX = "_max"
"""Metrics whose key ends with this are reduced with max across ranks; the rest are summed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rendezvous_address() -> tuple[str, int]:
    """This process's reachable IP and a free port, for rank 0 to host the process group."""
    try:
        import ray

        ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    except ImportError:
        ip = "127.0.0.1"
    return ip, free_port()


def init_distributed(rank: int, world_size: int, master_address: str, master_port: int, *,
                     device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the learner's process group: NCCL on CUDA, gloo on CPU. Every rank calls this, and
    it returns once all `world_size` ranks have joined."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{master_address}:{master_port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": device} if device.type == "cuda" else {}))


def init_from_env(device_type: str) -> tuple[int, int, torch.device]:
    """torchrun: (rank, world size, this rank's device) from RANK / WORLD_SIZE / LOCAL_RANK, with
    the process group joined through MASTER_ADDR / MASTER_PORT."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if device_type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 or device.type == "cuda":
        init_distributed(rank, world, os.environ.get("MASTER_ADDR", "127.0.0.1"),
                         int(os.environ.get("MASTER_PORT", 29500)), device=device)
    return rank, world, device


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a HF model: modules whose class is in `_no_split_modules`
    (Qwen2DecoderLayer, LlamaDecoderLayer, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no decoder block class in _no_split_modules; "
                         f"cannot shard it per block.")
    return blocks


def shard_model(model: nn.Module, *, mesh, param_dtype: torch.dtype | None, cpu_offload: bool) -> None:
    """FSDP2 in place: each decoder block, then the root (embeddings, final norm, lm_head: tied
    weights stay in one group). bf16 `param_dtype` computes in bf16 with fp32 gradient reduction
    and fp32 master weights; `cpu_offload` keeps sharded parameters, gradients and optimizer state
    in host memory (the optimizer step then runs on the CPU). Gradients are summed across ranks,
    not averaged: the loss is normalised by the global token count already."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    kw = dict(mesh=mesh, mp_policy=mp, offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy())
    for block in decoder_blocks(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    for unit in (m for m in model.modules() if isinstance(m, FSDPModule)):
        unit.set_gradient_divide_factor(1.0)         # sum, not mean: the loss has the global normaliser
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM reduce-scatter (gloo has no PREMUL_SUM)


def reduce_metrics(partial: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Sum each rank's partial sums (max for keys ending in `_max`); identity on one process."""
    import torch.distributed as dist

    out = dict(partial)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return out
    keys = sorted(out)
    for op, subset in ((dist.ReduceOp.SUM, [k for k in keys if not k.endswith(MAX_KEYS_SUFFIX)]),
                       (dist.ReduceOp.MAX, [k for k in keys if k.endswith(MAX_KEYS_SUFFIX)])):
        if subset:
            t = torch.tensor([out[k] for k in subset], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=op)
            out.update(zip(subset, t.tolist()))
    return out
