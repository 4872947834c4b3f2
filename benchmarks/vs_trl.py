"""`nemo-rlvr train` against TRL's GRPOTrainer on the same work: s/step, phases, reward curves, ratio.

    .venv/bin/python benchmarks/vs_trl.py                          # 0.67M tiny recipe model, 20 steps
    .venv/bin/python benchmarks/vs_trl.py --model 9.5m --steps 20  # 9.5M Qwen2 (warm start cached once:
                                                                   # ~14 min on 2 busy cores)
    .venv/bin/python benchmarks/vs_trl.py --model PATH --steps 6 --reps 2 --json out.json

TRL runs in `.venv-bench/` (gitignored), which the first run builds and later runs reuse:
`python -m venv .venv-bench`, `pip install torch==<ours>` first (an unpinned torch pulls a
multi-GB CUDA build), then `pip install trl==1.16.0 transformers==<ours> accelerate==<ours>`.
So `.venv` (ours) is never touched; TRL and nemo-rlvr run the same torch and transformers.
Each TRL run is this file with `--trl-worker SPEC` under `.venv-bench/bin/python`; each nemo-rlvr
run is the CLI itself, `.venv/bin/nemo-rlvr train recipes/tiny_cpu.yaml model.path=... <overrides>`.

Both sides get the same model folder and tokenizer, the same prompts in the same order (ours
from the loader's shuffle, written to a dataset TRL reads unshuffled), B prompts x G samples,
max new tokens, temperature, lr, AdamW, grad clip, token-level loss (TRL's default
loss_type="dapo" = our algorithm.aggregation=token_mean), group mean/std advantages, no KL, one
optimizer step per generation batch, fp32, scoring in the driver; `settings()` lists each pair.
Runs, in this order: TRL with its defaults (gradient checkpointing on: the headline ratio),
TRL's best setting here (gradient checkpointing off), ours with cluster.mode=ray (the default)
and cluster.mode=local (`--reps R`: R rounds in alternating order, pooled). A run of ours may
carry overrides, `ours_ray+learner.prefix_sharing=false`, to measure one change in the same
session (its before and after side by side). Reported per run:
median s/step over steps 3..N (steps 1-2 pay one-off costs) and the fastest step (on a shared
machine the quiet-machine estimate), the median of each phase (generate / score / logprobs /
train / weight_sync) and the overhead = step - sum of phases (ours: controller, advantages,
collate; TRL: its rollout bookkeeping); Ray's round trips sit inside our phase timers, so Ray's
cost is printed as ray - local. Also the mean reward of every step and the ratios TRL / ours.

What differs in how, not what: ours computes the prompt a group's samples share once (prefix
trees, learner.prefix_sharing; same log-probs and gradients to fp32 rounding) where TRL runs every
row in full; the first-step check below runs our default learner, so it covers that too.

Like for like (the first-step check): TRL's first batch (its prompts, completions, rewards and
advantages) is replayed through our learner (`PolicyWorker.train`, fresh from the same folder).
With TRL's advantages, loss and grad norm must agree within LOSS_RTOL / GRAD_RTOL (the same fp32
sum; the forward differs only in padding layout); with our own advantages from TRL's rewards,
within a tolerance derived from the std epsilon (TRL 1e-4, ours 1e-6). The prompt token ids are
compared too. Step time is what both time as a step: ours `timing/step`, TRL on_step_begin ->
on_step_end (generation, scoring, forward, backward, clip, AdamW); neither includes logging.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
TRL_VERSION = "1.16.0"
PHASES = ("generate", "score", "logprobs", "train", "weight_sync")
MODELS = {"tiny": [], "9.5m": ["model.tiny.hidden_size=256", "model.tiny.num_layers=9",
                               "model.tiny.intermediate_size=1024", "model.tiny.num_heads=4"]}
"""--model name -> tiny-model overrides of recipes/tiny_cpu.yaml (warm-started and cached like it)."""
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4
"""First-step tolerances with identical inputs (relative, plus 1e-7 absolute): the loss is the same fp32
sum (-sum(A * mask) / tokens at ratio 1); the grad norm also crosses forward and backward with TRL's
left-padded rows against our packed ones (measured: ~1e-7 relative on the 0.67M model)."""
STD_EPS_TRL, STD_EPS_OURS = 1e-4, 1e-6
"""Advantage = (r - mean) / (std + eps); TRL's eps is fixed in GRPOTrainer, ours a grpo_advantages default.
With our own advantages the tolerance is GRAD_RTOL + 1.5 * (1e-4 - 1e-6) / (smallest non-zero group std):
every advantage moves by at most that share (2.8e-4 for G=8 and 0/1 rewards, std >= 0.354)."""
_INT = re.compile(r"-?\d+")


def arithmetic_reward(completion: str, answer: int) -> float:
    """Our `arithmetic` env's reward (nemo_rlvr/envs/arithmetic.py), for TRL: the integer alone."""
    text = completion.strip()
    return float(bool(_INT.fullmatch(text)) and int(text) == int(answer))


