"""vLLM generation backend: one `VLLMGenerator` (one engine) inside each generator Ray actor.

It runs vLLM's Python engine (`vllm.LLM`) in the actor's own process (CPU: the
in-process engine, `VLLM_ENABLE_V1_MULTIPROCESSING=0` + the "uni" executor, ~3 s to
start instead of ~20 s) and follows the HF backend's conventions exactly
(rollout/hf.py; tests/integration/test_generator_contract.py): prompts arrive as token
ids, each of the n samples of a prompt is its own request with its own seed derived
from SamplingParams.seed (the same seed gives the same samples), response_ids include
EOS when generated, text is decoded from response_ids with special tokens skipped.

Log-probs are vLLM's `processed_logprobs` of the sampled token: log_softmax(logits / T)
in fp32, the learner's definition (greedy: T = 1). With top_p < 1, vLLM reports the
log-prob under the truncated distribution while the learner cannot: keep top_p = 1
for exact on-policy numerics.

Weights arrive through vLLM's weight-transfer calls (init_weight_transfer_engine /
start_weight_update / update_weights / finish_weight_update), driven by the learner's trainer
engine (weights/transfer.py), into the engine `weight_transfer` names: "gloo" on the CPU
(registered in this process by weights/vllm_engine.py), vLLM's "nccl" (split GPUs) or "ipc"
(colocated GPUs). The prefix cache is reset after each update (its KV was computed with the old
weights). `load_weights` takes buckets instead (Ray's object store; cluster.mode=local on a GPU,
tests, benchmarks): the worker's `reload_weights(weights_iterator=..., is_checkpoint_format=True)`,
and on CPU the tied lm_head's packed copy is rebuilt afterwards (vLLM CPU bug,
shared/notes/vllm-cpu.md).

Tensor parallelism (GPU): with tensor_parallel_size > 1 the engine uses vLLM's Ray executor
inside the run's placement group (the actor is scheduled there with
`placement_group_capture_child_tasks`), on the bundles `bundle_indices` names
(VLLM_RAY_BUNDLE_INDICES): one GPU each, consecutive on one node (cluster.py plans them).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from nemo_rlvr.types import Prompt, Sample, SamplingParams, WeightBucket
from nemo_rlvr.weights.buckets import bucket_nbytes, iter_bucket_tensors

log = logging.getLogger(__name__)
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class ExpectedReloadWarnings(logging.Filter):
    """Drops the two "<Layer>: Failed to load weights" warnings vLLM's layerwise reload logs on every
    weight update although nothing is wrong: RotaryEmbedding (its cos/sin cache is computed, never
    in a checkpoint) and, for a tied model, ParallelLMHead (the update carries the embedding once;
    the head is refreshed from it, on the CPU by weights/vllm_engine.py). Any other layer that
    fails to load still warns."""

    def __init__(self, tied: bool):
        super().__init__()
        self.expected = {"RotaryEmbedding"} | ({"ParallelLMHead"} if tied else set())

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.endswith(": Failed to load weights") and msg.split(":")[0] in self.expected)

Placement = Literal["colocated", "split"]
_FINISH = {"stop": "stop", "length": "length"}


def request_seed(seed: int, prompt_index: int, sample_index: int, n: int) -> int:
    """Seed of one request: distinct per (prompt, sample) within a call, fixed by the call's seed."""
    return (seed * 1_000_003 + prompt_index * n + sample_index) % (2**63 - 1)


MAX_MODEL_LEN_CAP = 4096
"""Default cap on prompt + response tokens: vLLM reserves KV cache for one sequence of
max_model_len at start-up, and RL prompts + responses here are short; pass more explicitly."""


def default_max_model_len(model_path: str) -> int | None:
    import json

    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    n = cfg.get("max_position_embeddings")
    return min(int(n), MAX_MODEL_LEN_CAP) if n else None


