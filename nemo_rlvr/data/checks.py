"""Rows to records, checked: the config's field mapping, then the prompt and the env fields of
every record against the environment it names (envs declare `fields`; envs/registry.py).

    mapped = map_row(row, cfg)                 # data.prompt_key / answer_key / field_map applied
    checker = RecordChecker(env_cfg)           # env.name is the default env of a record
    checker.problem(record) -> None | "field 'answer' is missing; expected ... (env 'math')"

Problems are strings naming the field and what was expected; data/dataset.py prefixes the
record's line (or number) and reports every bad record at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemo_rlvr.config import ConfigError, DataConfig, EnvConfig
from nemo_rlvr.data.nemo_gym import nemo_gym_record
from nemo_rlvr.data.readers import RecordProblem
from nemo_rlvr.envs.registry import ENVIRONMENTS, UnknownEnvError, env_class, field_error, json_type

RESERVED = ("id", "prompt", "env", "response")
"""Record keys that are not env fields."""
PROMPT_EXPECT = ('the prompt: a non-empty string, or a list of chat messages {"role": "system"|"user"|'
                 '"assistant", "content": str}')


def lookup(row: Mapping[str, Any], path: str) -> Any:
    """row["a"]["b"] for path "a.b"; KeyError when a part is missing."""
    node: Any = row
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def map_row(row: Any, cfg: DataConfig) -> dict[str, Any]:
    """The record of a raw row: NeMo Gym rows converted (data.format), then data.prompt_key,
    data.answer_key and data.field_map applied. Other keys are kept (and ignored by envs)."""
    if not isinstance(row, Mapping):
        raise RecordProblem(f"the record is a JSON {json_type(row)}; expected an object "
                            f'{{"prompt": ..., "env": ..., <env fields>}}')
    if cfg.format == "nemo_gym" or (cfg.format == "auto" and "responses_create_params" in row
                                    and cfg.prompt_key not in row):
        row = nemo_gym_record(row)
    rec = dict(row)
    keys = {"prompt": ("data.prompt_key", cfg.prompt_key)} | {
        dst: (f"data.field_map.{dst}", src) for dst, src in cfg.field_map.items()}
    if cfg.answer_key is not None:
        keys["answer"] = ("data.answer_key", cfg.answer_key)
    for dst, (key, src) in keys.items():
        if src == dst:
            continue
        try:
            rec[dst] = lookup(row, src)
        except KeyError:
            what = PROMPT_EXPECT if dst == "prompt" else f"the value of env field {dst!r}"
            raise RecordProblem(f"field {src!r} ({key}={src}) is missing; expected {what}") from None
    return rec


def prompt_problem(prompt: Any, *, chat_template: bool) -> str | None:
    """Why `prompt` is not a usable prompt, or None."""
    if isinstance(prompt, str):
        return None if prompt.strip() else f"field 'prompt' is empty; expected {PROMPT_EXPECT}"
    if prompt is None:
        return f"field 'prompt' is missing; expected {PROMPT_EXPECT}"
    if not isinstance(prompt, list) or not prompt:
        return f"field 'prompt' is a JSON {json_type(prompt)}; expected {PROMPT_EXPECT}"
    for i, m in enumerate(prompt):
        if not (isinstance(m, Mapping) and m.get("role") in ("system", "user", "assistant", "tool")
                and isinstance(m.get("content"), str)):
            return f"prompt[{i}] is not a chat message; expected {PROMPT_EXPECT}"
    if not chat_template:
        raise ConfigError("a record's 'prompt' is a list of chat messages, which needs the tokenizer's chat "
                          "template: set data.chat_template=true.")
    return None


class RecordChecker:
    """Checks records against the environments they name (env.name when they name none); with
    `env` None, only the prompt."""

    def __init__(self, env: EnvConfig | None, *, chat_template: bool):
        self.env, self.chat_template = env, chat_template
        self._classes: dict[str, type | None] = {}
        if env is not None:
            self._class(env.name)  # an unknown env.name is the config's error, not a record's

    def _class(self, name: str) -> type | None:
        if name not in self._classes:
            try:
                self._classes[name] = env_class(name, self.env.module)
            except UnknownEnvError:
                if self.env.url and name not in ENVIRONMENTS:
                    self._classes[name] = None  # the env server may know it: it checks the fields
                else:
                    raise
        return self._classes[name]

    def problem(self, rec: Mapping[str, Any]) -> str | None:
        """Why `rec` cannot be trained on (prompt, env name, env fields), or None."""
        why = prompt_problem(rec.get("prompt"), chat_template=self.chat_template)
        if why or self.env is None:
            return why
        name = rec.get("env")
        if name is not None and not isinstance(name, str):
            return f"field 'env' is a JSON {json_type(name)}; expected an environment name (string)"
        name = name or self.env.name
        try:
            cls = self._class(name)
        except UnknownEnvError:
            return (f"field 'env'={name!r} is not a registered environment; expected one of "
                    f"{', '.join(sorted(ENVIRONMENTS))} (or register yours with @register_env and env.module)")
        if cls is None:
            return None
        why = field_error(cls, {k: v for k, v in rec.items() if k not in RESERVED})
        return f"{why} (env {name!r})" if why else None