def settings(a: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(what, nemo-rlvr override, TRL GRPOConfig field) for every setting matched."""
    return [
        ("prompts per step B", f"train.prompts_per_step={a.prompts}",
         f"per_device_train_batch_size={a.prompts * a.group} (B*G), gradient_accumulation_steps=1"),
        ("samples per prompt G", f"algorithm.group_size={a.group}", f"num_generations={a.group}"),
        ("one optimizer step per generation batch", "learner.minibatches_per_step=1",
         "steps_per_generation=1, num_iterations=1"),
        ("steps", f"train.steps={a.steps}", f"max_steps={a.steps}"),
        ("max new tokens", f"generation.max_new_tokens={a.max_new_tokens}",
         f"max_completion_length={a.max_new_tokens}"),
        ("sampling", "generation.temperature=1.0 generation.top_p=1.0 (top_k off)",
         "temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0"),
        ("lr, constant, no warmup", f"learner.lr={a.lr} learner.lr_schedule=constant learner.warmup_steps=0",
         f"learning_rate={a.lr}, lr_scheduler_type='constant', warmup_steps=0"),
        ("AdamW (torch.optim.AdamW)", "learner.betas=[0.9,0.999] learner.weight_decay=0.0 (eps 1e-8)",
         "optim='adamw_torch', adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0"),
        ("grad clip (global L2)", "learner.grad_clip=1.0", "max_grad_norm=1.0"),
        ("token-level loss", "algorithm.aggregation=token_mean", "loss_type='dapo' (TRL's default)"),
        ("PPO clip", "algorithm.clip_low=0.2 algorithm.clip_high=0.2",
         "epsilon=0.2, epsilon_high=0.2, importance_sampling_level='token'"),
        ("advantage: group mean / std", "algorithm.baseline=mean algorithm.normalize_std=true",
         "scale_rewards='group' (std eps: TRL 1e-4, ours 1e-6, not settable)"),
        ("no KL, no reference model", "algorithm.kl_coef=0.0", "beta=0.0"),
        ("no other loss terms", "algorithm.tis_cap=null", ("entropy_coef=0.0, top_entropy_quantile=1.0, "
                                                   "mask_truncated_completions=False")),
        ("fp32", "model.dtype=float32 learner.dtype=float32", "bf16=False, fp16=False"),
        ("model + tokenizer", "model.path=<folder>", "model=<folder> (from_pretrained, default attention)"),
        ("prompts: raw text, same order", "data.chat_template=false (the warm start saw raw text)",
         "dataset of {prompt: str, answer}, shuffle_dataset=False; prompt ids compared"),
        ("reward: exact-match integer", "env.name=arithmetic env.num_workers=0 (in the driver)",
         "reward_funcs=[arithmetic_reward] (same rule, in-process)"),
        ("generation backend", "generation.backend=hf (transformers generate)", "use_vllm=False"),
        ("seed", f"seed={a.seed}", f"seed={a.seed} (samples still differ: other RNG streams)"),
        ("gradient checkpointing", "learner.activation_checkpointing=false",
         "gradient_checkpointing=True (TRL default, headline) and False (TRL best)"),
    ]


def our_overrides(a: argparse.Namespace, model_dir: str, out_dir: str, name: str, mode: str) -> list[str]:
    return [
        f"model.path={model_dir}", "model.warm_start.steps=0", "model.dtype=float32", "learner.dtype=float32",
        "data.source=arithmetic", "data.chat_template=false", "data.val_size=8",
        f"train.prompts_per_step={a.prompts}", f"algorithm.group_size={a.group}", f"train.steps={a.steps}",
        "learner.minibatches_per_step=1", f"generation.max_new_tokens={a.max_new_tokens}",
        "generation.temperature=1.0", "generation.top_p=1.0", "generation.backend=hf",
        f"learner.lr={a.lr}", "learner.lr_schedule=constant", "learner.warmup_steps=0",
        "learner.betas=[0.9,0.999]", "learner.weight_decay=0.0", "learner.grad_clip=1.0",
        "learner.activation_checkpointing=false", "algorithm.aggregation=token_mean",
        "algorithm.clip_low=0.2", "algorithm.clip_high=0.2", "algorithm.baseline=mean",
        "algorithm.normalize_std=true", "algorithm.kl_coef=0.0", "algorithm.tis_cap=null",
        "env.name=arithmetic", "env.num_workers=0", f"seed={a.seed}", f"cluster.mode={mode}",
        "validation.at_start=false", "validation.every_steps=0", "checkpoint.export_hf=false",
        "checkpoint.resume=never", "logging.console=false", "logging.sample_table_every=1",
        f"output_dir={out_dir}", f"name={name}",
        *known_keys(["algorithm.advantage=grpo", "algorithm.loss=ppo_clip", "algorithm.clip_c=null",
                     "algorithm.entropy_coef=0.0", "algorithm.kl_in_reward=false",
                     "algorithm.whiten_advantages=false", "algorithm.dynamic_sampling=false",
                     "algorithm.overlong_buffer_len=0", "algorithm.overlong_filter=false"]),
    ]


def known_keys(overrides: list[str]) -> list[str]:
    """The overrides whose key this checkout's config has (newer keys, pinned to their off value)."""
    from nemo_rlvr import config

    out = []
    for o in overrides:
        section, key = o.split("=")[0].split(".")
        if key in getattr(config.RunConfig.model_fields[section].annotation, "model_fields", {}):
            out.append(o)
    return out


def trl_config(a: argparse.Namespace, *, gradient_checkpointing: bool, out_dir: str) -> dict:
    return {
        "output_dir": out_dir, "per_device_train_batch_size": a.prompts * a.group,
        "gradient_accumulation_steps": 1, "num_generations": a.group, "steps_per_generation": 1,
        "num_iterations": 1, "max_steps": a.steps, "max_completion_length": a.max_new_tokens,
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
        "learning_rate": a.lr, "lr_scheduler_type": "constant", "warmup_steps": 0, "optim": "adamw_torch",
        "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.2, "importance_sampling_level": "token",
        "scale_rewards": "group", "beta": 0.0, "entropy_coef": 0.0, "top_entropy_quantile": 1.0,
        "mask_truncated_completions": False, "bf16": False, "fp16": False, "use_vllm": False,
        "shuffle_dataset": False, "seed": a.seed, "gradient_checkpointing": gradient_checkpointing,
        "logging_steps": 1, "report_to": "none", "save_strategy": "no", "use_cpu": True,
        "dataloader_num_workers": 0, "disable_tqdm": True}


# ---------------------------------------------------------------- TRL side (runs in .venv-bench)

def trl_worker(spec_path: str) -> None:
    """One TRL run; writes per-step rows and the first batch to spec["result"]. No nemo_rlvr here."""
    import functools
    from collections import defaultdict

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    records = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines()]
    last: dict = {}

    def arithmetic_exact_match(completions, answer, **_):
        last["rewards"] = [arithmetic_reward(c, a) for c, a in zip(completions, answer)]
        return last["rewards"]

    class Clock(TrainerCallback):
        def __init__(self):
            self.acc, self.rows, self.t0, self.t_prep = defaultdict(float), [], 0.0, 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.acc.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            t = time.perf_counter()
            self.rows.append({"step": state.global_step, "step_s": t - self.t0, "train": t - self.t_prep,
                              **{p: self.acc.get(p, 0.0) for p in ("generate", "score", "logprobs")}})

        def wrap(self, name, fn, only_no_grad=False):
            @functools.wraps(fn)
            def timed(*args, **kw):
                t = time.perf_counter()
                try:
                    return fn(*args, **kw)
                finally:
                    if not (only_no_grad and torch.is_grad_enabled()):
                        self.acc[name] += time.perf_counter() - t
            return timed

    t_build = time.perf_counter()
    clock = Clock()
    trainer = GRPOTrainer(model=spec["model"], reward_funcs=arithmetic_exact_match,
                          args=GRPOConfig(**spec["config"]), train_dataset=Dataset.from_list(records),
                          callbacks=[clock])
    build_s = time.perf_counter() - t_build
    trainer._generate = clock.wrap("generate", trainer._generate)
    trainer._calculate_rewards = clock.wrap("score", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = clock.wrap(
        "logprobs", trainer._get_per_token_logps_and_entropies, only_no_grad=True)  # old / ref passes only
    prepare, gen_score, compute_loss = trainer._prepare_inputs, trainer._generate_and_score_completions, \
        trainer.compute_loss
    first: dict = {}

    def prepare_inputs(*args, **kw):  # the rollout; what follows it up to on_step_end is "train"
        out = prepare(*args, **kw)
        clock.t_prep = time.perf_counter()
        return out

    def generate_and_score(*args, **kw):  # the first batch, before TRL shuffles its rows
        out = gen_score(*args, **kw)
        if not first:
            pm, cm = out["prompt_mask"].bool(), out["completion_mask"].bool()
            first.update(prompt_ids=[r[m].tolist() for r, m in zip(out["prompt_ids"], pm)],
                         completion_ids=[r[m].tolist() for r, m in zip(out["completion_ids"], cm)],
                         advantages=out["advantages"].tolist(), rewards=list(last["rewards"]))
        return out

    def loss_first(*args, **kw):
        loss = compute_loss(*args, **kw)
        first.setdefault("loss", float(loss.detach()))
        return loss

    trainer._prepare_inputs, trainer._generate_and_score_completions = prepare_inputs, generate_and_score
    trainer.compute_loss = loss_first
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    logs = {r["step"]: r for r in trainer.state.log_history if "step" in r and "reward" in r}
    for row in clock.rows:
        log = logs.get(row["step"], {})
        row.update(reward=log.get("reward"), loss=log.get("loss"), grad_norm=log.get("grad_norm"),
                   response_len=log.get("completions/mean_length"))
    first["grad_norm"] = clock.rows[0]["grad_norm"]
    Path(spec["result"]).write_text(json.dumps({
        "rows": clock.rows, "first": first, "build_s": build_s, "train_s": train_s,
        "threads": torch.get_num_threads(), "attn": trainer.model.config._attn_implementation,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}}))


