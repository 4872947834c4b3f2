"""Worker for tests/integration/test_weight_buckets_dtensor.py: pack weight buckets from an
FSDP2-sharded model on two gloo ranks (run with torch.multiprocessing.spawn)."""

from __future__ import annotations

import os

import torch


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def pack_sharded(rank: int, world: int, port: int, bucket_bytes: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from nemo_rlvr.weights.buckets import pack_buckets

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = make_model()
        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        local = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
        buckets = pack_buckets(model.named_parameters(), bucket_bytes)  # every rank joins the gathers
        torch.save({"local_shapes": local, "buckets": [(b.names, b.shapes, b.offsets, b.dtype,
                                                        torch.from_numpy(b.data.copy())) for b in buckets]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
