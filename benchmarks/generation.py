"""Generation throughput: our in-loop path vs a standalone vLLM engine on the same prompts.

    python benchmarks/generation.py [--model tiny|smollm2|PATH] [--prompts 32] [--n 8]
                                    [--max-new-tokens 32] [--reps 3] [--write-results]

    standalone  vllm.LLM.generate(prompts, SamplingParams(n=G)), no seed, no log-probs, in its
                own Ray actor, returning only a token count: what vLLM does on its own
    in-loop     VLLMGenerator.generate in a Ray actor, as the controller calls it: one request
                per sample with its own seed, processed log-probs of every token, Sample
                records decoded and shipped back through Ray
Both engines are built alike (fp32, enforce_eager, in-process, 1 GiB KV cache) from the
same folder. Throughput = generated tokens / wall seconds (median of `--reps` after a
warm-up); ratio = in-loop / standalone (1.0 = no overhead).
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

from benchmarks.weight_sync import append_results, model_dir  # noqa: E402


def make_prompts(tok, k: int, chat: bool) -> list[list[int]]:
    rng = random.Random(0)
    texts = [f"{rng.randrange(100)}+{rng.randrange(100)}=" for _ in range(k)]
    if chat and tok.chat_template:
        return [tok.apply_chat_template([{"role": "user", "content": f"What is {t[:-1]}?"}],
                                        add_generation_prompt=True, tokenize=True, return_dict=False)
                for t in texts]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


class StandaloneEngine:
    """A plain vllm.LLM built like VLLMGenerator's engine (runs in its own Ray actor)."""

    def __init__(self, path: str):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        from nemo_rlvr.rollout.vllm import default_max_model_len

        self.llm = LLM(model=path, dtype="float32", enforce_eager=True, distributed_executor_backend="uni",
                       kv_cache_memory_bytes=1 << 30, seed=0, max_model_len=default_max_model_len(path))

    def prompts(self, k: int, chat: bool) -> list[list[int]]:
        return make_prompts(self.llm.get_tokenizer(), k, chat)

    def generate(self, ids: list[list[int]], n: int, max_new_tokens: int) -> int:
        from vllm import SamplingParams, TokensPrompt

        sp = SamplingParams(n=n, temperature=1.0, max_tokens=max_new_tokens)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], sp, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()

    import ray

    from nemo_rlvr.rollout.vllm import VLLMGenerator
    from nemo_rlvr.types import Prompt, SamplingParams

    load0 = os.getloadavg()[0]
    path = model_dir(args.model)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ours = ray.remote(num_cpus=1)(VLLMGenerator).remote(path, kv_cache_gb=1)
    plain = ray.remote(num_cpus=1)(StandaloneEngine).remote(path)
    ids = ray.get(plain.prompts.remote(args.prompts, args.model == "smollm2"))
    prompts = [Prompt(text="", token_ids=x, env="bench") for x in ids]

    def standalone() -> int:
        return ray.get(plain.generate.remote(ids, args.n, args.max_new_tokens))

    def in_loop(seed: int) -> int:
        sp = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=seed)
        return sum(len(s.response_ids) for s in ray.get(ours.generate.remote(prompts, sp)))

    rates: dict[str, list[float]] = {"standalone": [], "in-loop": []}
    for rep in range(args.reps + 1):  # interleaved, so load from elsewhere hits both alike
        for name, fn in (("standalone", standalone), ("in-loop", lambda: in_loop(rep))):
            t0 = time.perf_counter()
            tokens = fn()
            dt = time.perf_counter() - t0
            if rep:
                rates[name].append(tokens / dt)
    med = {k: statistics.median(v) for k, v in rates.items()}
    lines = [
        f"[load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end] "
        f"generation, {args.model} fp32, {args.prompts} prompts x n={args.n}, <= {args.max_new_tokens} new "
        f"tokens, T=1, median of {args.reps}:",
        f"  standalone vllm.LLM (n={args.n}, no logprobs): {med['standalone']:.0f} tokens/s",
        f"  in-loop VLLMGenerator in a Ray actor:      {med['in-loop']:.0f} tokens/s",
        f"  ratio in-loop / standalone: {med['in-loop'] / med['standalone']:.2f}",
    ]
    print("\n".join(lines))
    ray.shutdown()
    if args.write_results:
        append_results(f"generation_{args.model}", lines)


if __name__ == "__main__":
    main()