# ---------------------------------------------------------------- driver (runs in .venv)

def ensure_bench_venv() -> Path:
    """.venv-bench/bin/python with trl==TRL_VERSION and our torch / transformers / accelerate; built once."""
    import accelerate
    import torch
    import transformers

    want = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "trl": TRL_VERSION}
    py = BENCH_VENV / "bin" / "python"
    probe = "import json, accelerate, torch, transformers, trl, datasets; print(json.dumps({m.__name__: " \
            "m.__version__.split('+')[0] for m in (torch, transformers, accelerate, trl)}))"
    if py.exists():
        out = subprocess.run([py, "-c", probe], capture_output=True, text=True, check=False)
        if out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1]) == want:
            return py
    print(f"building {BENCH_VENV} (once): {want}", flush=True)
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([base, "-m", "venv", BENCH_VENV], check=True)
    pip = [py, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={want['torch']}"], check=True)  # first: no CUDA build pulled
    subprocess.run([*pip, f"torch=={want['torch']}", f"trl=={want['trl']}",
                    f"transformers=={want['transformers']}", f"accelerate=={want['accelerate']}"], check=True)
    return py


def model_folder(name: str, seed: int) -> str:
    """The tiny recipe's model (or the 9.5M variant) built and warm-started as the recipe does; or a PATH."""
    if name not in MODELS:
        return str(Path(name).resolve())
    from nemo_rlvr.config import load_config
    from nemo_rlvr.models.tiny import tiny_model_dir

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [*MODELS[name], f"seed={seed}"])
    return str(tiny_model_dir(cfg.model, cfg.data, cfg.seed))


