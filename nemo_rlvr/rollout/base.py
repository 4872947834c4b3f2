"""Generator protocol and the records that cross it: `Sample` and `SamplingParams`.

A generator turns prompts into samples: prompt token ids, response token ids, and
the per-token log-probability the generator assigned to each sampled token,
`log_softmax(logits / temperature)` in fp32 (DESIGN.md, "Numerics are the product").
Every backend (hf.py, vllm.py) returns exactly these records and passes the shared
contract suite in tests/integration/test_generator_contract.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class Prompt:
    """One prompt to sample from: its text, token ids, env name and env fields."""

    text: str
    token_ids: list[int]
    env: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Env fields carried to the verifier untouched (math `answer`, code `tests`, ...)."""
    uid: int = 0
    """Stable id of the prompt in its dataset (for logging and sample tables)."""


@dataclass(frozen=True)
class Sample:
    """One sampled response; the unit the verifier scores and the learner trains on."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    """Generator log-prob of each response token, len == len(response_ids)."""
    text: str
    """Decoded response (special tokens removed)."""
    finish_reason: FinishReason
    group_id: int
    """Samples of one prompt share a group id (GRPO baselines are per group)."""
    env: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    prompt_text: str = ""
    uid: int = 0


@dataclass(frozen=True)
class SamplingParams:
    """What a generate call samples with; greedy when temperature == 0."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    stop: tuple[str, ...] = ()
    seed: int = 0
    """Per-call seed: the same prompts, weights and seed give the same samples."""


@dataclass(frozen=True)
class WeightBucket:
    """A contiguous flat buffer holding several parameters, for bucketed weight sync.

    `data` is a 1-D tensor or numpy array (numpy travels zero-copy through Ray's
    shared-memory object store); `names/shapes/offsets` locate each parameter in it.
    Packing and reading: rollout/weight_sync.py.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    """Start of each parameter in `data`, in elements."""
    dtype: str
    data: Any



class Generator(Protocol):
    """A rollout backend. One object may front several Ray actors (see rollout/group.py)."""

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Sample]:
        """Return len(prompts) * sampling.n samples, prompt-major, group_id = prompt index."""
        ...

    def load_weights(self, buckets: Sequence[WeightBucket]) -> None:
        """Replace the policy weights (HF parameter names) in place."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory (colocated mode); a no-op where unsupported."""
        ...

    def wake(self) -> None:
        """Take accelerator memory back before the next generate."""
        ...
