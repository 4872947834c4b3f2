"""Prompt datasets: records from a procedural task, a file or a Hugging Face dataset, checked
against their environments, tokenized into `Prompt`s.

A record is `{"prompt": str | chat messages, "env": str (optional), ...env fields}` (DESIGN.md;
docs/data.md). Reading is data/readers.py, mapping and checks data/checks.py.
`PromptLoader` hands out batches in a seeded shuffle per epoch and is `Stateful`:
its position (epoch, index, seed) is checkpointed, so a resumed run sees the same
prompts in the same order as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import torch

from nemo_rlvr.config import ConfigError, DataConfig, EnvConfig
from nemo_rlvr.data.checks import RESERVED, RecordChecker, map_row
from nemo_rlvr.data.packaged import is_packaged, packaged_rows
from nemo_rlvr.data.readers import BadRow, RecordProblem, read_rows
from nemo_rlvr.types import Prompt

log = logging.getLogger(__name__)

__all__ = ["RESERVED", "PromptLoader", "load_records", "prompt_text", "to_prompts"]
SHOW_PROBLEMS = 20
"""Bad records listed in the error; the rest are counted."""


def load_records(source: str, cfg: DataConfig, *, split: str, n: int, seed: int,
                 env: EnvConfig | None = None) -> list[dict[str, Any]]:
    """Records for `split` ("train" or "val") from the built-in task named by `source`, or from a
    file, folder or hub dataset (data/readers.py), mapped by the config (data.prompt_key,
    answer_key, field_map). With `env`, every record is checked against the environment it
    names (env.name by default): one ConfigError lists every bad record with its line or
    number, the field and what was expected, unless data.skip_bad_records drops them (counted)."""
    if source == "arithmetic":
        from nemo_rlvr.data.arithmetic import arithmetic_records

        return arithmetic_records(n, num_digits=cfg.num_digits, operations=cfg.operations,
                                  seed=seed, split=split)
    if source == "kv_store":
        from nemo_rlvr.data.kv_store import kv_store_records

        return kv_store_records(n, seed=seed, split=split)
    key = "data.source" if source == cfg.source else "data.val_source"
    if is_packaged(source):
        rows = packaged_rows(source, cfg, split=split, n=n, seed=seed, key=key)
    else:
        rows = read_rows(source, split_name=cfg.split if split == "train" else cfg.val_split, key=key)
    checker = RecordChecker(env, chat_template=cfg.chat_template)
    records, problems = [], []
    for where, row in rows:
        try:
            if isinstance(row, BadRow):
                raise RecordProblem(row.why)
            rec = map_row(row, cfg)
            why = checker.problem(rec)
            if why:
                raise RecordProblem(why)
        except RecordProblem as e:
            problems.append(f"{where}: {e}")
            continue
        records.append(rec)
    if problems:
        _report(problems, len(rows), key=key, source=source, skip=cfg.skip_bad_records)
    if not records:
        raise ConfigError(f"{key}={source!r} holds no usable records; give at least one record "
                          f'{{"prompt": ..., "env": ..., <env fields>}}.')
    return records


def _report(problems: list[str], total: int, *, key: str, source: str, skip: bool) -> None:
    shown = "\n  ".join(problems[:SHOW_PROBLEMS])
    more = f"\n  ... and {len(problems) - SHOW_PROBLEMS} more" if len(problems) > SHOW_PROBLEMS else ""
    if skip:
        log.warning("%s=%s: skipped %d of %d records (data.skip_bad_records=true):\n  %s%s", key, source,
                    len(problems), total, shown, more)
        return
    raise ConfigError(f"{key}={source!r}: {len(problems)} of {total} records cannot be used:\n  {shown}{more}\n"
                      f"Fix them (or map your field names with data.prompt_key / data.answer_key / "
                      f"data.field_map), or set data.skip_bad_records=true to train on the rest.")


def _tool_schemas(tools: Any) -> list[dict[str, Any]] | None:
    """A record's `tools` in the OpenAI form chat templates take, or None."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            return None
    if not isinstance(tools, list) or not tools:
        return None
    return [t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t} for t in tools]


def prompt_text(rec: dict[str, Any], tokenizer, *, chat_template: bool, system_prompt: str | None = None) -> str:
    """The text the model sees. Without a chat template: data.system_prompt, a blank line, the
    prompt string. With one: the prompt as a user turn (or the record's own messages), the
    system prompt first unless the messages have one, and the record's `tools` (if any)
    rendered by the template, or described in the system message (TOOLS_SYSTEM) when the
    template ignores them."""
    prompt = rec["prompt"]
    if not chat_template:
        return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
    if not tokenizer.chat_template:
        raise ConfigError("data.chat_template=true but the tokenizer has no chat template; "
                          "set data.chat_template=false or use a model folder with one.")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    tools = _tool_schemas(rec.get("tools"))
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    if tools and text == tokenizer.apply_chat_template(messages, tools=None, tokenize=False,
                                                       add_generation_prompt=True):
        # the template ignores `tools` (SmolLM2's, many base models'): without this the model would
        # never see the functions it is asked to call
        text = tokenizer.apply_chat_template(with_tools_message(messages, tools), tools=None, tokenize=False,
                                             add_generation_prompt=True)
    return text


TOOLS_SYSTEM = ("You can call the functions described in <tools></tools>. To call one, answer with "
                "<tool_call>{{\"name\": <function name>, \"arguments\": <arguments object>}}</tool_call>, "
                "one block per call.\n<tools>\n{tools}\n</tools>")
"""Our description of the tools, in the Hermes/Qwen form the tool_call env parses, for templates
that do not render `tools` themselves."""


def with_tools_message(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with the tools described in the system message (appended to the record's own
    system message, or a new one first)."""
    text = TOOLS_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def to_prompts(records: Sequence[dict[str, Any]], tokenizer, *, default_env: str,
               chat_template: bool, system_prompt: str | None = None) -> list[Prompt]:
    """Tokenize records (see `prompt_text`)."""
    out = []
    for uid, rec in enumerate(records):
        text = prompt_text(rec, tokenizer, chat_template=chat_template, system_prompt=system_prompt)
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
