"""Learner ranks (Ray actors around `PolicyWorker`) and the group the controller calls.

    controller --batch--> LearnerGroup --the same batch (one object-store copy)--> rank 0 .. W-1
        each rank trains on its rows; FSDP2 reduces gradients; rank 0's metrics come back
    LearnerGroup.push_weights: every rank's trainer engine sends (gloo / NCCL / CUDA IPC, through
        vLLM's handshake, weights/transfer.py): rank 0 drives the generators, the others join the
        gathers; or (HF generators on GPUs, tests, benchmarks) `publish_weights`: rank 0 packs
        buckets and `ray.put`s them, the generators read them from shared memory.

A group of W ranks forms its process group before the model loads: rank 0 names an address
(its node IP and a free port), then every rank joins (`LearnerWorker.setup`). Every method
that touches the model is called on all ranks, in the same order (FSDP2's collectives).
"""

from __future__ import annotations

from typing import Any

from nemo_rlvr.dispatch import call, is_actor, put_all, resolve, resolve_all
from nemo_rlvr.learner.packing import TrainBatch


class LearnerWorker:
    """One learner rank. `world_size == 1` on a CPU builds the model at once; otherwise the
    group calls `setup(address, port)` on every rank (the process group, then the model)."""

    def __init__(self, model_path: str, num_threads: int = 1, rank: int = 0, world_size: int = 1,
                 **policy_kwargs: Any):
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        self.rank, self.world_size = rank, world_size
        self._model_path, self._policy_kwargs = model_path, policy_kwargs
        self.policy = None
        if not self.needs_process_group():
            self.setup()

    def needs_process_group(self) -> bool:
        import torch

        return self.world_size > 1 or torch.cuda.is_available()

    def rendezvous_address(self) -> tuple[str, int]:
        from nemo_rlvr.learner.distributed import rendezvous_address

        return rendezvous_address()

    def setup(self, master_address: str | None = None, master_port: int | None = None) -> None:
        import torch

        from nemo_rlvr.learner.distributed import init_distributed
        from nemo_rlvr.learner.policy import PolicyWorker

        if self.policy is not None:
            return
        if self.needs_process_group():
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
            if device.type == "cuda":
                torch.cuda.set_device(device)  # Ray gives each rank one GPU, visible as cuda:0
            init_distributed(self.rank, self.world_size, master_address, master_port, device=device)
        self.policy = PolicyWorker(self._model_path, **self._policy_kwargs)

    def logprobs(self, batch: TrainBatch, **which: bool) -> dict[str, Any]:
        return self.policy.logprobs(batch, **which)

    def train(self, batch: TrainBatch) -> dict[str, float]:
        return self.policy.train(batch)

    def values(self, batch: TrainBatch) -> Any:
        return self.policy.values(batch)

    def train_critic(self, batch: TrainBatch, returns: Any, old_values: Any) -> dict[str, float]:
        return self.policy.train_critic(batch, returns, old_values)

    def publish_weights(self, bucket_bytes: int) -> list[Any]:
        buckets = self.policy.export_weights(bucket_bytes)  # every rank joins the gathers
        return put_all(buckets) if self.rank == 0 else []

    def init_weight_transfer(self, generators: list[Any], backend: str, master_address: str, master_port: int,
                             bucket_bytes: int, ranks_per_replica: int = 1) -> None:
        """Every rank builds its trainer engine for `backend` (weights/transfer.py); rank 0 holds the
        client and connects every generator, the other ranks only join the gathers of each update."""
        from nemo_rlvr.weights.transfer import GeneratorClient, WeightSender, trainer_init_info

        if getattr(self, "sender", None) is not None:  # reconnecting (a generator was restarted)
            self.sender.shutdown()
        client = GeneratorClient(generators, ranks_per_replica=ranks_per_replica) if self.rank == 0 else None
        info = trainer_init_info(backend, rank=self.rank, world_size=1 + len(generators) * ranks_per_replica,
                                 bucket_bytes=bucket_bytes, master_address=master_address,
                                 master_port=master_port)
        self.sender = WeightSender(info, client=client, module=self.policy.model)

    def sync_weights(self) -> dict[str, float]:
        return self.sender.send()

    def offload_optimizer(self) -> None:
        self.policy.offload_optimizer()

    def reload_optimizer(self) -> None:
        self.policy.reload_optimizer()

    def save(self, path: str) -> None:
        self.policy.save(path)

    def load(self, path: str) -> None:
        self.policy.load(path)

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        self.policy.save_hf(path, tokenizer_path)

    def param_checksum(self) -> float:
        return self.policy.param_checksum()


