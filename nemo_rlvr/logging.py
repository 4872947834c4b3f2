"""Metric sinks (console, metrics.jsonl, TensorBoard, wandb) and phase timers.

Only the controller writes metrics: `MetricLogger.write(step, metrics)` fans one
flat dict of namespaced keys (`train/`, `loss/`, `reward/`, `verifier/`, `timing/`,
`throughput/`, `val/`) out to every enabled sink. The key list: docs/monitoring.md.

A resumed run continues every sink at the resumed step without duplicates: metrics.jsonl
drops rows past it (logged after the checkpoint, before the crash), TensorBoard purges
events past it (`purge_step`), wandb continues the same run id (`resume="allow"`) and skips
steps the server already holds (it cannot rewrite history).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nemo_rlvr.config import LoggingConfig

log = logging.getLogger(__name__)

CONSOLE_KEYS = (
    ("train/reward_mean", "reward", "{:.3f}"),
    ("train/accuracy", "acc", "{:.3f}"),
    ("loss/kl", "kl", "{:.4f}"),
    ("train/logprob_mismatch", "lp_mismatch", "{:.1e}"),
    ("timing/step", "step_s", "{:.2f}"),
)


class Timer:
    """Named wall-clock timers; `flush()` returns {"timing/<name>": seconds} and resets."""

    def __init__(self) -> None:
        self._acc: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._acc[name] = self._acc.get(name, 0.0) + time.perf_counter() - t0

    def flush(self) -> dict[str, float]:
        out, self._acc = {f"timing/{k}": v for k, v in self._acc.items()}, {}
        return out


def _clean(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else str(v)
        out[k] = v
    return out


def is_wall_clock(key: str) -> bool:
    """Keys that measure time (differ between two runs of the same computation)."""
    return key.startswith(("timing/", "throughput/")) or key.endswith(("_s", "/seconds"))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def truncate_metrics(path: Path, *, keep_through: int) -> int:
    """Drop rows with step > keep_through (and torn lines), rewriting atomically; returns how many."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= keep_through:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write("".join(line + "\n" for line in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(kept)


