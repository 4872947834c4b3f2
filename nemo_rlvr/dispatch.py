"""Call a worker that is either a Ray actor handle or a plain local object.

The controller and the groups use `call` + `resolve`, so the same code drives Ray
actors in training and plain objects in tests and GPU benchmarks run without Ray.
"""

from __future__ import annotations

from typing import Any


def is_actor(obj: Any) -> bool:
    try:
        from ray.actor import ActorHandle
    except ImportError:  # ray is optional for local use
        return False
    return isinstance(obj, ActorHandle)


def call(obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Start `obj.method(*args)`: a Ray ObjectRef for an actor, the value for a local object."""
    if is_actor(obj):
        return getattr(obj, method).remote(*args, **kwargs)
    return getattr(obj, method)(*args, **kwargs)


def resolve(value: Any) -> Any:
    """Wait for ObjectRefs (one or a list); plain values pass through."""
    try:
        import ray
    except ImportError:
        return value
    if isinstance(value, ray.ObjectRef):
        return ray.get(value)
    if isinstance(value, list) and value and all(isinstance(v, ray.ObjectRef) for v in value):
        return ray.get(value)
    return value


def is_actor_death(e: BaseException) -> bool:
    """A Ray actor died (killed, OOM, lost node), or a call to it could not complete because of it."""
    try:
        from ray.exceptions import RayActorError
    except ImportError:
        return False
    return isinstance(e, RayActorError)


def is_alive(obj: Any, timeout_s: float = 10.0) -> bool:
    """False for a Ray actor that has died (a local object is always alive). Calls its `pid`."""
    if not is_actor(obj):
        return True
    import ray

    try:
        ray.get(obj.pid.remote(), timeout=timeout_s)
        return True
    except ray.exceptions.RayActorError:
        return False


def resolve_all(values: list[Any]) -> list[Any]:
    """Wait for every value of `values` (ObjectRefs or plain values), failing fast: the first
    actor that fails or dies raises at once, even while the others still wait for it (ranks stuck
    in a collective with a dead peer would otherwise block `ray.get` until their timeout)."""
    try:
        import ray
    except ImportError:
        return list(values)
    refs = [v for v in values if isinstance(v, ray.ObjectRef)]
    pending = refs
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)  # raises the first failure
    got = iter(ray.get(refs)) if refs else iter(())
    return [next(got) if isinstance(v, ray.ObjectRef) else v for v in values]


def put_all(values: list[Any]) -> list[Any]:
    """Put values into Ray's object store when running inside Ray; else return them as is."""
    try:
        import ray
    except ImportError:
        return values
    if not ray.is_initialized():
        return values
    return [ray.put(v) for v in values]
