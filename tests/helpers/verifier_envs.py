"""Test-only environments for the verifier pool, CLI and server tests.

Loaded in worker processes through `env.module="tests.helpers.verifier_envs"` (or
`--env-module`). Each misbehaves on request, driven by the record's env fields.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from nemo_rlvr.envs.base import Score, register_env


class _Base:
    name = ""


@register_env("test_sleep")
class SleepEnv(_Base):
    """Sleeps `sleep_s` (default 0), then rewards 1; a hang when sleep_s is large."""

    name = "test_sleep"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        time.sleep(float(fields.get("sleep_s", 0.0)))
        return Score(1.0, {"slept": float(fields.get("sleep_s", 0.0))})


@register_env("test_crash")
class CrashEnv(_Base):
    """`crash: true` kills the process (os._exit); `crash_once: PATH` does so only while PATH is absent."""

    name = "test_crash"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        if fields.get("crash"):
            os._exit(3)
        marker = fields.get("crash_once")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(4)
        return Score(1.0, {"pid": float(os.getpid())})


@register_env("test_raise")
class RaiseEnv(_Base):
    """Raises ValueError from score_record."""

    name = "test_raise"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        raise ValueError(f"bad response {response!r}")


@register_env("test_echo")
class EchoEnv(_Base):
    """Reward = float(response); cheap, for overhead measurements and order checks."""

    name = "test_echo"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        return Score(float(response), {"len": float(len(response))})


@register_env("test_spin")
class SpinEnv(_Base):
    """Busy-loops `spin` iterations (CPU-bound, holds the GIL), reward 1."""

    name = "test_spin"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        x = 0
        for i in range(int(fields.get("spin", 10_000))):
            x += i * i
        return Score(1.0)


@register_env("test_spawn_sleeper")
class SpawnSleeperEnv(_Base):
    """Starts a child `sleep 60` in its own session (like a sandbox), writes its pid to
    `pid_file`, then hangs: checks that a timeout kills descendants outside the group."""

    name = "test_spawn_sleeper"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        import subprocess

        p = subprocess.Popen(["sleep", "60"], start_new_session=True)
        with open(fields["pid_file"], "w") as f:
            f.write(str(p.pid))
        time.sleep(60)
        return Score(1.0)


@register_env("test_crash_leaving_child")
class CrashLeavingChildEnv(_Base):
    """Starts `sleep 60` in its own process group (appending its pid to `pid_file`), then
    dies: checks that a crashed worker's leftovers are killed too."""

    name = "test_crash_leaving_child"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        import subprocess

        p = subprocess.Popen(["sleep", "60"])
        with open(fields["pid_file"], "a") as f:
            f.write(f"{p.pid}\n")
        os._exit(3)


@register_env("test_scaled")
class ScaledEnv(_Base):
    """Reward = scale * float(response); `tag` goes into the components' key. Takes options."""

    name = "test_scaled"

    def __init__(self, scale: float = 1.0, tag: str = "pid"):
        self.scale, self.tag = scale, tag

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        return Score(self.scale * float(response), {self.tag: float(os.getpid())})


@register_env("test_needs_option")
class NeedsOptionEnv(ScaledEnv):
    """Like test_scaled, but `scale` has no default: env.options must give it."""

    name = "test_needs_option"

    def __init__(self, scale: float, **extra: Any):
        super().__init__(scale)


@register_env("test_cores")
class CoresEnv(_Base):
    """Reports, from inside the scoring process, the cores a sample may use and what a default
    code env picks for max_parallel there."""

    name = "test_cores"

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        from nemo_rlvr.envs.base import cores_per_sample
        from nemo_rlvr.envs.code import CodeEnv

        return Score(1.0, {"cores": float(cores_per_sample()), "max_parallel": float(CodeEnv().max_parallel)})
