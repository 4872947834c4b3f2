"""Learner throughput and memory: tokens/s and peak memory per rank, packing on/off, chunked vs
naive log-probs, 1 or more ranks. No Ray: one process, or one per rank under torchrun.

    python benchmarks/learner.py [--model tiny|smollm2|PATH] [--device cpu|cuda] [--steps 3]
    python benchmarks/learner.py --model smollm2 --ranks 2                  # 2 ranks (FSDP2, gloo)
    python benchmarks/learner.py --model PATH --device cuda --dtype bfloat16 --ranks 8

Each configuration runs in fresh processes (one, or `--ranks` under torchrun: the command is
`torchrun --nproc-per-node R benchmarks/learner.py ... --one CONFIG`) and builds a `PolicyWorker` (the learner's real code path: FSDP2 when
several ranks or CUDA, token-budget micro-batches, chunked log-probs), then times `--steps`
on-policy training steps (one forward + backward + AdamW step each, after one warm-up step) on a
synthetic GRPO batch: `--samples` sequences, prompts of 32-128 tokens and responses of
16-`--max-response` tokens (uniform; 512 by default), as a math recipe produces. Reported per rank (rank 0 prints):
    tokens/s    real (non-padding) tokens trained per second, whole batch / step time
    peak MiB    CUDA: torch.cuda.max_memory_allocated over the timed steps; CPU: the process's
                peak resident memory (ru_maxrss, warm-up step included) above its memory once the
                model is loaded (so AdamW state counts); the largest rank
    MFU         CUDA only: 6 x parameters x tokens/s / (ranks x --peak-tflops)
and the ratios packing on / off and chunked / naive log-probs from the same run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nemo_rlvr.config import AlgorithmConfig, LearnerConfig  # noqa: E402
from nemo_rlvr.learner.distributed import init_from_env  # noqa: E402
from nemo_rlvr.learner.packing import collate  # noqa: E402
from nemo_rlvr.learner.policy import PolicyWorker  # noqa: E402
from nemo_rlvr.types import Sample  # noqa: E402


def synthetic_batch(vocab: int, n: int, seed: int, prompt=(32, 128), response=(16, 512)):
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        p = [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt))]
        r = [rng.randrange(3, vocab) for _ in range(rng.randint(*response))]
        samples.append(Sample(p, r, [-2.0] * len(r), "", "stop", i // 8, "bench"))
    adv = torch.tensor([rng.choice([-1.0, 1.0]) for _ in range(n)])
    return collate(samples, adv, pad_id=0)


CONFIGS = {"packed-chunked": (True, None), "padded-chunked": (False, None), "packed-naive": (True, 0)}
"""name -> (sequence_packing, logprob_chunk_tokens; None: --chunk)."""


def run_one(args: argparse.Namespace) -> None:
    """One configuration in this process group (launched by `main`); rank 0 prints a JSON line."""
    import json
    import resource

    import psutil

    from benchmarks.weight_sync import model_dir

    rank, world, device = init_from_env(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    path = model_dir(args.model)
    vocab = json.loads((pathlib.Path(path) / "config.json").read_text())["vocab_size"]
    batch = synthetic_batch(vocab, args.samples, seed=0, response=(16, args.max_response))
    packed, chunk = CONFIGS[args.one]
    cfg = LearnerConfig(lr=1e-6, max_tokens_per_microbatch=args.budget, sequence_packing=packed,
                        logprob_chunk_tokens=args.chunk if chunk is None else chunk, dtype=args.dtype)
    worker = PolicyWorker(path, learner=cfg, algorithm=AlgorithmConfig(), temperature=1.0, device=str(device))
    params = int(sum(p.full_tensor().numel() if hasattr(p, "full_tensor") else p.numel()
                     for p in worker.model.parameters()))
    base = psutil.Process().memory_info().rss
    worker.train(batch)  # warm-up (allocator, kernels, lazy FSDP init, AdamW state)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        worker.train(batch)
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # ru_maxrss is KiB on Linux: the process's peak, warm-up included, above the loaded model
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    peak_t = torch.tensor([float(peak)], device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak_t, op=torch.distributed.ReduceOp.MAX)
    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
        print("RESULT " + json.dumps({"tokens_per_s": int(batch.attention_mask.sum()) / dt,
                                      "peak_mib": peak_t.item() / 2**20, "params": params, "device": name,
                                      "tokens": int(batch.attention_mask.sum()),
                                      "padded": batch.attention_mask.numel()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | a HF folder")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--ranks", type=int, default=1, help="learner ranks (torchrun processes)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=32, help="sequences per step")
    ap.add_argument("--max-response", type=int, default=512, help="response lengths are 16..this, uniform")
    ap.add_argument("--budget", type=int, default=8192, help="learner.max_tokens_per_microbatch")
    ap.add_argument("--chunk", type=int, default=2048, help="learner.logprob_chunk_tokens (chunked rows)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="per GPU (H100/H200 bf16 dense)")
    ap.add_argument("--reps", type=int, default=2, help="runs of each configuration, in alternating order")
    ap.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return run_one(args)
    import json
    import subprocess

    from benchmarks.weight_sync import model_dir

    model_dir(args.model)  # build / convert the folder once, before the ranks start
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    order = list(CONFIGS)
    for rep in range(args.reps):  # alternate the order (A B C, C B A, ...): drift hits all alike
        for name in order if rep % 2 == 0 else order[::-1]:
            launch = [sys.executable] if args.ranks == 1 and args.device == "cpu" else \
                [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.ranks}"]
            cmd = [*launch, __file__, *sys.argv[1:], "--one", name]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode or line is None:
                sys.exit(f"{name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(line.removeprefix("RESULT ")))
    rows = {}
    for name, rs in runs.items():  # median tokens/s and peak over the reps
        rows[name] = {**rs[0], "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                      "peak_mib": statistics.median(r["peak_mib"] for r in rs)}
    first = next(iter(rows.values()))
    print(f"learner benchmark: {args.model} ({first['params'] / 1e6:.1f}M params), {first['device']}, median of "
          f"{args.reps} alternating runs, "
          f"{args.ranks} rank(s), {args.dtype}, {args.samples} sequences = {first['tokens']} real tokens per "
          f"step ({first['padded']} padded), {args.budget} tokens per pass; peak = above the loaded model")
    cuda = args.device == "cuda"
    print(f"{'config':>15} {'tokens/s':>10} {'peak MiB/rank':>14}" + (f" {'MFU':>6}" if cuda else ""))
    for name, r in rows.items():
        mfu = 6 * r["params"] * r["tokens_per_s"] / (args.ranks * args.peak_tflops * 1e12)
        print(f"{name:>15} {r['tokens_per_s']:>10.0f} {r['peak_mib']:>14.0f}" + (f" {mfu:>6.1%}" if cuda else ""))
    a, b, c = rows["packed-chunked"], rows["padded-chunked"], rows["packed-naive"]
    print(f"packing on/off: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
          f"{a['peak_mib'] / max(b['peak_mib'], 1e-9):.2f}x peak memory; chunked/naive log-probs: "
          f"{a['tokens_per_s'] / c['tokens_per_s']:.2f}x tokens/s, {a['peak_mib'] / max(c['peak_mib'], 1e-9):.2f}x "
          f"peak memory")


if __name__ == "__main__":
    main()
