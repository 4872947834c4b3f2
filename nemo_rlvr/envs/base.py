"""Environment protocol, the `Score` record, and the registry users extend.

An environment scores samples. It never raises into the controller: a crash, hang
or bad output becomes reward 0 with `error` set (DESIGN.md). Scoring a single
record is a pure function of (response text, env fields), so the verifier pool can
run it in worker processes; `score_record` is that function.

Users add environments from their own module (`env.module=my_pkg.my_env`):

    from nemo_rlvr.envs.base import register_env

    @register_env("my_env")
    class MyEnv:
        name = "my_env"
        def score_record(self, response: str, fields: Mapping[str, Any]) -> Score: ...
        def score(self, samples): return [self.score_record(s.text, s.fields) for s in samples]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from nemo_rlvr.rollout.base import Sample


@dataclass(frozen=True)
class Score:
    """What a verifier says about one sample."""

    reward: float
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    """None when scoring worked; otherwise why the reward is 0 (timeout, crash, bad input)."""


class Environment(Protocol):
    name: str

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        """Score one response against its env fields; must not raise for bad responses."""
        ...

    def score(self, samples: Sequence[Sample]) -> list[Score]:  # len(out) == len(samples)
        ...


E = TypeVar("E")
ENVIRONMENTS: dict[str, type] = {}


def register_env(name: str) -> Callable[[type[E]], type[E]]:
    """Class decorator: make an environment available as `env.name=<name>`."""

    def deco(cls: type[E]) -> type[E]:
        ENVIRONMENTS[name] = cls
        return cls

    return deco


class UnknownEnvError(ValueError):
    pass


def load_builtin_envs() -> None:
    """Import the built-in environment modules so they register themselves."""
    import nemo_rlvr.envs  # noqa: F401  (its __init__ imports the built-ins)


def get_env(name: str, module: str | None = None, **kwargs: Any) -> Environment:
    """Instantiate a registered environment; `module` is imported first (user plug-ins)."""
    load_builtin_envs()
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UnknownEnvError(
                f"env.module={module!r} could not be imported ({e}). Give an importable "
                f"module path (e.g. my_pkg.my_env) on PYTHONPATH that calls @register_env."
            ) from None
    if name not in ENVIRONMENTS:
        raise UnknownEnvError(
            f"env.name={name!r} is not a registered environment; known: "
            f"{', '.join(sorted(ENVIRONMENTS))}. Register your own with @register_env and "
            f"point env.module at its module."
        )
    return ENVIRONMENTS[name](**kwargs)


def score_safely(env: Environment, response: str, fields: Mapping[str, Any]) -> Score:
    """Run `env.score_record`, turning any exception into reward 0 with `error` set."""
    try:
        out = env.score_record(response, fields)
    except Exception as e:  # a verifier never raises into the controller
        return Score(0.0, {}, f"{type(e).__name__}: {e}")
    return out
