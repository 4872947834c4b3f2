"""Learner worker (the Ray actor around `PolicyWorker`) and the group the controller calls.

    controller --batch--> LearnerGroup --> LearnerWorker (actor) --> PolicyWorker
    LearnerWorker.publish_weights: pack buckets, `ray.put` each, return the refs;
    generators read them straight from the shared-memory object store.
"""

from __future__ import annotations

from typing import Any

from nemo_rlvr.dispatch import call, put_all, resolve
from nemo_rlvr.learner.packing import TrainBatch


class LearnerWorker:
    def __init__(self, model_path: str, num_threads: int = 1, **policy_kwargs: Any):
        import torch

        from nemo_rlvr.learner.policy import PolicyWorker

        if num_threads:
            torch.set_num_threads(num_threads)
        self.policy = PolicyWorker(model_path, **policy_kwargs)

    def logprobs(self, batch: TrainBatch) -> dict[str, Any]:
        return self.policy.logprobs(batch)

    def train(self, batch: TrainBatch) -> dict[str, float]:
        return self.policy.train(batch)

    def publish_weights(self, bucket_bytes: int) -> list[Any]:
        return put_all(self.policy.export_weights(bucket_bytes))

    def state_dict(self) -> dict[str, Any]:
        return self.policy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)

    def save(self, path: str) -> None:
        self.policy.save(path)

    def load(self, path: str) -> None:
        self.policy.load(path)

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        self.policy.save_hf(path, tokenizer_path)

    def param_checksum(self) -> float:
        return self.policy.param_checksum()


class LearnerGroup:
    """One learner today; the methods are the Learner contract of DESIGN.md."""

    def __init__(self, workers: list[Any]):
        self.workers = workers
        self.lead = workers[0]

    def logprobs(self, batch: TrainBatch) -> dict[str, Any]:
        return resolve(call(self.lead, "logprobs", batch))

    def train(self, batch: TrainBatch) -> dict[str, float]:
        return resolve(call(self.lead, "train", batch))

    def weights(self, bucket_bytes: int) -> list[Any]:
        """Bucket refs (or buckets, without Ray) for `GeneratorGroup.load_weights`."""
        return resolve(call(self.lead, "publish_weights", bucket_bytes))

    def state_dict(self) -> dict[str, Any]:
        return resolve(call(self.lead, "state_dict"))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        resolve(call(self.lead, "load_state_dict", state))

    def save(self, path: str) -> None:
        """Every rank writes its shard of the full state into folder `path` (shared filesystem)."""
        for fut in [call(w, "save", path) for w in self.workers]:
            resolve(fut)

    def load(self, path: str) -> None:
        for fut in [call(w, "load", path) for w in self.workers]:
            resolve(fut)

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        resolve(call(self.lead, "save_hf", path, tokenizer_path))

    def param_checksum(self) -> float:
        return resolve(call(self.lead, "param_checksum"))
