"""Environment protocol, the registry users extend (`register_env`), and the cores one sample may use.

An environment scores one response against its record's env fields:
`score_record(response, fields) -> Score`. It imports no rollout, learner or scoring
code; batching, worker processes, time limits and crash isolation are the caller's
(nemo_rlvr/scoring/); looking environments up by name and checking their options is
envs/registry.py. `score_record` should not raise for a bad response (reward 0 with
`error` set); if it does anyway, the scorer turns the exception into reward 0 with `error`.

Users add environments from their own module (`env.module=my_pkg.my_env`):

    from nemo_rlvr.envs.base import Score, register_env

    @register_env("my_env")
    class MyEnv:
        name = "my_env"
        fields = {"answer": FieldSpec((str,), "the reference answer, a string")}
        def score_record(self, response: str, fields: Mapping[str, Any]) -> Score: ...

`fields` (optional) declares the record fields the environment reads: their JSON types and,
in words, what they should hold. A static `check_fields(fields) -> str | None` (optional)
checks deeper (a schema that parses, a known task name). Datasets are checked against both
when they are loaded (data/checks.py), so a record lacking its env's fields fails before
training instead of scoring 0 on every step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from nemo_rlvr.types import Score

__all__ = ["ENVIRONMENTS", "Environment", "FieldSpec", "Score", "cores_per_sample", "register_env"]


class Environment(Protocol):
    name: str

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        """Score one response against its env fields; should not raise for bad responses."""
        ...


@dataclass(frozen=True)
class FieldSpec:
    """One record field an environment reads (the class attribute `fields` maps names to these)."""

    types: tuple[type, ...]
    """Accepted Python types of the JSON value: str, int, float, bool, list, dict (an int is never a
    bool; float also accepts an int)."""
    expect: str
    """What the field should hold, in words, for error messages ("a non-empty list of ...")."""
    required: bool = True
    """False: the field may be absent or null."""


E = TypeVar("E")
ENVIRONMENTS: dict[str, type] = {}


def register_env(name: str) -> Callable[[type[E]], type[E]]:
    """Class decorator: make an environment available as `env.name=<name>`."""

    def deco(cls: type[E]) -> type[E]:
        ENVIRONMENTS[name] = cls
        return cls

    return deco


_POOL_WORKERS = 0
"""In a verifier pool worker: how many workers share this machine's cores (0: not a worker)."""


def set_pool_workers(n: int) -> None:
    """Called by a pool worker before it builds envs (see `cores_per_sample`)."""
    global _POOL_WORKERS
    _POOL_WORKERS = n


def cores_per_sample() -> int:
    """CPU cores the scoring of one sample may use for parallel work of its own (the code env's
    tests side by side): all usable cores in the controller or CLI process, an equal share of
    them in a verifier pool worker, so N workers on N cores do not oversubscribe them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // _POOL_WORKERS) if _POOL_WORKERS else cores
