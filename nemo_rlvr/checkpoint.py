"""Checkpoints that resume exactly: atomic full-state folders, verification, pruning, HF export.

    runs/<name>/checkpoints/
      tmp_step_N/ ──(every file written, manifest last)──▶ os.replace ──▶ step_N/
        learner/dcp/        model + optimizer, torch.distributed.checkpoint (FQN keys, a shard per rank)
        learner/rank_0.pt   lr scheduler + RNG of learner rank 0 (torch.load(weights_only=True))
        controller.json     run state (step, consumed samples, best metric, wandb run id), data position
        rng.pt              the controller's RNG (python, numpy, torch)
        config.yaml         the resolved config that wrote it
        hf/                 config.json, generation_config.json, tokenizer: with learner/dcp, an HF export
        manifest.json       format, step, metric, size + sha256 of every file above; written last

Resume (`checkpoint.resume`): `auto` takes the newest `step_N/` whose manifest and checksums
hold (incomplete `tmp_step_*` and corrupt folders are skipped with a warning naming them);
`never` starts fresh (refused when the folder has checkpoints: two runs would mix); a path
takes that checkpoint. A changed config is printed and refused where the checkpoint cannot
follow it (INCOMPATIBLE). Generators hold no RNG state: every generate call is seeded from
(seed, step), so restoring the learner, the loader position and the controller RNG is all.

Test hook: NEMO_RLVR_TEST_CRASH_IN_CHECKPOINT=N makes the process os._exit(70) while writing
tmp_step_N (after the learner state, before the manifest): a crash mid-write, for tests only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nemo_rlvr.config import CheckpointConfig, ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CRASH_HOOK = "NEMO_RLVR_TEST_CRASH_IN_CHECKPOINT"
"""Env var for tests: a step number; the process exits mid-write of that step's checkpoint."""
_STEP_DIR = re.compile(r"^step_(\d+)$")

INCOMPATIBLE: dict[str, str] = {
    "model.path": "the checkpoint holds weights (and a KL reference) of another model",
    "model.tiny": "the tiny model built from this config would differ from the checkpoint's",
    "model.warm_start": "the tiny model (and the KL reference built from it) would differ",
    "model.dtype": "the saved parameters and optimizer state have another dtype",
    "seed": "the training prompt pool and sampling seeds derive from it",
    "data.source": "the saved data position (epoch, index) indexes another prompt set",
    "data.num_digits": "the saved data position (epoch, index) indexes another prompt set",
    "data.operations": "the saved data position (epoch, index) indexes another prompt set",
    "data.shuffle_seed": "the saved data position (epoch, index) indexes another prompt order",
    "data.chat_template": "the prompts would be tokenized differently",
    "algorithm.name": "the optimizer state belongs to another algorithm",
}
"""Config keys (or sections) a resume refuses to change, and why. Everything else (lr, logging,
train.steps, batch shape: the data position counts prompts, so a new batch size continues from
the same prompt; learner.num_workers: DCP reshards the learner state) is allowed and printed."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be used as asked; the message names it and what to do."""


