"""Cores follow the phases: on a CPU-only machine each role's actors share all the cores."""

from __future__ import annotations

import os

from nemo_rlvr.build import phase_threads
from nemo_rlvr.config import load_config


def test_each_role_shares_all_cores_between_its_actors(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    one = load_config(None, [])
    assert phase_threads(one, use_gpu=False) == (cores, cores)     # 1 generator, then 1 learner
    two = load_config(None, ["generation.num_workers=2", "learner.num_workers=2", "cluster.num_cpus=64"])
    # logical Ray CPUs (cluster.num_cpus) do not count: the machine's cores are shared
    assert phase_threads(two, use_gpu=False) == (max(1, cores // 2), max(1, cores // 2))
    assert phase_threads(two, use_gpu=True) == (0, 0)               # GPUs: threads left alone


def test_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # e.g. tests/conftest.py, and the resume tests' runs
    two = load_config(None, ["generation.num_workers=2", "learner.num_workers=2"])
    assert phase_threads(two, use_gpu=False) == (1, 1)
