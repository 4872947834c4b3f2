"""Metric sinks (console, metrics.jsonl, TensorBoard, wandb) and phase timers.

Only the controller writes metrics: `MetricLogger.write(step, metrics)` fans one
flat dict of namespaced keys (`train/`, `loss/`, `reward/`, `verifier/`, `timing/`,
`throughput/`, `val/`) out to every enabled sink.
"""

from __future__ import annotations

import json
import logging
import math
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


class JsonlSink:
    """One JSON object per line, `{"step": N, ...}`; appends (a resumed run continues the file)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("a", buffering=1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._f.write(json.dumps({"step": step, **_clean(metrics)}) + "\n")

    def close(self) -> None:
        self._f.close()


class ConsoleSink:
    """A line per step with the key metrics, step count and ETA."""

    def __init__(self, total_steps: int):
        self.total = total_steps
        self._t0 = time.perf_counter()
        self._first: int | None = None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._first is None:
            self._first = step
        done = step - self._first + 1
        eta = (time.perf_counter() - self._t0) / done * (self.total - step)
        parts = [f"step {step:>4}/{self.total}"]
        for key, short, fmt in CONSOLE_KEYS:
            if key in metrics and metrics[key] is not None:
                parts.append(f"{short} {fmt.format(float(metrics[key]))}")
        val = [f"{k} {float(v):.3f}" for k, v in metrics.items() if k.startswith("val/") and "accuracy" in k]
        parts += val
        parts.append(f"eta {eta:4.0f}s")
        print(" | ".join(parts), file=sys.stdout, flush=True)

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(str(logdir))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in _clean(metrics).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._w.add_scalar(k, v, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class WandbSink:
    """wandb run; `run_id` resumes the same run (`resume="allow"`) so the curve continues."""

    def __init__(self, cfg: LoggingConfig, *, name: str, run_dir: Path, run_id: str | None,
                 config: dict[str, Any]):
        import wandb

        self.run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=name,
                              group=cfg.wandb_group, tags=list(cfg.wandb_tags), dir=str(run_dir),
                              id=run_id, resume="allow", config=config)
        self.run_id = self.run.id

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log({k: v for k, v in _clean(metrics).items() if v is not None}, step=step)

    def log_table(self, step: int, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricLogger:
    def __init__(self, cfg: LoggingConfig, *, run_dir: Path, run_name: str, total_steps: int,
                 wandb_run_id: str | None = None, config: dict[str, Any] | None = None):
        self.run_dir = run_dir
        self.sinks: list[Any] = []
        self.wandb: WandbSink | None = None
        if cfg.console:
            self.sinks.append(ConsoleSink(total_steps))
        if cfg.jsonl:
            self.sinks.append(JsonlSink(run_dir / "metrics.jsonl"))
        if cfg.tensorboard:
            self.sinks.append(TensorBoardSink(run_dir / "tensorboard"))
        if cfg.wandb:
            self.wandb = WandbSink(cfg, name=run_name, run_dir=run_dir, run_id=wandb_run_id,
                                   config=config or {})
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
