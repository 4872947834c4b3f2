"""Every GPU path of the training loop in one short run: one line per path, for a lent GPU.

    .venv/bin/python benchmarks/gpu_smoke.py [--only NAME ...] [--steps 3]

Each path is a real `nemo-rlvr train` run (build_run + controller.train, Ray actors) of the tiny
recipe on the GPUs, for a few steps; it passes when every step after the first had its samples
generated with the weights the learner just sent (`train/logprob_mismatch_max` below the path's
tolerance: a sync that did not land leaves the previous step's weights, a mismatch of ~1e-1) and
the loop reported a weight sync of the model's size.

    path                 GPUs  what runs
    hf_object_store      1     HF generator, buckets through Ray's object store (no vLLM needed)
    learner_fsdp_2       2     2 FSDP2 learner ranks (NCCL) + HF generator, object store
    vllm_ipc_colocated   1     vLLM generator sharing the learner's GPU: sleep(level=1) while the
                               learner trains, optimizer state offloaded while it generates, weights
                               through vLLM's IPC engines
    vllm_nccl_split      2     vLLM generator on its own GPU, vLLM's NCCL engines (packed broadcast)
    vllm_nccl_tp2        3     a TP=2 vLLM generator (vLLM's Ray executor on our placement group's
                               bundles) + 1 learner rank, NCCL into both TP ranks

A path whose needs are missing (GPUs, vLLM) prints SKIP with the reason; the exit status is 1 if
any path FAILed. Numbers are per machine: write them into benchmarks/RESULTS.md with the card.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PATHS: dict[str, dict] = {
    "hf_object_store": {"gpus": 1, "vllm": False, "tol": 2e-3, "overrides": [
        "generation.backend=hf", "cluster.placement=split"]},
    "learner_fsdp_2": {"gpus": 3, "vllm": False, "tol": 2e-3, "overrides": [
        "generation.backend=hf", "cluster.placement=split", "learner.num_workers=2"]},
    "vllm_ipc_colocated": {"gpus": 1, "vllm": True, "tol": 2e-3, "overrides": [
        "generation.backend=vllm", "cluster.placement=colocated", "generation.gpu_memory_utilization=0.3"]},
    "vllm_nccl_split": {"gpus": 2, "vllm": True, "tol": 2e-3, "overrides": [
        "generation.backend=vllm", "cluster.placement=split", "generation.gpu_memory_utilization=0.3"]},
    "vllm_nccl_tp2": {"gpus": 3, "vllm": True, "tol": 2e-3, "overrides": [
        "generation.backend=vllm", "cluster.placement=split", "generation.tensor_parallel_size=2",
        "generation.gpu_memory_utilization=0.3"]},
}
"""tol: fp32 on a GPU; vLLM's kernels and the learner's differ in summation order (~1e-5 seen
on CPU), a stale-weights step is ~1e-1."""


def expected_transfer(name: str) -> str:
    return {"vllm_ipc_colocated": "ipc", "vllm_nccl_split": "nccl", "vllm_nccl_tp2": "nccl"}.get(name,
                                                                                                  "object_store")


def run_path(name: str, *, steps: int, out: Path) -> str:
    """Run one path; returns its one-line result (PASS / SKIP / FAIL ...)."""
    import torch

    spec = PATHS[name]
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < spec["gpus"]:
        return f"SKIP {name}: needs {spec['gpus']} GPU(s), this machine has {have}"
    if spec["vllm"] and importlib.util.find_spec("vllm") is None:
        return f"SKIP {name}: vLLM is not installed (pip install -e '.[vllm]')"
    if importlib.util.find_spec("ray") is None:
        return f"SKIP {name}: Ray is not installed"
    import ray

    from nemo_rlvr.build import build_run, transfer_backend
    from nemo_rlvr.config import load_config
    from nemo_rlvr.controller import train

    cfg = load_config(REPO / "recipes" / "tiny_cpu.yaml", [
        *spec["overrides"], f"output_dir={out}", f"name={name}", f"train.steps={steps}",
        "train.prompts_per_step=8", "validation.every_steps=0", "validation.at_start=false",
        "checkpoint.export_hf=false", "checkpoint.resume=never", "checkpoint.every_steps=0",
        "algorithm.kl_coef=0", "learner.lr=1e-3"])
    t0 = time.perf_counter()
    try:
        run = build_run(cfg)
        try:
            train(run)
        finally:
            run.logger.close()
            run.scorer.close()
        rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "train/reward_mean" in r]
        worst = max(r["train/logprob_mismatch_max"] for r in rows[1:])
        sync = rows[-1]
        backend = transfer_backend(cfg, use_gpu=True)
        ok = (worst < spec["tol"] and len(rows) == steps and backend == expected_transfer(name)
              and sync.get("weight_sync/bytes", 0) > 0)
        line = (f"{'PASS' if ok else 'FAIL'} {name}: transfer={backend}, {len(rows)} steps, "
                f"max logprob mismatch after a sync {worst:.2e} (tol {spec['tol']:g}), "
                f"weight sync {sync.get('timing/weight_sync', float('nan')):.3f} s for "
                f"{sync.get('weight_sync/bytes', 0) / 2**20:.1f} MiB, step {sync['timing/step']:.2f} s, "
                f"wall {time.perf_counter() - t0:.0f} s")
    except Exception as e:  # one path's failure must not hide the others
        traceback.print_exc()
        line = f"FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        ray.shutdown()
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(PATHS), help="run these paths only")
    ap.add_argument("--steps", type=int, default=3, help="RL steps per path (at least 2)")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2: the check needs a step after a sync")
    lines = []
    with tempfile.TemporaryDirectory(prefix="nemo-rlvr-gpu-smoke-") as tmp:
        for name in args.only or list(PATHS):
            lines.append(run_path(name, steps=args.steps, out=Path(tmp)))
            print(lines[-1], flush=True)
    return 1 if any(x.startswith("FAIL") for x in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
