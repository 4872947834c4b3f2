"""Checkpoints: full training state written atomically, and the final HF export.

A checkpoint is a folder `checkpoints/step_N/`, written as `tmp_step_N/` and renamed
only when complete, holding one state dict keyed `learner` (model, optim, sched,
rng), `data` (loader position), `run` (controller state).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from nemo_rlvr.config import CheckpointConfig

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, cfg: CheckpointConfig, *, run_dir: Path, learner: Any, loader: Any, state: Any,
                 tokenizer_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        self.learner, self.loader, self.state = learner, loader, state
        self.tokenizer_dir = tokenizer_dir
        self.root = run_dir / "checkpoints"

    def maybe_save(self, step: int, metrics: dict[str, Any], *, final: bool) -> None:
        if final or (self.cfg.every_steps and step % self.cfg.every_steps == 0):
            self.save(step)
        if final and self.cfg.export_hf:
            self.export_final()

    def save(self, step: int) -> Path:
        final = self.root / f"step_{step}"
        tmp = self.root / f"tmp_step_{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"learner": self.learner.state_dict(), "data": self.loader.state_dict(),
                    "run": self.state.state_dict()}, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        log.info("saved checkpoint %s", final)
        return final

    def export_final(self) -> Path:
        out, tmp = self.run_dir / "final_hf", self.run_dir / "tmp_final_hf"
        shutil.rmtree(tmp, ignore_errors=True)
        self.learner.save_hf(str(tmp), self.tokenizer_dir)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out
