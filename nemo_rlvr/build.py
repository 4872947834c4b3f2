"""Construction from a config: a training run (model folder, data, workers, scorer, logger,
checkpointer, restored state) for controller.train, and a standalone evaluation (run_eval)."""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nemo_rlvr.checkpoint import Checkpointer, export_checkpoint, is_checkpoint, resume_point
from nemo_rlvr.config import ConfigError, RunConfig, dump_config, load_config
from nemo_rlvr.controller import Components, RunState
from nemo_rlvr.data.dataset import PromptLoader, load_records, to_prompts
from nemo_rlvr.evaluate import evaluate
from nemo_rlvr.learner.group import LearnerGroup, LearnerWorker
from nemo_rlvr.logging import MetricLogger
from nemo_rlvr.rollout.group import GeneratorGroup, GeneratorWorker
from nemo_rlvr.scoring.make import make_scorer

log = logging.getLogger(__name__)

TRAIN_POOL = 4096
"""Procedural tasks: distinct training prompts drawn per run."""


def resolve_model_dir(cfg: RunConfig) -> str:
    """cfg.model.path (a folder, or pkg:NAME built from a package: models/packaged.py), or the
    cached tiny model (built and warm-started on first use)."""
    if cfg.model.path is not None:
        from nemo_rlvr.models.packaged import PREFIX, packaged_model_dir

        if cfg.model.path.startswith(PREFIX):
            return str(packaged_model_dir(cfg.model.path[len(PREFIX):], cfg.model.cache_dir))
        path = Path(cfg.model.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path={cfg.model.path!r} is not a Hugging Face model folder (no "
                              f"config.json). Give a local folder written by save_pretrained.")
        return str(path)
    from nemo_rlvr.models.tiny import tiny_model_dir

    return str(tiny_model_dir(cfg.model, cfg.data, cfg.seed))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_workers(cfg: RunConfig, model_dir: str) -> tuple[GeneratorGroup, LearnerGroup]:
    g, a = cfg.generation, cfg.algorithm
    gen_kwargs: dict[str, Any] = dict(dtype=cfg.model.dtype)
    learner_kwargs = dict(learner=cfg.learner, algorithm=a, temperature=g.temperature,
                          total_steps=cfg.train.steps * cfg.learner.minibatches_per_step,
                          dtype=cfg.model.dtype, seed=cfg.seed)
    if cfg.cluster.mode == "local":
        use_gpu = torch.cuda.is_available()
        if g.backend == "vllm":
            gen_kwargs.update(vllm_kwargs(cfg, use_gpu=use_gpu))
        gens = [GeneratorWorker(g.backend, model_dir, num_threads=0, **gen_kwargs)]
        learner = LearnerGroup([LearnerWorker(model_dir, num_threads=0, **learner_kwargs)])
        return GeneratorGroup(gens), connect_weights(cfg, learner, gens, use_gpu=use_gpu)
    import ray

    from nemo_rlvr.cluster import place_workers, start_ray

    start_ray(cfg.cluster, min_cpus=g.num_workers + cfg.learner.num_workers)
    place = place_workers(cfg.cluster, num_generators=g.num_workers, gen_tp=g.tensor_parallel_size,
                          num_learners=cfg.learner.num_workers)
    if g.tensor_parallel_size > 1 and not place.use_gpu:
        raise ConfigError(f"generation.tensor_parallel_size={g.tensor_parallel_size} needs GPUs and the Ray "
                          f"cluster has none; on a CPU use 1 and scale with generation.num_workers")
    if g.backend == "vllm":
        gen_kwargs.update(vllm_kwargs(cfg, use_gpu=place.use_gpu))
    gen_threads, learn_threads = phase_threads(cfg, use_gpu=place.use_gpu)
    gen_cls, learn_cls = ray.remote(GeneratorWorker), ray.remote(LearnerWorker)

    def generator(i: int):
        tp = {"bundle_indices": place.generator_bundles[i]} if g.tensor_parallel_size > 1 else {}
        # TP > 1: the engine's Ray executor takes these bundles of our group
        return gen_cls.options(**place.generator[i]).remote(g.backend, model_dir, num_threads=gen_threads,
                                                            **gen_kwargs, **tp)

    gens = [generator(i) for i in range(len(place.generator))]
    world = len(place.learner)
    learners = [learn_cls.options(**o).remote(model_dir, num_threads=learn_threads, rank=r, world_size=world,
                                              **learner_kwargs)
                for r, o in enumerate(place.learner)]
    return GeneratorGroup(gens, respawn=generator), connect_weights(cfg, LearnerGroup(learners), gens,
                                                                    use_gpu=place.use_gpu)


def phase_threads(cfg: RunConfig, *, use_gpu: bool) -> tuple[int, int]:
    """Torch threads of each generator and each learner rank (0: leave as is, on GPUs).

    On a CPU-only machine the synchronous loop runs one phase at a time: all generators
    generate, then all learner ranks train. So each role gets all the cores, shared among the
    actors that run together (cores // generators, cores // learner ranks), instead of one
    thread per actor with the other cores idle in every phase. OMP_NUM_THREADS, when set, is the
    threads of every process, as it is for torch itself."""
    if use_gpu:
        return 0, 0
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        omp = max(1, int(os.environ["OMP_NUM_THREADS"]))
        return omp, omp
    cores = len(os.sched_getaffinity(0))  # this machine's cores (cluster.num_cpus may be logical)
    gen = max(1, cores // cfg.generation.num_workers)
    learn = max(1, cores // cfg.learner.num_workers)
    log.info("cores follow the phases: %d generator(s) x %d torch thread(s), then %d learner rank(s) x %d",
             cfg.generation.num_workers, gen, cfg.learner.num_workers, learn)
    return gen, learn


def transfer_backend(cfg: RunConfig, *, use_gpu: bool) -> str:
    """generation.weight_transfer with auto resolved: on a CPU-only cluster shm (HF generators, a
    local cluster) or gloo; on GPUs vLLM's
    nccl (split) or ipc (colocated) engines, or the object store for an HF generator and for
    cluster.mode=local (one process: CUDA IPC cannot map a buffer into its own process)."""
    g = cfg.generation
    if g.weight_transfer != "auto":
        if use_gpu is False and g.weight_transfer in ("nccl", "ipc"):
            raise ConfigError(f"generation.weight_transfer={g.weight_transfer} needs GPUs, and the Ray "
                              f"cluster has none; use gloo (or auto)")
        return g.weight_transfer
    if not use_gpu:  # one machine (no cluster.address): the generators can map the learner's memory
        return "shm" if g.backend == "hf" and not cfg.cluster.address else "gloo"
    if g.backend != "vllm" or cfg.cluster.mode == "local":
        return "object_store"
    return "ipc" if cfg.cluster.placement == "colocated" else "nccl"


def connect_weights(cfg: RunConfig, learner: LearnerGroup, generators: list, *, use_gpu: bool) -> LearnerGroup:
    """Build every learner rank's trainer engine and connect the generators (weights/transfer.py),
    unless weights travel through the object store."""
    from nemo_rlvr.weights.shm import ShmUnavailable

    backend = transfer_backend(cfg, use_gpu=use_gpu)
    if backend != "object_store":
        kw = dict(ranks_per_replica=cfg.generation.tensor_parallel_size)
        try:
            learner.init_weight_transfer(generators, cfg.generation.weight_sync_bucket_bytes, backend=backend, **kw)
        except ShmUnavailable as e:  # Ray's error is an instance of the cause's class too
            why = str(e).strip().splitlines()[-1]  # the cause's line, without Ray's traceback
            if cfg.generation.weight_transfer == "shm":
                raise ConfigError(f"generation.weight_transfer=shm: {why}; set it to gloo (or auto), or give "
                                  f"/dev/shm room") from None
            log.warning("shared-memory weight transfer unavailable (%s): using gloo", why)
            backend = "gloo"
            learner.init_weight_transfer(generators, cfg.generation.weight_sync_bucket_bytes, backend=backend, **kw)
    log.info("weights reach the generators by %s", "Ray's object store" if backend == "object_store"
             else f"the {backend} weight-transfer engines")
    return learner


def vllm_kwargs(cfg: RunConfig, *, use_gpu: bool | None = None) -> dict:
    """The VLLMGenerator arguments of the config; with `use_gpu` known, the weight-transfer engine
    the generator builds (a GPU engine is made for one backend)."""
    g = cfg.generation
    out = dict(tensor_parallel_size=g.tensor_parallel_size, gpu_memory_utilization=g.gpu_memory_utilization,
               kv_cache_gb=g.kv_cache_gb, seed=cfg.seed, placement=cfg.cluster.placement)
    if use_gpu:
        backend = transfer_backend(cfg, use_gpu=True)
        out["weight_transfer"] = None if backend == "object_store" else backend
    return out


def dry_run(cfg: RunConfig, *, show: int = 3) -> list[str]:
    """What `nemo-rlvr train --dry-run` checks and prints, without starting Ray or any worker: the
    model folder, the data (read and checked: count, the first records), the environments the
    records name, and the placement plan on the cluster the recipe declares (cluster.nodes x
    cluster.gpus_per_node). Raises ConfigError (or the env registry's error) on the first problem."""
    from nemo_rlvr.cluster import plan_placement
    from nemo_rlvr.envs.registry import env_class
    from nemo_rlvr.scoring.base import checked_options

    lines = []
    if cfg.model.path is not None:
        lines.append(f"model: {resolve_model_dir(cfg)}")
    else:
        lines.append("model: the tiny Qwen2 (built and warm-started on first use, then cached)")
    d = cfg.data
    train = load_records(d.source, d, split="train", n=TRAIN_POOL, seed=cfg.seed, env=cfg.env)
    val = load_records(d.val_source or d.source, d, split="val", n=d.val_size, seed=cfg.seed,
                       env=cfg.env)[: d.val_size]
    envs = sorted({r.get("env") or cfg.env.name for r in train + val} | {cfg.env.name})
    if cfg.env.url:  # the server builds the environments
        envs = [f"{', '.join(envs)} (scored by the env server at {cfg.env.url})"]
    else:
        for name in envs:
            env_class(name, cfg.env.module)   # an unknown env: the registry's error names the setting
        checked_options(cfg.env)
    lines.append(f"data: {len(train)} training records from {d.source}, {len(val)} held-out from "
                 f"{d.val_source or d.source}; environments: {', '.join(envs)}")
    for r in train[:show]:
        lines.append(f"  record: {json.dumps(r, default=str)[:200]}")
    c, g = cfg.cluster, cfg.generation
    if c.mode == "local":
        lines.append("placement: cluster.mode=local (everything in this process)")
    else:
        actors = g.num_workers + cfg.learner.num_workers  # a local Ray gets a logical CPU per actor at least
        node = {"CPU": float(c.num_cpus or max(os.cpu_count() or 1, actors, 2 * c.gpus_per_node))}
        if c.gpus_per_node:
            node["GPU"] = float(c.gpus_per_node)
        plan = plan_placement(nodes=[dict(node) for _ in range(c.nodes)], placement=c.placement,
                              num_generators=g.num_workers, gen_tp=g.tensor_parallel_size,
                              num_learners=cfg.learner.num_workers)
        lines.append(f"placement (cluster.nodes={c.nodes}, cluster.gpus_per_node={c.gpus_per_node}): "
                     f"{plan.describe()}")
        lines.append(f"weights: {transfer_backend(cfg, use_gpu=plan.use_gpu)}")
    lines.append(f"run folder: {cfg.run_dir}")
    return lines


def load_val_prompts(cfg: RunConfig, tok) -> list:
    """The held-out prompts validation (and `nemo-rlvr eval`) scores."""
    d = cfg.data
    recs = load_records(d.val_source or d.source, d, split="val", n=d.val_size, seed=cfg.seed,
                        env=cfg.env)[: d.val_size]
    return to_prompts(recs, tok, default_env=cfg.env.name, chat_template=d.chat_template,
                      system_prompt=d.system_prompt)


def build_run(cfg: RunConfig) -> Components:
    """Workers, data, logger and checkpointer; with `checkpoint.resume`, restored to the checkpoint
    (learner, loader, RNG, run state) and the generators given the restored weights."""
    seed_everything(cfg.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(cfg)
    point = resume_point(cfg, model_dir=model_dir)   # before anything is written: may refuse
    config_text = dump_config(cfg)
    (run_dir / "config.yaml").write_text(config_text)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    d = cfg.data
    train_recs = load_records(d.source, d, split="train", n=TRAIN_POOL, seed=cfg.seed, env=cfg.env)
    prompts = to_prompts(train_recs, tok, default_env=cfg.env.name, chat_template=d.chat_template,
                         system_prompt=d.system_prompt)
    val_prompts = load_val_prompts(cfg, tok)
    if not cfg.env.url:  # env.name must exist even when every record names its own env
        from nemo_rlvr.envs.registry import env_class

        env_class(cfg.env.name, cfg.env.module)
    scorer = make_scorer(cfg.env)
    generators, learner = make_workers(cfg, model_dir)
    state = RunState()
    if point is not None:
        state.load_state_dict(point.run)
        if point.forked:  # another run's checkpoint: branch off it into a new wandb run
            state.wandb_run_id = None
    loader = PromptLoader(prompts, seed=d.shuffle_seed)
    logger = MetricLogger(cfg.logging, run_dir=run_dir, run_name=cfg.name, total_steps=cfg.train.steps,
                          wandb_run_id=state.wandb_run_id, config=cfg.model_dump(mode="json"),
                          resume_step=None if point is None else point.step)
    state.wandb_run_id = logger.wandb_run_id or state.wandb_run_id
    ckpt = Checkpointer(cfg.checkpoint, run_dir=run_dir, learner=learner, loader=loader, state=state,
                        config_text=config_text, model_dir=model_dir)
    if point is not None:
        bucket_bytes = cfg.generation.weight_sync_bucket_bytes
        line = ckpt.restore(point, generators=generators, bucket_bytes=bucket_bytes)
        print(line, flush=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Components(cfg, generators, learner, scorer, loader, val_prompts, logger, ckpt, pad, state, tok)


# ---------------------------------------------------------------- standalone evaluation


def eval_config(model: Path, overrides: Sequence[str]) -> RunConfig:
    """The run config for evaluating `model`: a checkpoint's own config.yaml, else the default
    recipe; then `overrides` (key=value)."""
    if not model.is_dir():
        raise ConfigError(f"{model} is not a folder; give a checkpoint (runs/<name>/checkpoints/step_N) "
                          f"or a Hugging Face model folder.")
    base = model / "config.yaml" if is_checkpoint(model) else None
    return load_config(base, list(overrides))


def run_eval(model: Path, overrides: Sequence[str], *, output: Path | None = None) -> dict[str, float]:
    """Evaluate a checkpoint or HF folder on the config's held-out prompts, in this process."""
    from transformers import AutoTokenizer

    cfg = eval_config(model, overrides)
    with tempfile.TemporaryDirectory(prefix="nemo-rlvr-eval-") as tmp:
        model_dir = model
        if is_checkpoint(model):
            model_dir = export_checkpoint(model, Path(tmp) / "hf")
        prompts = load_val_prompts(cfg, AutoTokenizer.from_pretrained(model_dir))
        kwargs: dict[str, Any] = {"dtype": cfg.model.dtype}
        if cfg.generation.backend == "vllm":
            kwargs |= vllm_kwargs(cfg)
        worker = GeneratorWorker(cfg.generation.backend, str(model_dir), num_threads=0, **kwargs)
        gens = GeneratorGroup([worker])
        scorer = make_scorer(cfg.env)
        rows: list[dict[str, Any]] = []
        try:
            g = cfg.generation
            metrics = evaluate(gens, scorer, prompts, max_new_tokens=g.max_new_tokens, stop=g.stop,
                               temperature=g.temperature, top_p=g.top_p, pass_k=cfg.validation.pass_k,
                               seed=cfg.seed, rows=rows)
        finally:
            scorer.close()
    metrics["val/prompts"] = float(len(prompts))
    if output is not None:
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return metrics
