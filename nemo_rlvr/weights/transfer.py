"""Weight transfer, trainer side, through vLLM's weight-transfer handshake (CPU: gloo).

    learner rank 0: GlooTrainer.trainer_init(GlooTrainerInitInfo(...), client=GeneratorClient(...))
        client.init_weight_transfer_engine(init_info)  -> every generator joins the gloo group
    every RL step, all learner ranks: trainer.send_weights()
        rank 0: client.start_weight_update()
                client.update_weights({"names", "dtype_names", "shapes"})   (generators receive...)
                broadcast_buckets(...)                                      (...while rank 0 sends)
                client.finish_weight_update()
        other ranks: only join the per-parameter gathers of a sharded model

This is vLLM 0.32's trainer-side protocol (`TrainerWeightTransferEngine`: `trainer_init`,
`send_weights`, `shutdown`; the client is its `VLLMWeightSyncClient` with the four calls above)
and the worker-side info dicts are exactly its NCCL engine's (`NCCLWeightTransferInitInfo`,
`NCCLWeightTransferUpdateInfo`), so a vLLM generator takes weights through its own engine
machinery (weights/vllm_engine.py registers the gloo worker engine) and the HF generator
answers the same four calls (rollout/hf.py). On a GPU, training still moves weights through
Ray's object store (weights/buckets.py) until the NCCL and IPC engines are wired in (#12).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from nemo_rlvr.dispatch import call, resolve
from nemo_rlvr.weights.gloo import ParamMeta, Scratch, broadcast_buckets, join_group, param_meta

BACKEND = "gloo"


def init_info_dict(*, master_address: str, master_port: int, world_size: int, bucket_bytes: int,
                   rank_offset: int | None = None, num_buffers: int = 1) -> dict[str, Any]:
    """The worker init info vLLM's NCCL engine (and our gloo engine) parses as
    `NCCLWeightTransferInitInfo`; `rank_offset` is added per replica by `GeneratorClient`."""
    info = {"master_address": master_address, "master_port": master_port, "world_size": world_size,
            "packed": True, "packed_buffer_size_bytes": bucket_bytes, "packed_num_buffers": num_buffers}
    return info if rank_offset is None else {**info, "rank_offset": rank_offset}


def update_info_dict(meta: Sequence[ParamMeta]) -> dict[str, Any]:
    """One update's info, parsed as `NCCLWeightTransferUpdateInfo`: names, dtype names, shapes."""
    return {"names": [m[0] for m in meta], "dtype_names": [m[1] for m in meta],
            "shapes": [list(m[2]) for m in meta]}


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
    each call goes to every replica at once and returns when all have answered. Replica g gets
    `rank_offset = 1 + g` in its init info (vLLM adds the engine's own rank to it)."""

    def __init__(self, workers: Sequence[Any]):
        self.workers = list(workers)

    def _all(self, method: str, args_for: Callable[[int], tuple]) -> list[Any]:
        return [resolve(f) for f in [call(w, method, *args_for(g)) for g, w in enumerate(self.workers)]]

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._all("init_weight_transfer_engine", lambda g: ({**init_info, "rank_offset": 1 + g},))

    def start_weight_update(self) -> None:
        self._all("start_weight_update", lambda g: ())

    def update_weights(self, update_info: dict[str, Any]) -> list[Any]:
        """Every replica's answer (HF and vLLM generators return their `weight_sync/apply_s`)."""
        return self._all("update_weights", lambda g: (update_info,))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", lambda g: ())


class GlooTrainer:
    """Trainer-side gloo engine (the interface of vLLM's `TrainerWeightTransferEngine`). `source`
    is a callable giving the model's (name, parameter) pairs (DTensors are gathered in turn)."""

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

    def send_weights(self) -> dict[str, float]:
        """One update to every generator; `weight_sync/*` metrics (rank 0's are the real ones)."""
        t0 = time.perf_counter()
        params = list(self.source())
        if not self.is_sender:
            broadcast_buckets(None, params, self.bucket_bytes, self.scratch)  # the gathers only
            return {}
        update = update_info_dict(param_meta(params))
        self.client.start_weight_update()
        with ThreadPoolExecutor(1) as pool:
            received = pool.submit(self.client.update_weights, update)
            with _surface(received, "receiving weights"):
                nbytes = broadcast_buckets(self.group, params, self.bucket_bytes, self.scratch)
            applied = received.result()
        self.client.finish_weight_update()
        dt = time.perf_counter() - t0
        apply_s = max((a or {}).get("weight_sync/apply_s", 0.0) for a in applied) if applied else 0.0
        return {"weight_sync/bytes": float(nbytes), "weight_sync/seconds": dt,
                "weight_sync/gb_per_s": nbytes / max(dt, 1e-9) / 1e9, "weight_sync/apply_s": apply_s}

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