def _resolve_refs(items: Sequence[Any]) -> list[Any]:
    try:
        import ray
    except ImportError:
        return list(items)
    if any(isinstance(x, ray.ObjectRef) for x in items):
        return ray.get(list(items))
    return list(items)


class VLLMGenerator:
    """vLLM engine over a local Hugging Face folder; the Generator protocol plus weight-sync hooks.

    Construct it inside the Ray actor that owns the device: on CPU with `num_cpus >= 1`, on
    GPU with `num_gpus=1` (TP = 1) or inside the placement group that holds its shards' bundles.
    The engine is built in __init__ (seconds on CPU, a minute on a large GPU model).
    """

    def __init__(self, model_path: str, *, dtype: str = "float32", tensor_parallel_size: int = 1,
                 placement: Placement = "split", kv_cache_gb: float = 1.0,
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = None,
                 seed: int = 0, enable_prefix_caching: bool = True,
                 device: Literal["auto", "cpu", "cuda"] = "auto",
                 weight_transfer: Literal["gloo", "nccl", "ipc"] | None = None,
                 bundle_indices: Sequence[int] | None = None):
        import torch

        self.on_gpu = torch.cuda.is_available() if device == "auto" else device == "cuda"
        self.placement = placement
        if max_model_len is None:
            max_model_len = default_max_model_len(model_path)
        kwargs: dict[str, Any] = dict(
            model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
            enforce_eager=True, logprobs_mode="processed_logprobs",
            enable_prefix_caching=enable_prefix_caching, tensor_parallel_size=tensor_parallel_size,
        )
        if self.on_gpu:
            from vllm.config import WeightTransferConfig

            backend = weight_transfer or ("ipc" if placement == "colocated" else "nccl")
            if backend == "gloo":
                from nemo_rlvr.weights.vllm_engine import register

                register()
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization,
                          enable_sleep_mode=placement == "colocated",
                          weight_transfer_config=WeightTransferConfig(backend=backend))
            if tensor_parallel_size == 1:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
                kwargs["distributed_executor_backend"] = "uni"
            else:  # vLLM's Ray executor, on our placement group's bundles for this replica
                if bundle_indices is not None:
                    if len(bundle_indices) != tensor_parallel_size:
                        raise ValueError(f"bundle_indices {list(bundle_indices)} must name "
                                         f"tensor_parallel_size={tensor_parallel_size} bundles")
                    os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, bundle_indices))
                kwargs["distributed_executor_backend"] = "ray"
        else:
            if tensor_parallel_size != 1:
                raise ValueError(f"generation.tensor_parallel_size={tensor_parallel_size}: vLLM on CPU "
                                 "runs one worker per engine here; use 1 and more generation.num_workers.")
            if weight_transfer not in (None, "gloo"):
                raise ValueError(f"weight_transfer={weight_transfer!r} needs CUDA; on the CPU use gloo")
            # In-process engine: ~3 s to start, weights reachable without RPC. vLLM reads
            # these when the engine is built; VLLM_CPU_KVCACHE_SPACE (legacy, whole GiB)
            # overrides kv_cache_memory_bytes if the user set it.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            from nemo_rlvr.weights.vllm_engine import register

            register()  # the gloo engine, in this process: the in-process engine builds it here
            kwargs.update(distributed_executor_backend="uni",
                          kv_cache_memory_bytes=int(kv_cache_gb * 2**30),
                          weight_transfer_config={"backend": "gloo"})
        from vllm import LLM

        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        logging.getLogger(RELOAD_LOGGER).addFilter(ExpectedReloadWarnings(self._tied))
        log.info("vLLM engine for %s ready in %.1f s (%s, %s)", model_path, time.perf_counter() - t0,
                 "cuda" if self.on_gpu else "cpu", placement)

    # ------------------------------------------------------------------ generate

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Sample]:
        from vllm import SamplingParams as VSamplingParams
        from vllm import TokensPrompt

        requests, params, owners = [], [], []
        for i, p in enumerate(prompts):  # prompt-major; one request per sample, own seed
            for j in range(sampling.n):
                requests.append(TokensPrompt(prompt_token_ids=list(p.token_ids)))
                params.append(VSamplingParams(
                    n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                    max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
                    include_stop_str_in_output=True, logprobs=0,
                    seed=request_seed(sampling.seed, sampling.prompt_offset + i, j, sampling.n)))
                owners.append(i)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        samples = []
        for i, out in zip(owners, outputs):
            p, c = prompts[i], out.outputs[0]
            resp = list(c.token_ids)
            if c.logprobs is None or len(c.logprobs) != len(resp):
                raise RuntimeError(f"vLLM returned {0 if c.logprobs is None else len(c.logprobs)} "
                                   f"log-probs for {len(resp)} tokens")
            samples.append(Sample(
                prompt_ids=list(p.token_ids), response_ids=resp,
                logprobs=[float(lp[t].logprob) for lp, t in zip(c.logprobs, resp)],
                text=self.tokenizer.decode(resp, skip_special_tokens=True),
                finish_reason=_FINISH.get(c.finish_reason, "error"), group_id=i, env=p.env,
                fields=p.fields, prompt_text=p.text, uid=p.uid))
        return samples

    # ------------------------------------------------------------------ weights

    def load_weights(self, buckets: Sequence[WeightBucket]) -> dict[str, float]:
        """Replace the weights from buckets (numpy/CPU tensors; the object-store path).

        Items may also be Ray ObjectRefs of buckets (a list of refs is not resolved by
        Ray itself); their numpy buffers are then read zero-copy from the object store.
        """
        t0 = time.perf_counter()
        buckets = _resolve_refs(buckets)
        nbytes = sum(bucket_nbytes(b) for b in buckets)
        self._reload(iter_bucket_tensors(buckets))
        self.llm.reset_prefix_cache()
        dt = time.perf_counter() - t0
        return {"timing/weight_sync": dt, "weight_sync/apply_s": dt, "weight_sync/bytes": float(nbytes)}

    def _reload(self, named_tensors) -> None:
        executor = self.llm.llm_engine.model_executor
        driver = getattr(executor, "driver_worker", None)
        if driver is None:
            raise RuntimeError("weight buffers can be loaded only into an in-process engine "
                               "(tensor_parallel_size=1); with TP > 1 weights go through "
                               "generation.weight_transfer=nccl or ipc.")
        worker = driver.worker
        worker.reload_weights(weights_iterator=named_tensors, is_checkpoint_format=True)
        if not self.on_gpu and self._tied:
            # vLLM CPU keeps a packed copy of the tied lm_head that reload_weights does not
            # refresh; without this the logits still use the old embedding (notes/vllm-cpu.md).
            lm_head = worker.get_model().lm_head
            lm_head.quant_method.process_weights_after_loading(lm_head)

    # -------------------------------------------- vLLM's weight-sync client calls (weights/transfer.py)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        """Join the learner's weight-transfer group (blocks until every member has joined)."""
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> dict[str, float]:
        """Receive one update (runs while the learner broadcasts)."""
        t0 = time.perf_counter()
        self.llm.update_weights({"update_info": update_info})
        return {"weight_sync/apply_s": time.perf_counter() - t0}

    def finish_weight_update(self) -> None:
        self.llm.finish_weight_update()
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    # ------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """Colocated GPU: offload weights to host, drop the KV cache (level 1). CPU: nothing to free."""
        if self.on_gpu and self.placement == "colocated":
            self.llm.sleep(level=1)

    def wake(self, tags: list[str] | None = None) -> None:
        """vLLM's `wake_up(tags)`: ["weights"] before a weight update (the KV cache stays free while
        the weights are written), ["kv_cache"] before generating; None: both."""
        if self.on_gpu and self.placement == "colocated":
            self.llm.wake_up(tags=tags)
