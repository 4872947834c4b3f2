"""Shared test setup: repo on sys.path, `gpu` tests skipped without CUDA, tiny model fixtures."""

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
