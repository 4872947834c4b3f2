"""The shared-memory transport: learner rank 0 and generators on the same machine map one file in
/dev/shm, so an update is one copy in (the learner) and one copy out (each generator), with no
socket in between. What CUDA IPC is to colocated GPUs, this is to CPU processes on one node.

    learner rank 0                                   generator g (same node)
    trainer_init: create + map /dev/shm/<name>  -->  open_region(path): map it
                  (unlink once every generator mapped it: nothing is left behind)
    send_weights: params -> region (one copy)   -->  update_weights: region -> params (one copy)

The region holds every parameter back to back in `plan_buckets(meta, whole model)` order (one
flat run per dtype, 64-byte aligned), so both sides find each tensor from the same metadata.
The synchronous loop never generates while the learner writes: the update call is made after
the region is written, and generation starts after it returns.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from nemo_rlvr.weights.buckets import BucketPlan, fill_bucket, materialize, plan_buckets
from nemo_rlvr.weights.gloo import ParamMeta, _meta_tensors, param_meta, update_info_dict, update_info_meta

BACKEND = "shm"
ALIGN = 64
SHM_DIR = "/dev/shm"


def _nbytes(plan: BucketPlan) -> int:
    return plan.numel * torch.empty(0, dtype=plan.dtype).element_size()


def region_plans(meta: Sequence[ParamMeta]) -> list[tuple[int, BucketPlan]]:
    """(byte offset, plan) of each dtype run of the parameters, in order: one bucket per run."""
    tensors = _meta_tensors(meta)
    whole = max(sum(t.numel() * t.element_size() for _, t in tensors), 1)
    out, off = [], 0
    for plan in plan_buckets(tensors, whole):
        out.append((off, plan))
        off += math.ceil(_nbytes(plan) / ALIGN) * ALIGN
    return out


def region_bytes(meta: Sequence[ParamMeta]) -> int:
    plans = region_plans(meta)
    if not plans:
        return 0
    off, plan = plans[-1]
    return off + _nbytes(plan)


class ShmUnavailable(RuntimeError):
    """This machine's /dev/shm cannot hold the region (missing, full, or a file-size limit)."""


def map_region(path: str, nbytes: int, *, create: bool) -> torch.Tensor:
    """The file at `path` mapped shared, as [nbytes] uint8. `create`: made and its pages reserved
    first (posix_fallocate), so a /dev/shm too small for it (a container's 64 MiB default) fails
    here with ShmUnavailable rather than with SIGBUS on a later write."""
    if create:
        if not os.access(SHM_DIR, os.W_OK):
            raise ShmUnavailable(f"{SHM_DIR} is missing or not writable")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(nbytes, 1))
        except OSError as e:  # ENOSPC: /dev/shm too small; EFBIG: RLIMIT_FSIZE
            raise ShmUnavailable(f"{SHM_DIR} cannot hold {nbytes / 2**20:.1f} MiB of weights: {e.strerror}") from e
        finally:
            os.close(fd)
    elif os.path.getsize(path) != nbytes:
        raise RuntimeError(f"weight transfer (shm): {path} holds {os.path.getsize(path)} bytes, the learner "
                           f"announced {nbytes}")
    return torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)


def views(region: torch.Tensor, meta: Sequence[ParamMeta]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor viewing the region) of every parameter, in `meta` order."""
    for off, plan in region_plans(meta):
        flat = region[off : off + _nbytes(plan)].view(plan.dtype)
        for name, o, shape in zip(plan.names, plan.offsets, plan.shapes):
            yield name, flat[o : o + math.prod(shape)].view(shape)


@dataclass(kw_only=True)
class ShmTrainerInitInfo:
    """Trainer-side init info (the shape of vLLM's `TrainerInitInfo`); rank 0 writes the region."""

    backend: ClassVar[str] = BACKEND
    rank: int

    @property
    def is_sender(self) -> bool:
        return self.rank == 0


class ShmTrainer:
    """Trainer-side shared-memory engine (the interface of vLLM's `TrainerWeightTransferEngine`:
    `trainer_init`, `send_weights`, `shutdown`). `source` gives the model's (name, parameter)
    pairs; sharded ones (DTensors) are gathered one at a time, on every rank, as they are copied."""

    def __init__(self, *, client: Any, source: Callable[[], Any], is_sender: bool,
                 region: torch.Tensor | None = None, meta: list[ParamMeta] | None = None):
        self.client, self.source, self.is_sender = client, source, is_sender
        self.region = region
        self.plans = region_plans(meta or [])           # the layout, fixed for this region
        self.update_info = update_info_dict(meta or [])

    @classmethod
    def trainer_init(cls, init_info: ShmTrainerInitInfo, *, client: Any, source: Callable[[], Any]) -> ShmTrainer:
        """Rank 0 creates the region and every generator maps it; then the file is unlinked (the
        mappings keep the memory until the last process lets go)."""
        if not init_info.is_sender:
            return cls(client=None, source=source, is_sender=False)
        meta = param_meta(source())
        nbytes = region_bytes(meta)
        path = os.path.join(SHM_DIR, f"nemo_rlvr_weights_{os.getpid()}_{uuid.uuid4().hex[:12]}")
        try:
            region = map_region(path, nbytes, create=True)
            client.init_weight_transfer_engine({"shm_path": path, "shm_bytes": nbytes})
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return cls(client=client, source=source, is_sender=True, region=region, meta=meta)

    def send_weights(self) -> None:
        params = list(self.source())
        by_name = dict(params)
        if not self.is_sender:  # only join the gathers, in rank 0's order
            for _, plan in region_plans(param_meta(params)):
                for name in plan.names:
                    materialize(by_name[name])
            return
        for off, plan in self.plans:
            fill_bucket(self.region[off : off + _nbytes(plan)].view(plan.dtype), plan, by_name)
        # written before the generators are told: they read it in their update call
        self.client.whole_update(self.update_info)

    def shutdown(self) -> None:
        self.region = None


class ShmReceiver:
    """Generator side: the learner's region, mapped; `tensors(update_info)` views each parameter."""

    def __init__(self, init_info: dict[str, Any]):
        path = init_info["shm_path"]
        if not os.path.exists(path):
            raise RuntimeError(f"weight transfer (shm): {path} does not exist here; the shm transport needs the "
                               f"generators on the learner's machine (set generation.weight_transfer=gloo)")
        self.region = map_region(path, int(init_info["shm_bytes"]), create=False)

    def tensors(self, update_info: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
        return views(self.region, update_info_meta(update_info))