def prompt_records(a: argparse.Namespace, cfg, model_dir: str) -> list[dict]:
    """The prompts our loader hands out in steps 1..N, in order, as {prompt, answer, token_ids}."""
    from transformers import AutoTokenizer

    from nemo_rlvr.build import TRAIN_POOL
    from nemo_rlvr.data.dataset import PromptLoader, load_records, to_prompts

    recs = load_records(cfg.data.source, cfg.data, split="train", n=TRAIN_POOL, seed=cfg.seed)
    prompts = to_prompts(recs, AutoTokenizer.from_pretrained(model_dir), default_env=cfg.env.name,
                         chat_template=cfg.data.chat_template)
    batch = PromptLoader(prompts, seed=cfg.data.shuffle_seed).next_batch(a.prompts * a.steps)
    return [{"prompt": p.text, "answer": p.fields["answer"], "token_ids": list(p.token_ids)} for p in batch]


def run_trl(py: Path, a: argparse.Namespace, model_dir: str, data: Path, work: Path, gc: bool, rep: int) -> dict:
    tag = ("gc_on" if gc else "gc_off") + (f"_{rep}" if rep else "")
    spec = {"model": model_dir, "data": str(data), "result": str(work / f"trl_{tag}.json"),
            "config": trl_config(a, gradient_checkpointing=gc, out_dir=str(work / f"trl_{tag}"))}
    (work / f"trl_{tag}_spec.json").write_text(json.dumps(spec))
    t0 = time.perf_counter()
    out = subprocess.run([py, __file__, "--trl-worker", str(work / f"trl_{tag}_spec.json")], capture_output=True,
                         text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, check=False)
    if out.returncode:
        sys.exit(f"TRL run ({tag}) failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(Path(spec["result"]).read_text()) | {"wall_s": time.perf_counter() - t0}


def run_ours(a: argparse.Namespace, model_dir: str, work: Path, spec: str, records: list[dict], rep: int) -> dict:
    """One of our runs; `spec` is ours_ray or ours_local, optionally with "+key=value" overrides
    after it (e.g. ours_ray+learner.prefix_sharing=false: a change's "before" in the same run)."""
    base, *extra = spec.split("+")
    mode = base.removeprefix("ours_")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", spec) + (f"_{rep}" if rep else "")
    cmd = [str(ROOT / ".venv/bin/nemo-rlvr"), "train", str(ROOT / "recipes/tiny_cpu.yaml"),
           *our_overrides(a, model_dir, str(work), name, mode), *extra]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode:
        sys.exit(f"nemo-rlvr train (cluster.mode={mode}) failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return {"rows": read_ours(a, work / name, records), "wall_s": time.perf_counter() - t0,
            "cmd": " ".join(cmd[1:3]) + f" ... cluster.mode={mode}" + "".join(f" {e}" for e in extra)}


def read_ours(a: argparse.Namespace, run_dir: Path, records: list[dict]) -> list[dict]:
    """Per-step rows of one of our runs from its metrics.jsonl; checks it saw the dataset's prompts."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "timing/step" not in r:
            continue
        shown = json.loads((run_dir / "samples" / f"step_{r['step']:06d}.jsonl").read_text().splitlines()[0])
        if shown["prompt"] != records[(r["step"] - 1) * a.prompts]["prompt"]:
            sys.exit(f"step {r['step']}: our run's first prompt {shown['prompt']!r} is not the dataset's "
                     f"{records[(r['step'] - 1) * a.prompts]['prompt']!r}; the prompt order differs.")
        rows.append({"step": r["step"], "step_s": r["timing/step"],
                     **{p: r.get(f"timing/{p}", 0.0) for p in PHASES}, "reward": r["train/reward_mean"],
                     "learner_train": r.get("timing/learner_train", 0.0),
                     "loss": r.get("loss/total"), "grad_norm": r.get("train/grad_norm"),
                     "response_len": r.get("train/response_len_mean")})
    return rows


def first_step_check(a: argparse.Namespace, cfg, model_dir: str, trl: dict, records: list[dict]) -> dict:
    """Replay TRL's first batch through our learner: loss and grad norm, TRL's and our advantages."""
    import torch

    from nemo_rlvr.algorithms.advantages import grpo_advantages
    from nemo_rlvr.learner.packing import collate
    from nemo_rlvr.learner.policy import PolicyWorker
    from nemo_rlvr.types import Sample

    f, g = trl["first"], a.group
    ours_ids = [r["token_ids"] for r in records[: a.prompts]]
    theirs_ids = [f["prompt_ids"][i * g] for i in range(a.prompts)]
    assert all(f["prompt_ids"][i] == f["prompt_ids"][i - i % g] for i in range(len(f["prompt_ids"])))
    samples = [Sample(p, c, [0.0] * len(c), "", "stop", i // g, "arithmetic")
               for i, (p, c) in enumerate(zip(f["prompt_ids"], f["completion_ids"]))]
    groups = torch.arange(len(samples)) // g                                                    # [N]
    adv_trl = torch.tensor(f["advantages"])                                                     # [N]
    adv_ours = grpo_advantages(torch.tensor(f["rewards"]), groups, baseline="mean", normalize_std=True)
    std = torch.tensor(f["rewards"]).view(-1, g).std(dim=1)                                      # [B]
    e2e_rtol = GRAD_RTOL + 1.5 * (STD_EPS_TRL - STD_EPS_OURS) / float(std[std > 0].min()) if (std > 0).any() \
        else GRAD_RTOL
    out = {"prompt_ids_equal": ours_ids == theirs_ids, "trl_loss": f["loss"], "trl_grad_norm": f["grad_norm"],
           "e2e_rtol": e2e_rtol,
           "adv_max_abs_diff": float((adv_trl - adv_ours).abs().max()),
           "degenerate": bool((adv_trl == 0).all())}
    for tag, adv in (("trl_adv", adv_trl), ("our_adv", adv_ours)):
        worker = PolicyWorker(model_dir, learner=cfg.learner, algorithm=cfg.algorithm, temperature=1.0,
                              seed=a.seed, device="cpu")
        m = worker.train(collate(samples, adv, pad_id=worker.model.config.pad_token_id or 0))
        out[f"ours_loss_{tag}"], out[f"ours_grad_norm_{tag}"] = m["loss/total"], m["train/grad_norm"]

    def close(x: float, y: float, rtol: float) -> bool:
        return abs(x - y) <= 1e-7 + rtol * abs(y)

    out["ok"] = bool(out["prompt_ids_equal"] and not out["degenerate"]
                     and close(out["ours_loss_trl_adv"], f["loss"], LOSS_RTOL)
                     and close(out["ours_grad_norm_trl_adv"], f["grad_norm"], GRAD_RTOL)
                     and close(out["ours_loss_our_adv"], f["loss"], e2e_rtol)
                     and close(out["ours_grad_norm_our_adv"], f["grad_norm"], e2e_rtol))
    return out


def summarize(rows: list[dict]) -> dict:
    """Medians over steps >= 3 of every rep, and the fastest such step (the quiet-machine estimate)."""
    timed = [r for r in rows if r["step"] >= 3] or rows
    med = {k: statistics.median(r[k] for r in timed) for k in ("step_s", *PHASES) if k in timed[0]}
    med = {"step_s": med["step_s"], **{p: med.get(p, 0.0) for p in PHASES}}
    if "learner_train" in timed[0]:  # ours: train's time inside the learner (the rest reached it)
        med["learner_train"] = statistics.median(r["learner_train"] for r in timed)
    med["overhead"] = statistics.median(r["step_s"] - sum(r.get(p, 0.0) for p in PHASES) for r in timed)
    return med | {"min_step_s": min(r["step_s"] for r in timed), "n_timed": len(timed),
                  "steps_timed": f"{timed[0]['step']}-{max(r['step'] for r in timed)}"}


def report(a: argparse.Namespace, model_dir: str, runs: dict[str, dict], check: dict, params: int,
           load_start: float = float("nan")) -> dict:
    import platform

    import torch

    trl = runs["trl_gc_on"]
    load = os.getloadavg()  # 1-minute load at the end: > cores means the timings are shared-machine noise
    print(f"vs TRL: {Path(model_dir).name} ({params / 1e6:.2f}M params, fp32), {a.prompts} prompts x {a.group} "
          f"samples, <= {a.max_new_tokens} new tokens, T=1, lr {a.lr}, no KL, {a.steps} steps; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load_start:.1f} at "
          f"start, {load[0]:.1f} at end; "
          f"torch {torch.__version__}, TRL {trl['versions']['trl']}, transformers {trl['versions']['transformers']}")
    sums = {k: summarize(r["rows"]) for k, r in runs.items()}
    print(f"medians of steps {next(iter(sums.values()))['steps_timed']} x {a.reps} rep(s), seconds (each column "
          f"its own median; overhead = median of step - sum of phases; min = fastest step):")
    print(f"{'run':<30} {'s/step':>7} {'min':>6} " + " ".join(f"{p:>11}" for p in (*PHASES, "overhead")) + "   wall")
    labels = {"trl_gc_on": "TRL (defaults: grad ckpt on)", "trl_gc_off": "TRL (grad ckpt off)",
              "ours_ray": "nemo-rlvr (cluster.mode=ray)", "ours_local": "nemo-rlvr (cluster.mode=local)"}
    labels |= {k: "nemo-rlvr " + k.removeprefix("ours_").replace("+", " ") for k in sums if k not in labels}
    for k, s in sums.items():
        print(f"{labels[k]:<30} {s['step_s']:>7.3f} {s['min_step_s']:>6.3f} " + " ".join(f"{s[p]:>11.3f}" for p in (*PHASES, "overhead"))
              + f" {runs[k]['wall_s']:>6.0f}s")
    if "ours_ray" in sums and "ours_local" in sums:  # Ray's round trips sit inside the phases' timers
        r, l = sums["ours_ray"], sums["ours_local"]
        print("Ray actors' cost (ray - local), seconds/step: " + f"step {r['step_s'] - l['step_s']:+.3f}, "
              + ", ".join(f"{p} {r[p] - l[p]:+.3f}" for p in (*PHASES, "overhead")))
    for k, s in sums.items():
        if s.get("learner_train"):
            print(f"{labels[k]}: train {s['train']:.3f} s/step, of which {s['learner_train']:.3f} inside the learner "
                  f"({s['train'] - s['learner_train']:.3f} reaching it: the call and the batch)")
    if "trl_gc_on" in sums and "ours_ray" in sums:
        print(f"headline: TRL's defaults / `nemo-rlvr train` (ray) = "
              f"{sums['trl_gc_on']['step_s'] / sums['ours_ray']['step_s']:.2f}x s/step (> 1: nemo-rlvr faster)")
    if "trl_gc_on" in sums and "ours_ray" in sums:
        print(f"fastest steps (what a quiet machine gives): TRL's defaults / `nemo-rlvr train` (ray) = "
              f"{sums['trl_gc_on']['min_step_s'] / sums['ours_ray']['min_step_s']:.2f}x")
    print("ratios of s/step (> 1: nemo-rlvr faster):")
    for t in (t for t in ("trl_gc_on", "trl_gc_off") if t in sums):
        print("  " + ", ".join(f"{labels[t]} / {labels[o]} = {sums[t]['step_s'] / sums[o]['step_s']:.2f}x"
                               for o in sums if o.startswith("ours_")))
    print("mean reward per step (rep 0):")
    for k, r in runs.items():
        print(f"  {labels[k]:<30} " + " ".join(f"{x['reward']:.2f}" for x in r["rows"] if x["rep"] == 0))
    c = check
    print(f"first-step check (TRL's step-1 batch replayed through our learner): "
          f"{'PASS' if c['ok'] else 'FAIL'}{' (degenerate: every advantage 0)' if c['degenerate'] else ''}\n"
          f"  prompt token ids equal: {c['prompt_ids_equal']}\n"
          f"  loss      TRL {c['trl_loss']:+.8f} | ours, TRL's advantages {c['ours_loss_trl_adv']:+.8f} "
          f"(rtol {LOSS_RTOL:g}) | ours, our advantages {c['ours_loss_our_adv']:+.8f} (rtol {c['e2e_rtol']:.1e})\n"
          f"  grad norm TRL {c['trl_grad_norm']:.8f} | ours, TRL's advantages {c['ours_grad_norm_trl_adv']:.8f} "
          f"(rtol {GRAD_RTOL:g}) | ours, our advantages {c['ours_grad_norm_our_adv']:.8f} (rtol {c['e2e_rtol']:.1e})\n"
          f"  max |advantage TRL - ours| {c['adv_max_abs_diff']:.2e} (std eps {STD_EPS_TRL:g} vs {STD_EPS_OURS:g})")
    print(f"attention: TRL {trl['attn']}; threads: TRL {trl['threads']}")
    print("settings matched (what | nemo-rlvr | TRL GRPOConfig):")
    for what, ours, theirs in settings(a):
        print(f"  {what} | {ours} | {theirs}")
    return {"model": Path(model_dir).name, "params": params, "args": vars(a), "summary": sums, "check": check,
            "runs": {k: {kk: v for kk, v in r.items() if kk != "first"} for k, r in runs.items()},
            "load_avg_start": load_start, "load_avg_end": load[0], "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (0.67M) | 9.5m | a Hugging Face folder")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=8, help="B, prompts per step")
    ap.add_argument("--group", type=int, default=8, help="G, samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="trl_gc_on,trl_gc_off,ours_ray,ours_local",
                    help="which runs, comma-separated (trl_gc_on is needed for the check); ours_ray / "
                         "ours_local take '+key=value' overrides, e.g. ours_ray+learner.prefix_sharing=false")
    ap.add_argument("--reps", type=int, default=1, help="runs of each, in alternating order; medians pool them")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trl_worker:
        return trl_worker(a.trl_worker)
    sys.path.insert(0, str(ROOT))
    load_start = os.getloadavg()[0]
    py = ensure_bench_venv()
    model_dir = model_folder(a.model, a.seed)
    from nemo_rlvr.config import load_config

    # read once, up front: the learner config of the check and the prompt order come from it
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", our_overrides(a, model_dir, "/tmp", "x", "local"))
    records = prompt_records(a, cfg, model_dir)
    work = Path(tempfile.mkdtemp(prefix="nemo_rlvr_vs_trl_"))
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in records))
    wanted = a.runs.split(",")
    runs: dict[str, dict] = {}
    for rep in range(a.reps):  # alternate the order (A B C D, D C B A, ...): drift hits all runs alike
        for k in wanted if rep % 2 == 0 else wanted[::-1]:  # rep 0: TRL first, its batch feeds the check
            if k.startswith("trl_"):
                res = run_trl(py, a, model_dir, data, work, gc=k == "trl_gc_on", rep=rep)
            else:
                res = run_ours(a, model_dir, work, k, records, rep=rep)
            res["rows"] = [r | {"rep": rep} for r in res["rows"]]
            if k not in runs:
                runs[k] = res
            else:
                runs[k]["rows"] += res["rows"]
                runs[k]["wall_s"] = max(runs[k]["wall_s"], res["wall_s"])
    check = first_step_check(a, cfg, model_dir, runs["trl_gc_on"], records)
    import math

    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as st:  # tied: lm_head not stored
        params = sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (not iterable)
    result = report(a, model_dir, runs, check, params, load_start)
    print(f"run folders (metrics.jsonl, TRL's per-step rows): {work}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    if not check["ok"]:
        sys.exit("first-step check failed: the two sides do not compute the same update (see above)")


if __name__ == "__main__":
    main()