class LearnerGroup:
    """W learner ranks behind the Learner contract of DESIGN.md; rank 0 answers for all."""

    def __init__(self, workers: list[Any]):
        self.workers = workers
        self.transfer = False
        """True once `init_weight_transfer` connected the generators (then use `sync_weights`)."""
        self._pending_push: list[Any] | None = None
        """The push `train(push_after=True)` queued, until `push_weights` collects it."""
        if len(workers) > 1 or resolve(call(workers[0], "needs_process_group")):
            address, port = resolve(call(workers[0], "rendezvous_address"))
            self._all("setup", address, port)  # every rank blocks until all have joined

    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call `method` on every rank at once (they meet in collectives) and wait for all."""
        return resolve_all([call(w, method, *args, **kwargs) for w in self.workers])

    def logprobs(self, batch: TrainBatch, **which: bool) -> dict[str, Any]:
        """`logp_old` (policy=True) and `logp_ref` (reference=True, KL on) for every target token;
        each rank fills its own rows and leaves the others 0, so the ranks' results add up."""
        parts = self._all("logprobs", _shared(batch, len(self.workers)), **which)
        return {k: sum((p[k] for p in parts[1:]), parts[0][k]) for k in parts[0]}

    def train(self, batch: TrainBatch, *, push_after: bool = False) -> dict[str, float]:
        """One step on every rank; rank 0's metrics. `push_after` (Ray actors with the weight
        transfer connected): each rank's weight push is queued right behind its train call, so it
        starts when training ends instead of a driver round trip later; `push_weights` collects it."""
        refs = [call(w, "train", _shared(batch, len(self.workers))) for w in self.workers]
        if push_after and self.transfer and all(is_actor(w) for w in self.workers):
            self._pending_push = [call(w, "sync_weights") for w in self.workers]
        return resolve_all(refs)[0]

    def values(self, batch: TrainBatch) -> Any:
        """PPO's critic values, [N, L-1] (the critic lives beside rank 0, the only rank then)."""
        return resolve(call(self.workers[0], "values", _shared(batch, len(self.workers))))

    def train_critic(self, batch: TrainBatch, returns: Any, old_values: Any) -> dict[str, float]:
        return resolve(call(self.workers[0], "train_critic", _shared(batch, len(self.workers)), returns, old_values))

    def weights(self, bucket_bytes: int) -> list[Any]:
        """Bucket refs (or buckets, without Ray) for `GeneratorGroup.load_weights`."""
        return self._all("publish_weights", bucket_bytes)[0]

    def init_weight_transfer(self, generators: list[Any], bucket_bytes: int, *, backend: str = "gloo",
                             ranks_per_replica: int = 1) -> None:
        """Connect the learner to the generators (Ray actors or local objects) for `push_weights`
        over `backend` (gloo, nccl, ipc); `ranks_per_replica` is the generators' TP size."""
        self._pending_push = None  # a queued push to the old group is void (its outcome is moot)
        address, port = resolve(call(self.workers[0], "rendezvous_address"))
        self._all("init_weight_transfer", generators, backend, address, port, bucket_bytes, ranks_per_replica)
        self.transfer = True
        self._transfer_args = (bucket_bytes, backend, ranks_per_replica)

    def reconnect(self, generators: list[Any]) -> None:
        """Open a new weight-transfer group with `generators` (some of them restarted), as before."""
        if self.transfer:
            bucket_bytes, backend, tp = self._transfer_args
            self.init_weight_transfer(generators, bucket_bytes, backend=backend, ranks_per_replica=tp)

    def offload_optimizer(self) -> None:
        """Optimizer state to host memory (colocated GPUs, while the generators run)."""
        self._all("offload_optimizer")

    def reload_optimizer(self) -> None:
        self._all("reload_optimizer")

    def push_weights(self, generators: Any, bucket_bytes: int) -> dict[str, float]:
        """Give every generator the current weights: through the weight-transfer group once
        `init_weight_transfer` connected it (all ranks join, rank 0 sends), else as buckets through
        Ray's object store (`generators.load_weights`). Returns `weight_sync/*` metrics."""
        if self.transfer:
            pending, self._pending_push = self._pending_push, None
            return resolve_all(pending or [call(w, "sync_weights") for w in self.workers])[0]
        return generators.load_weights(self.weights(bucket_bytes))

    def save(self, path: str) -> None:
        """Every rank writes its shard of the full state into folder `path` (shared filesystem)."""
        self._all("save", path)

    def load(self, path: str) -> None:
        self._all("load", path)

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        self._all("save_hf", path, tokenizer_path)

    def param_checksum(self) -> float:
        return self._all("param_checksum")[0]


def _shared(batch: TrainBatch, ranks: int) -> Any:
    """The batch once in Ray's object store when several ranks read it (each reads the same copy);
    as is for one rank (Ray sends it with the call: one copy, no store round trip) or without Ray."""
    return put_all([batch])[0] if ranks > 1 else batch