# ---------------------------------------------------------------- files and verification


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous complete one is intact (the message names
    the folder, the free space and the newest complete checkpoint)."""


def _causes(e: BaseException | None, depth: int = 8) -> Iterator[BaseException]:
    """`e`, then what is behind it: torch DCP's CheckpointException's first per-rank failure
    (`failures`: rank -> error), a Ray task error's `cause`, or `__cause__`; at most `depth` deep."""
    for _ in range(depth):
        if e is None:
            return
        yield e
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict) and failures:
            e = next(iter(failures.values()))
            e = e[0] if isinstance(e, tuple) else e
        else:
            e = getattr(e, "cause", None) or e.__cause__


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e` (a learner rank's write that failed in its actor included)."""
    return next((c for c in _causes(e) if isinstance(c, OSError)), None)


def _interrupted(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is behind `e` (a Ctrl-C inside DCP's writer)."""
    return any(isinstance(c, KeyboardInterrupt) for c in _causes(e))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, info: Mapping[str, Any]) -> None:
    """Checksum every file of `folder` and write manifest.json last (its presence = complete)."""
    files = {}
    for p in _files(folder):
        _fsync(p)
        files[str(p.relative_to(folder))] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT_VERSION, **info, "files": files}, indent=1))
    _fsync(tmp)
    os.replace(tmp, folder / MANIFEST)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


def verify(folder: Path) -> str | None:
    """Why `folder` is not a complete, intact checkpoint; None when it is."""
    if not (folder / MANIFEST).is_file():
        return "no manifest.json (incomplete: the write did not finish)"
    try:
        man = read_manifest(folder)
    except (OSError, ValueError) as e:
        return f"unreadable manifest.json ({e})"
    if man.get("format") != FORMAT_VERSION:
        return f"checkpoint format {man.get('format')!r}, this version reads {FORMAT_VERSION}"
    for rel, meta in man["files"].items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != meta["bytes"]:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {meta['bytes']}"
        if sha256_file(p) != meta["sha256"]:
            return f"{rel} fails its sha256 checksum (corrupt)"
    return None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """`step_N` folders under `root` (complete or not), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def find_latest(root: Path) -> Path | None:
    """The newest intact checkpoint under `root`; warns naming each one skipped."""
    for tmp in sorted(root.glob("tmp_step_*")) if root.is_dir() else []:
        log.warning("checkpoint %s is incomplete (a crash while writing it); ignoring it", tmp)
    for _, path in reversed(step_dirs(root)):
        problem = verify(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is skipped: %s", path, problem)
    return None


# ---------------------------------------------------------------- resume planning


@dataclass(frozen=True)
class ResumePoint:
    """A verified checkpoint to resume from and what it holds for the controller."""

    path: Path
    step: int
    run: dict[str, Any]      # RunState.state_dict()
    data: dict[str, Any]     # PromptLoader.state_dict()
    config: dict[str, Any]   # the resolved config that wrote it
    forked: bool = False
    """The checkpoint belongs to another run folder: this run branches off it (new wandb run)."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    a, b = flatten(old), flatten(new)
    keys = sorted((a.keys() | b.keys()) - {"base"})
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def _why_incompatible(key: str) -> str | None:
    for k, why in INCOMPATIBLE.items():
        if key == k or key.startswith(k + "."):
            return why
    return None


def check_config(old: Mapping[str, Any], new: Mapping[str, Any], *, path: Path,
                 same_model: bool) -> list[str]:
    """Lines describing the harmless changes; raises CheckpointError naming every incompatible one.

    `same_model`: the model folders hash alike (a moved folder changes model.path, not the model).
    """
    harmless, bad = [], []
    for key, was, now in config_changes(old, new):
        why = _why_incompatible(key)
        if key == "model.path" and same_model:
            why = None
        line = f"{key}: {was!r} (checkpoint) -> {now!r} (now)"
        (bad if why else harmless).append(f"{line}: {why}" if why else line)
    if bad:
        raise CheckpointError(
            f"cannot resume from {path}: the config changed in ways the checkpoint cannot follow:\n  "
            + "\n  ".join(bad) + "\nRestore the checkpoint's values, or start a new run (another `name=`).")
    return harmless


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of config.json plus the names and sizes of the weight files (cheap; ~unique per model)."""
    d = Path(model_dir)
    h = hashlib.sha256((d / "config.json").read_bytes())
    for p in sorted(d.iterdir()):
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


def resume_point(cfg: Any, *, model_dir: str) -> ResumePoint | None:
    """The checkpoint `cfg.checkpoint.resume` asks for, verified and config-checked; None: fresh."""
    root, how = cfg.run_dir / "checkpoints", cfg.checkpoint.resume
    if how == "never":
        existing = [p.name for _, p in step_dirs(root)]
        if existing:
            raise CheckpointError(
                f"checkpoint.resume=never, but {root} already holds {', '.join(existing)}: a fresh run "
                f"there would mix two runs. Use checkpoint.resume=auto to continue it, another name=, "
                f"or delete the folder.")
        return None
    if how == "auto":
        path = find_latest(root)
        if path is None and step_dirs(root):   # never restart at step 1 silently over a broken run
            names = ", ".join(p.name for _, p in step_dirs(root))
            raise CheckpointError(
                f"checkpoint.resume=auto: none of the checkpoints in {root} ({names}) is usable (the "
                f"warnings above say why). Restore one, resume another with checkpoint.resume=PATH, or "
                f"start over under another name= (or after deleting the folder).")
        if path is None:
            log.info("checkpoint.resume=auto: no complete checkpoint in %s; starting at step 1", root)
            return None
    else:
        path = Path(how)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint.resume={how!r} is not a folder. Give a step_N folder "
                                  f"(e.g. {root}/step_10), auto, or never.")
        problem = verify(path)
        if problem:
            raise CheckpointError(f"checkpoint.resume={how!r}: {problem}. Pick another step_N folder "
                                  f"or checkpoint.resume=auto.")
    man = read_manifest(path)
    ctl = json.loads((path / "controller.json").read_text())
    old_cfg = yaml.safe_load((path / "config.yaml").read_text())
    same_model = man.get("model_fingerprint") == model_fingerprint(model_dir)
    for line in check_config(old_cfg, cfg.model_dump(mode="json"), path=path, same_model=same_model):
        log.warning("resume: config differs from the checkpoint's (allowed): %s", line)
    forked = path.resolve().parent != root.resolve()
    return ResumePoint(path=path, step=int(man["step"]), run=ctl["run"], data=ctl["data"], config=old_cfg,
                       forked=forked)


def set_aside_newer(root: Path, step: int) -> None:
    """Rename checkpoints newer than `step` (another branch, or corrupt) so `auto` never picks
    them; delete incomplete tmp_step_* folders (never finished, useless)."""
    for tmp in root.glob("tmp_step_*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for s, path in step_dirs(root):
        if s > step:
            dest = root / f"stale_{path.name}-{int(time.time())}"
            os.replace(path, dest)
            log.warning("resume: %s is newer than the resumed step %d; renamed to %s (delete it when "
                        "no longer needed)", path, step, dest.name)


# ---------------------------------------------------------------- the checkpointer


class Checkpointer:
    """Saves `step_N/` every `every_steps` and at the end, prunes, restores, exports the final model."""

    def __init__(self, cfg: CheckpointConfig, *, run_dir: Path, learner: Any, loader: Any, state: Any,
                 config_text: str, model_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        self.learner, self.loader, self.state = learner, loader, state
        self.config_text, self.model_dir = config_text, model_dir
        self.root = run_dir / "checkpoints"
        self.protected: Path | None = None
        """The checkpoint this process resumed from: pruning never deletes it."""
        self._fingerprint = model_fingerprint(model_dir)

    def maybe_save(self, step: int, metrics: Mapping[str, Any], *, final: bool) -> Path | None:
        path = None
        if final or (self.cfg.every_steps and step % self.cfg.every_steps == 0):
            path = self.save_or_report(step, metrics)
        if final and self.cfg.export_hf:
            self.export_final()
        return path

    def _better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.cfg.best_mode == "max" else value < than)

    def save_or_report(self, step: int, metrics: Mapping[str, Any] | None = None) -> Path | None:
        """`save`, and when it fails (a full disk, a quota, an I/O error, here or in a learner rank;
        torch's writers report those as RuntimeError too): the half-written folder removed, then
        CheckpointWriteError (checkpoint.on_write_error=stop) or an error logged and None (continue)."""
        try:
            return self.save(step, metrics)
        except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            if _interrupted(e):  # a second Ctrl-C / SIGTERM inside DCP's writer, which wraps it
                raise KeyboardInterrupt("during a checkpoint write") from e
            cause = _os_error(e) or e
            tmp = self.root / f"tmp_step_{step}"
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(self.root).free if self.root.exists() else float("nan")
            latest = find_latest(self.root)
            what = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            msg = (f"writing checkpoint {tmp} failed: {type(cause).__name__}: {what} ({free / 2**30:.2f} GiB free "
                   f"in {self.root}); the newest complete checkpoint is {latest or 'none'}")
            if self.cfg.on_write_error == "continue":
                log.error("%s; training goes on without it (checkpoint.on_write_error=continue)", msg)
                return None
            raise CheckpointWriteError(f"{msg}. Free space (or set output_dir elsewhere) and run the same "
                                       f"command; or set checkpoint.on_write_error=continue") from e

    def save(self, step: int, metrics: Mapping[str, Any] | None = None) -> Path:
        from nemo_rlvr.learner.policy import rng_state

        final, tmp = self.root / f"step_{step}", self.root / f"tmp_step_{step}"
        t0 = time.perf_counter()
        metric = (metrics or {}).get(self.cfg.best_metric)
        metric = float(metric) if isinstance(metric, (int, float)) else None
        if metric is not None and self._better(metric, self.state.best_metric):
            self.state.best_metric = metric
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "learner").mkdir(parents=True)
        self.learner.save(str(tmp / "learner"))              # every learner rank writes its shard
        if os.environ.get(CRASH_HOOK) == str(step):
            os._exit(70)                                      # test hook: die mid-write (module doc)
        ctl = {"run": self.state.state_dict(), "data": self.loader.state_dict()}
        (tmp / "controller.json").write_text(json.dumps(ctl, indent=1))
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "config.yaml").write_text(self.config_text)
        save_hf_metadata(self.model_dir, tmp / "hf")
        write_manifest(tmp, {"step": step, "metric": {"name": self.cfg.best_metric, "value": metric},
                             "consumed_samples": self.state.consumed_samples,
                             "learner_world_size": len(getattr(self.learner, "workers", [0])),
                             "model_fingerprint": self._fingerprint})
        if final.exists():  # a corrupt or stale folder of the same step: replaced by this one
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(self.root)
        log.info("saved checkpoint %s (%.1fs)", final, time.perf_counter() - t0)
        self.prune()
        return final

    def prune(self) -> list[Path]:
        """Delete complete checkpoints outside (newest keep_last) + (best keep_best) + protected."""
        done = [(s, p, read_manifest(p)) for s, p in step_dirs(self.root) if (p / MANIFEST).is_file()]
        keep = {p for _, p, _ in done[-self.cfg.keep_last:]}
        scored = [(m["metric"]["value"], p) for _, p, m in done
                  if m.get("metric", {}).get("value") is not None]
        scored.sort(key=lambda vp: vp[0], reverse=self.cfg.best_mode == "max")
        keep |= {p for _, p in scored[: self.cfg.keep_best]}
        if self.protected is not None:
            keep.add(self.protected)
        removed = [p for _, p, _ in done if p not in keep]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
            log.info("pruned checkpoint %s", p)
        return removed

    def restore(self, point: ResumePoint, *, generators: Any, bucket_bytes: int) -> str:
        """Load `point` into the learner, loader and controller; give the generators the restored
        weights; return the one line saying what was restored."""
        from nemo_rlvr.learner.policy import set_rng_state

        self.learner.load(str(point.path / "learner"))
        self.loader.load_state_dict(point.data)
        set_rng_state(torch.load(point.path / "rng.pt", weights_only=True))
        self.learner.push_weights(generators, bucket_bytes)  # before the first step
        self.protected = point.path
        if point.path.parent.resolve() == self.root.resolve():
            set_aside_newer(self.root, point.step)
        d = point.data
        return (f"resumed from {point.path}: step {point.step}, {point.run['consumed_samples']} samples "
                f"consumed, data epoch {d['epoch']} index {d['index']} (shuffle seed {d['seed']}), "
                f"best {self.cfg.best_metric} {point.run.get('best_metric')}, "
                f"wandb run {point.run.get('wandb_run_id')}; next step {point.step + 1}")

    def export_final(self) -> Path:
        out, tmp = self.run_dir / "final_hf", self.run_dir / "tmp_final_hf"
        shutil.rmtree(tmp, ignore_errors=True)
        self.learner.save_hf(str(tmp), self.model_dir)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out


# ---------------------------------------------------------------- Hugging Face export


def save_hf_metadata(model_dir: str | Path, out: Path) -> None:
    """The model's config, generation config and tokenizer (no weights) into `out`."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    AutoConfig.from_pretrained(model_dir).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    if (Path(model_dir) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(model_dir).save_pretrained(out)


def load_checkpoint_model(ckpt: Path):
    """The policy model of checkpoint folder `ckpt` (verified), as a transformers model."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM

    problem = verify(ckpt)
    if problem:
        raise CheckpointError(f"{ckpt} is not a usable checkpoint: {problem}.")
    dtype = yaml.safe_load((ckpt / "config.yaml").read_text())["model"]["dtype"]
    config = AutoConfig.from_pretrained(ckpt / "hf")
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, checkpoint_id=str(ckpt / "learner" / "dcp"))
    model.load_state_dict(state["model"])
    return model.eval()


def is_checkpoint(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / "learner" / "dcp").is_dir()


def export_checkpoint(ckpt: Path, out: Path) -> Path:
    """Write checkpoint `ckpt` as a Hugging Face folder `out` (save_pretrained, safetensors, tokenizer,
    generation config), atomically: loads with AutoModelForCausalLM and vLLM."""
    from transformers import AutoTokenizer

    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"--to {out}: the folder exists and is not empty; give a new folder.")
    model = load_checkpoint_model(ckpt)
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(ckpt / "hf").save_pretrained(tmp)
    if (ckpt / "hf" / "generation_config.json").is_file():
        shutil.copy2(ckpt / "hf" / "generation_config.json", tmp / "generation_config.json")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
