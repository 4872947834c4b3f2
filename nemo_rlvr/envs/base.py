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
import inspect
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pydantic

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


def load_builtin_envs() -> None:
    """Import the built-in environment modules so they register themselves."""
    import nemo_rlvr.envs  # noqa: F401  (its __init__ imports the built-ins)


def env_class(name: str, module: str | None = None) -> type:
    """The registered class for `name`; `module` is imported first (user plug-ins)."""
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
    return ENVIRONMENTS[name]


def get_env(name: str, module: str | None = None, **kwargs: Any) -> Environment:
    """Instantiate a registered environment with constructor keyword arguments `kwargs`."""
    return env_class(name, module)(**kwargs)


class EnvOptionError(UnknownEnvError):
    """`env.options` does not fit the environment's constructor; the message names the key."""


def check_env_options(name: str, module: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check `options` against the constructor of env `name` (names, and types where annotated).

    Returns the options as the constructor will get them (e.g. 5 -> 5.0 for a float).
    Raises EnvOptionError naming the option, what the constructor accepts, and the fix, so a
    typo fails before any worker starts instead of scoring every sample 0.
    """
    cls = env_class(name, module)
    signature = inspect.signature(cls).parameters
    params = {k: p for k, p in signature.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.values())
    accepted = ", ".join(f"{k}={p.default!r}" if p.default is not p.empty else k for k, p in params.items())
    unknown = sorted(set(options) - set(params))
    if unknown and not takes_any:
        raise EnvOptionError(
            f"env.options.{unknown[0]}: environment {name!r} has no option {unknown[0]!r}; it accepts "
            f"{accepted or 'no options'}. Fix the key (env.options.KEY=VALUE, or --env-option "
            f"KEY=VALUE on verify/serve-env) or remove it.")
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # unresolvable annotations in a user env: names are checked, types are not
        hints = {}
    out = dict(options)
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            out[key] = pydantic.TypeAdapter(hints[key]).validate_python(value)
        except pydantic.ValidationError as e:
            msg = e.errors()[0]["msg"]
            raise EnvOptionError(f"env.options.{key}={value!r}: {msg} (environment {name!r} takes "
                                 f"{accepted}).") from None
    missing = [k for k, p in params.items() if p.default is p.empty and k not in out]
    if missing:
        raise EnvOptionError(f"env.options: environment {name!r} needs option {missing[0]!r} "
                             f"(it takes {accepted}); set env.options.{missing[0]}=VALUE.")
    return out


def score_safely(env: Environment, response: str, fields: Mapping[str, Any]) -> Score:
    """Run `env.score_record`, turning any exception into reward 0 with `error` set."""
    try:
        out = env.score_record(response, fields)
    except Exception as e:  # a verifier never raises into the controller
        return Score(0.0, {}, f"{type(e).__name__}: {e}")
    return out
