"""Environments by name: the built-ins (imported here, so they register) and user plug-ins
(`env.module`), and checks of `env.options` against an environment's constructor.

    env_class("math")                    -> MathEnv
    env_class("my_env", "my_pkg.envs")   -> imports my_pkg.envs first (it calls @register_env)
    get_env(name, module, **options)     -> an instance
    check_env_options(name, module, options) -> options as the constructor takes them, or
                                            EnvOptionError naming env.options.KEY and the fix
    field_error(cls, fields)             -> why a record's env fields do not fit the env's
                                            declared `fields` / `check_fields`, or None
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Mapping
from typing import Any

import pydantic

from nemo_rlvr.envs import arithmetic, code, instruction, math, multiturn, reasoning_gym, tool_call  # noqa: F401  (register)
from nemo_rlvr.envs.base import ENVIRONMENTS, Environment, FieldSpec


class UnknownEnvError(ValueError):
    pass


def env_class(name: str, module: str | None = None, *, name_key: str = "env.name",
              module_key: str = "env.module") -> type:
    """The registered class for `name`; `module` is imported first (user plug-ins).

    Raises UnknownEnvError when `module` fails to import (for any reason) or `name` is not
    registered; the message names the setting (`name_key`, `module_key`: the config keys,
    or a command's flags) and the fix."""
    if module:
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or the plug-in's own code failing at import
            raise UnknownEnvError(
                f"{module_key} {module!r} could not be imported ({type(e).__name__}: {e}). Give an "
                f"importable module path (e.g. my_pkg.my_env, on PYTHONPATH) whose import registers "
                f"your environment with @register_env.") from None
    if name not in ENVIRONMENTS:
        raise UnknownEnvError(
            f"{name_key} {name!r} is not a registered environment; known: "
            f"{', '.join(sorted(ENVIRONMENTS))}. Pick one of these, or register your own with "
            f"@register_env in a module and name it with {module_key}.")
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


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def json_type(value: Any) -> str:
    """The JSON name of a value's type ("null", "string", "array", ...)."""
    if value is None:
        return "null"
    return next((n for t, n in _JSON_TYPES.items() if type(value) is t), type(value).__name__)


def _fits(value: Any, spec: FieldSpec) -> bool:
    if isinstance(value, bool):
        return bool in spec.types
    if isinstance(value, int) and float in spec.types:
        return True
    return isinstance(value, tuple(t for t in spec.types if t is not bool))


def field_error(cls: type, fields: Mapping[str, Any]) -> str | None:
    """Why `fields` (a record's env fields) do not fit environment `cls`, naming the field and
    what it should hold; None when they fit or the env declares nothing (a plug-in without
    `fields`). Checks the declared `fields` (presence, JSON type), then `check_fields`."""
    specs: Mapping[str, FieldSpec] = getattr(cls, "fields", None) or {}
    for key, spec in specs.items():
        value = fields.get(key)
        if value is None:
            if spec.required:
                how = "is missing" if key not in fields else "is null"
                return f"field {key!r} {how}; expected {spec.expect}"
            continue
        if not _fits(value, spec):
            return f"field {key!r} is a JSON {json_type(value)}; expected {spec.expect}"
    check = getattr(cls, "check_fields", None)
    if check is None:
        return None
    present = {k: v for k, v in fields.items() if not (k in specs and v is None and not specs[k].required)}
    return check(present)
