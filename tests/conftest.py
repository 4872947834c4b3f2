"""Shared test setup: repo on sys.path, `gpu` tests skipped without CUDA, `sandbox` tests skipped
without the sandbox (a failure under NEMO_RLVR_REQUIRE_SANDBOX=1, as in CI), the tiny model fixture."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")   # tests share 2 cores with Ray actors and sandboxes
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SANDBOX_MODES = ("namespaces", "userns", "rlimits")
REQUIRE_SANDBOX = os.environ.get("NEMO_RLVR_REQUIRE_SANDBOX") == "1"  # scripts/test.sh sets it on Linux


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sandbox(isolated=True, process_cap=None): runs code in the sandbox; isolated: needs its "
        "Linux namespaces (not only mode 'rlimits'); process_cap: needs that kind of cap. Skipped where the "
        "sandbox lacks it, a failure with NEMO_RLVR_REQUIRE_SANDBOX=1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A cached tiny Qwen2 + tokenizer folder (no warm start), built once per session."""
    from nemo_rlvr.config import DataConfig, ModelConfig
    from nemo_rlvr.models.tiny import tiny_model_dir as build

    cache = os.environ.get("NEMO_RLVR_CACHE") or str(tmp_path_factory.mktemp("cache"))
    return str(build(ModelConfig(cache_dir=cache), DataConfig(), seed=0))


def sandbox_missing(mode: str | None, isolated: bool = True, process_cap: str | None = None) -> str | None:
    """Why the sandbox (in `mode`, else the strongest mode here) cannot run a test, or None.
    `isolated` applies to the strongest mode only: a test given a mode asks for that mode."""
    from nemo_rlvr.envs.sandbox import SandboxError, capabilities

    try:
        caps = capabilities(mode)
    except SandboxError as e:
        return f"mode {mode!r}: {e}" if mode else str(e)
    if isolated and mode is None and caps.mode == "rlimits":
        return f"needs the sandbox's Linux namespaces, but only mode 'rlimits' works here: {caps.warning}"
    if process_cap and caps.process_cap != process_cap:
        return f"needs process_cap={process_cap!r}; sandbox mode {caps.mode!r} has {caps.process_cap!r}"
    return None


def pytest_runtest_setup(item):
    """`sandbox` tests, and each `sandbox_mode`: skip (or fail, when required) where it cannot run."""
    marker = item.get_closest_marker("sandbox")
    mode = item.callspec.params.get("sandbox_mode") if hasattr(item, "callspec") else None
    if marker is None and mode is None:
        return
    why = sandbox_missing(mode, **(marker.kwargs if marker else {}))
    if why is None:
        return
    if REQUIRE_SANDBOX and mode is None:  # one mode may not work (e.g. 'namespaces' without root)
        pytest.fail(f"NEMO_RLVR_REQUIRE_SANDBOX=1 (scripts/test.sh on Linux) and the sandbox cannot run this "
                    f"test: {why}\nGive it what it needs (see docs/sandbox.md), or set "
                    f"NEMO_RLVR_REQUIRE_SANDBOX=0 to skip the sandbox tests.", pytrace=False)
    pytest.skip(why)


@pytest.fixture(params=SANDBOX_MODES)
def sandbox_mode(request) -> str:
    """Each sandbox mode in turn; one that does not work here is skipped, with why (never required)."""
    return request.param
