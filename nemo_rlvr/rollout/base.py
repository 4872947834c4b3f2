"""Generator protocol: what every generation backend (hf.py, vllm.py) implements.

A generator turns prompts into samples: prompt token ids, response token ids, and
the per-token log-probability the generator assigned to each sampled token,
`log_softmax(logits / temperature)` in fp32 (DESIGN.md, "Numerics are the product").
Every backend (hf.py, vllm.py) returns exactly these records and passes the shared
contract suite in tests/integration/test_generator_contract.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from nemo_rlvr.types import Prompt, Sample, SamplingParams, WeightBucket


class Generator(Protocol):
    """A rollout backend. One object may front several Ray actors (see rollout/group.py)."""

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Sample]:
        """Return len(prompts) * sampling.n samples, prompt-major, group_id = prompt index."""
        ...

    def load_weights(self, buckets: Sequence[WeightBucket]) -> dict[str, float]:
        """Replace the policy weights (HF parameter names) in place; returns `weight_sync/*` metrics."""
        ...

    # The receive side of vLLM's weight-transfer handshake (weights/transfer.py sends):
    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        """Join the learner's transfer group (vLLM's `NCCLWeightTransferInitInfo` keys)."""
        ...

    def start_weight_update(self) -> None: ...

    def update_weights(self, update_info: dict[str, Any]) -> dict[str, float]:
        """Receive one update (names, dtype_names, shapes) while the learner sends it."""
        ...

    def finish_weight_update(self) -> None: ...

    def sleep(self) -> None:
        """Free accelerator memory (colocated mode); a no-op where unsupported."""
        ...

    def wake(self, tags: list[str] | None = None) -> None:
        """Take accelerator memory back: tags ["weights"] before a weight update, ["kv_cache"]
        before the next generate (vLLM's `wake_up` tags); None: all of it."""
        ...
