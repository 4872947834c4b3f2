"""Records that cross part boundaries: prompts, samples, sampling settings, scores, weight buckets.

Every part may import this module; it imports nothing of ours (tests/unit/test_layering.py
holds both rules). A generator turns `Prompt`s into `Sample`s with `SamplingParams`; an
environment turns a sample's text and fields into a `Score`; the learner exports its
weights as `WeightBucket`s that the generators load (DESIGN.md, "Contracts between the parts").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
    response_mask: list[bool] | None = None
    """Multi-turn episodes: True on the model's own tokens of `response_ids`, False on the
    environment's (tool answers, chat-template markers); None: every response token is the model's."""


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
    prompt_offset: int = 0
    """Index of this call's first prompt in the whole step's prompts, when a generator group
    splits a step across replicas: vLLM seeds each request from (seed, offset + prompt, sample),
    so its samples do not depend on how prompts are spread."""


@dataclass(frozen=True)
class Score:
    """What a verifier says about one sample."""

    reward: float
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    """None when scoring worked; otherwise why the reward is 0 (timeout, crash, bad input)."""


@dataclass(frozen=True)
class WeightBucket:
    """A contiguous flat buffer holding several parameters, for bucketed weight sync.

    `data` is a 1-D numpy array (numpy travels zero-copy through Ray's shared-memory object
    store), or a 1-D torch tensor;
    `names/shapes/offsets` locate each parameter in it. Packing and reading: nemo_rlvr/weights/.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    """Start of each parameter in `data`, in elements."""
    dtype: str
    data: Any