class JsonlSink:
    """One JSON object per line, `{"step": N, ...}`; a resumed run continues the file after
    dropping rows past the resumed step (`resume_step`; None: a fresh run, drop every row)."""

    def __init__(self, path: Path, *, resume_step: int | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        dropped = truncate_metrics(path, keep_through=-1 if resume_step is None else resume_step)
        if dropped:
            what = f"after step {resume_step}" if resume_step is not None else "of an earlier attempt"
            log.warning("%s: dropped %d rows logged %s (not in any checkpoint)", path, dropped, what)
        self._f = path.open("a", buffering=1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._f.write(json.dumps({"step": step, **_clean(metrics)}) + "\n")

    def close(self) -> None:
        self._f.close()


def _summary(metrics: Mapping[str, Any]) -> list[str]:
    parts = []
    for key, short, fmt in CONSOLE_KEYS:
        if metrics.get(key) is not None:
            parts.append(f"{short} {fmt.format(float(metrics[key]))}")
    parts += [f"{k} {float(v):.3f}" for k, v in metrics.items()
              if k.startswith("val/") and "accuracy" in k and v is not None]
    return parts


class ConsoleSink:
    """A line per step with the key metrics, step count and ETA (when stdout is not a terminal)."""

    def __init__(self, total_steps: int, *, start_step: int = 0):
        self.total, self.start = total_steps, start_step
        self._t0 = time.perf_counter()

    def eta(self, step: int) -> float | None:
        """Seconds left at the pace of the steps this process ran (None before the first)."""
        done = step - self.start
        return (time.perf_counter() - self._t0) / done * (self.total - step) if done > 0 else None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        eta = self.eta(step)
        parts = [f"step {step:>4}/{self.total}", *_summary(metrics)]
        parts.append(f"eta {eta:4.0f}s" if eta is not None else "eta    ?")
        print(" | ".join(parts), file=sys.stdout, flush=True)

    def close(self) -> None:
        pass


class ProgressSink:
    """A rich progress bar (steps, elapsed, ETA, key metrics) for a terminal; validation
    results print as lines above it."""

    def __init__(self, total_steps: int, *, start_step: int = 0):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(TextColumn("step"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
                           TimeRemainingColumn(), TextColumn("{task.fields[summary]}"), transient=False)
        self._task = self._p.add_task("train", total=total_steps, completed=start_step, summary="")
        self._p.start()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        parts = _summary(metrics)
        self._p.update(self._task, completed=step, summary=" | ".join(parts))
        if any(k.startswith("val/") for k in metrics):
            self._p.console.print(f"step {step}: " + " | ".join(parts))

    def close(self) -> None:
        self._p.stop()


class TensorBoardSink:
    """Scalars under runs/<name>/tensorboard; a resumed run purges events past the resumed step."""

    def __init__(self, logdir: Path, *, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(str(logdir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in _clean(metrics).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._w.add_scalar(k, v, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class WandbSink:
    """wandb run; `run_id` resumes the same run (`resume="allow"`) so the curve continues.

    wandb cannot rewrite history: steps the server already holds (logged before a crash, after
    the last checkpoint) keep their first values there and are skipped, once, with a warning.
    Works offline (`WANDB_MODE=offline`): each attempt writes wandb/offline-run-*-<id>/, one run id.
    """

    def __init__(self, cfg: LoggingConfig, *, name: str, run_dir: Path, run_id: str | None,
                 config: dict[str, Any], resume_step: int | None = None):
        import wandb

        self.run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=name,
                              group=cfg.wandb_group, tags=list(cfg.wandb_tags), dir=str(run_dir),
                              id=run_id, resume="allow", config=config)
        self.run_id = self.run.id
        held = int(self.run.step or 0) - 1          # the last step this run already holds online
        self._skip_through = held if resume_step is not None and held > resume_step else -1
        if self._skip_through >= 0:
            log.warning("wandb run %s already holds steps %d..%d (logged before the restart); wandb "
                        "keeps those first values, metrics.jsonl and TensorBoard hold the resumed ones",
                        self.run_id, resume_step + 1, held)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if step <= self._skip_through:
            return
        self.run.log({k: v for k, v in _clean(metrics).items() if v is not None}, step=step)

    def log_table(self, step: int, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        if step > self._skip_through:
            self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


def _use_bar(style: str) -> bool:
    return style == "bar" or (style == "auto" and sys.stdout.isatty())


class MetricLogger:
    """Fans `write(step, metrics)` out to the sinks `cfg` enables. `resume_step`: the step a
    resumed run restored (None: fresh); every sink continues after it, with no duplicate steps."""

    def __init__(self, cfg: LoggingConfig, *, run_dir: Path, run_name: str, total_steps: int,
                 wandb_run_id: str | None = None, config: dict[str, Any] | None = None,
                 resume_step: int | None = None):
        self.run_dir = run_dir
        self.sinks: list[Any] = []
        self.wandb: WandbSink | None = None
        if cfg.console:
            console = ProgressSink if _use_bar(cfg.console_style) else ConsoleSink
            self.sinks.append(console(total_steps, start_step=resume_step or 0))
        if cfg.jsonl:
            self.sinks.append(JsonlSink(run_dir / "metrics.jsonl", resume_step=resume_step))
        if cfg.tensorboard:
            self.sinks.append(TensorBoardSink(run_dir / "tensorboard", resume_step=resume_step))
        if cfg.wandb:
            self.wandb = WandbSink(cfg, name=run_name, run_dir=run_dir, run_id=wandb_run_id,
                                   config=config or {}, resume_step=resume_step)
            self.sinks.append(self.wandb)

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb.run_id if self.wandb else None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(step, metrics)

    def write_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """A sample table: JSONL under samples/, and a wandb Table when wandb is on."""
        path = self.run_dir / "samples" / f"step_{step:06d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if self.wandb and rows:
            cols = list(rows[0])
            self.wandb.log_table(step, "samples", cols, [[r[c] for c in cols] for r in rows])

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
