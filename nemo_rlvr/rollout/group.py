"""Generator workers (Ray actors or local objects) behind one `Generator`-shaped group.

    controller --generate(prompts)--> GeneratorGroup --chunks--> worker 0 .. worker k-1
    learner --weight-transfer calls (weights/transfer.py)--> GeneratorWorker --> backend engine
    learner --buckets (object store)--> GeneratorGroup.load_weights --one call each--> workers

A worker builds its backend by name (`hf`, `vllm`), so the controller never imports
a backend. Prompts are split into contiguous chunks of equal size, one per worker, each told
its first prompt's index (`SamplingParams.prompt_offset`): vLLM seeds every request from
(seed, prompt index, sample), so its samples do not depend on the number of replicas; the HF
backend seeds per call and chunk, so its samples are reproducible for a fixed worker count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from nemo_rlvr.dispatch import call, is_alive, resolve
from nemo_rlvr.types import Prompt, Sample, SamplingParams


def make_backend(backend: str, model_path: str, **kwargs: Any):
    """Construct a generator backend by name (imports only the one asked for)."""
    match backend:
        case "hf":
            from nemo_rlvr.rollout.hf import HFGenerator

            return HFGenerator(model_path, dtype=kwargs.get("dtype", "float32"))
        case "vllm":
            from nemo_rlvr.rollout.vllm import VLLMGenerator

            return VLLMGenerator(model_path, **kwargs)
    raise ValueError(f"generation.backend={backend!r}: expected one of hf, vllm")


class GeneratorWorker:
    """What runs inside one generator actor: a backend plus weight-ref resolution."""

    def __init__(self, backend: str, model_path: str, num_threads: int = 1, **kwargs: Any):
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        self.backend = make_backend(backend, model_path, **kwargs)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Sample]:
        return self.backend.generate(prompts, sampling)

    def load_weights(self, buckets: list[Any]) -> dict[str, float]:
        return self.backend.load_weights(resolve(list(buckets)))  # ObjectRefs -> WeightBuckets

    # vLLM's weight-sync client calls (weights/transfer.py drives them from learner rank 0)
    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.backend.init_weight_transfer_engine(init_info)

    def start_weight_update(self) -> None:
        self.backend.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> dict[str, float]:
        return self.backend.update_weights(update_info)

    def finish_weight_update(self) -> None:
        self.backend.finish_weight_update()

    def sleep(self) -> None:
        self.backend.sleep()

    def wake(self, tags: list[str] | None = None) -> None:
        self.backend.wake(tags)

    def pid(self) -> int:
        return os.getpid()


class GeneratorGroup:
    """Fans generate/load_weights out to workers; implements the Generator protocol.

    `respawn(i)` (Ray runs; build.py) starts a fresh worker i in the dead one's place:
    `restart_dead()` finds the dead replicas by a call each and replaces them; the caller then
    reconnects the weight transfer and pushes the weights (controller.py)."""

    def __init__(self, workers: list[Any], respawn: Callable[[int], Any] | None = None):
        self.workers = workers
        self.respawn = respawn

    def restart_dead(self) -> list[int]:
        """Replace every dead worker (Ray actors only); returns their indices."""
        dead = [i for i, w in enumerate(self.workers) if not is_alive(w)]
        if dead and self.respawn is None:
            raise RuntimeError(f"generator replicas {dead} died and this group cannot start new ones")
        for i in dead:
            self.workers[i] = self.respawn(i)
        return dead

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Sample]:
        k = min(len(self.workers), len(prompts))
        bounds = [len(prompts) * r // k for r in range(k + 1)]
        futures = [call(w, "generate", list(prompts[bounds[r]:bounds[r + 1]]),
                        replace(sampling, prompt_offset=sampling.prompt_offset + bounds[r]))
                   for r, w in enumerate(self.workers[:k])]
        out: list[Sample] = []
        for r, fut in enumerate(futures):
            out.extend(replace(s, group_id=s.group_id + bounds[r]) for s in resolve(fut))
        return out

    def load_weights(self, buckets: list[Any]) -> dict[str, float]:
        """One control call per worker; every worker reads the same buckets."""
        futures = [call(w, "load_weights", buckets) for w in self.workers]
        results = [resolve(f) for f in futures]
        return results[0] if results else {}

    def sleep(self) -> None:
        for fut in [call(w, "sleep") for w in self.workers]:
            resolve(fut)

    def wake(self, tags: list[str] | None = None) -> None:
        """vLLM's `wake_up(tags)`: "weights" first (they can then be updated), "kv_cache" last; None: both."""
        for fut in [call(w, "wake", tags) for w in self.workers]:
            resolve(fut)
