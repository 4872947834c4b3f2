"""Prompt datasets: records from a procedural task or a file, tokenized into `Prompt`s.

A record is `{"prompt": str, "env": str (optional), ...env fields}` (DESIGN.md).
`PromptLoader` hands out batches in a seeded shuffle per epoch and is `Stateful`:
its position (epoch, index, seed) is checkpointed, so a resumed run sees the same
prompts in the same order as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nemo_rlvr.config import ConfigError, DataConfig
from nemo_rlvr.types import Prompt

RESERVED = ("id", "prompt", "env", "response")


def load_records(source: str, cfg: DataConfig, *, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Records for `split` from the built-in task named by `source`, or from a file."""
    if source == "arithmetic":
        from nemo_rlvr.data.arithmetic import arithmetic_records

        return arithmetic_records(n, num_digits=cfg.num_digits, operations=cfg.operations,
                                  seed=seed, split=split)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"data.source={source!r} is neither a built-in task ('arithmetic') nor an "
                          f"existing file. Give a JSONL or parquet path of records "
                          f'{{"prompt": ..., "env": ..., <env fields>}}.')
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        records = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one "
                                  f"JSON object with a 'prompt' field.") from None
            records.append(rec)
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise ConfigError(f"{path} record {i}: needs a string field 'prompt' (got "
                              f"{type(rec).__name__ if not isinstance(rec, dict) else sorted(rec)}).")
    return records


def to_prompts(records: Sequence[dict[str, Any]], tokenizer, *, default_env: str,
               chat_template: bool) -> list[Prompt]:
    """Tokenize records; with `chat_template`, the prompt is the user turn of a chat."""
    out = []
    for uid, rec in enumerate(records):
        text = rec["prompt"]
        if chat_template:
            if not tokenizer.chat_template:
                raise ConfigError("data.chat_template=true but the tokenizer has no chat template; "
                                  "set data.chat_template=false or use a model folder with one.")
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        fields = {k: v for k, v in rec.items() if k not in RESERVED}
        out.append(Prompt(text=text, token_ids=list(ids), env=rec.get("env") or default_env,
                          fields=fields, uid=uid))
    return out


class PromptLoader:
    """Endless batches over `prompts`, reshuffled each epoch from (seed, epoch)."""

    def __init__(self, prompts: Sequence[Prompt], *, seed: int):
        if not prompts:
            raise ConfigError("the training dataset is empty; check data.source.")
        self.prompts = list(prompts)
        self.seed, self.epoch, self.index = seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def next_batch(self, size: int) -> list[Prompt]:
        out = []
        while len(out) < size:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.prompts[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.index = state["seed"], state["epoch"], state["index"]
        self._order = self._shuffle()
