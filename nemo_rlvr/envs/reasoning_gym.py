"""Built-in `reasoning_gym` environment: any reasoning-gym task, scored by the task's own scorer.

reasoning-gym (https://github.com/open-thought/reasoning-gym) generates procedural tasks
locally (no downloads) and ships a scorer per task. Fields of a record:

- `task`: the dataset name (`basic_arithmetic`, `leg_counting`, ...; `reasoning_gym.factory.DATASETS`).
- `entry`: the dataset item as JSON: `{"question", "answer", "metadata"}`. `answer` may be
  null for tasks with many valid answers (the scorer checks the response against `metadata`).
- `config` (optional): the dataset config the entry was generated with; some scorers read it.

The model's answer is the content of the last `<answer>...</answer>` in the response
(reasoning-gym's own convention), else the whole response, stripped. The reward is
`dataset.score_answer(answer, entry)` in [0, 1], component `score`. Note that the task
scorers are reasoning-gym's, not ours: the default one gives partial credit
len(gold)/len(answer) when the gold answer is a substring of a longer answer.

`reasoning_gym_records(task, n, seed, split)` turns a task into dataset records
`{"id", "prompt", "env": "reasoning_gym", "task", "entry"}`, so the same task serves as a
training and validation set; `split` picks disjoint seeds.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from nemo_rlvr.envs.base import FieldSpec, Score, register_env

ANSWER_INSTRUCTION = "\n\nGive only your final answer inside <answer></answer> tags."


def _grids_to_tuples(entry: dict[str, Any]) -> dict[str, Any]:
    """ARC scorers compare boards as tuples of tuples; JSON brings them back as lists."""
    meta = dict(entry.get("metadata") or {})
    for key in ("input", "output"):
        if isinstance(meta.get(key), list):
            meta[key] = tuple(tuple(row) if isinstance(row, list) else row for row in meta[key])
    return {**entry, "metadata": meta}


# Tasks whose scorer needs Python types that a JSON round trip loses.
_FROM_JSON: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "arc_agi": _grids_to_tuples,
    "rearc": _grids_to_tuples,
}


def task_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


@functools.lru_cache(maxsize=128)
def _scorer(task: str, config_json: str) -> Callable[[str | None, dict[str, Any]], float]:
    import reasoning_gym

    config = json.loads(config_json)
    if not config:
        return reasoning_gym.get_score_answer_fn(task)
    return reasoning_gym.create_dataset(task, **config).score_answer


def extract_answer(response: str) -> str:
    """The last <answer>...</answer> content, else the whole response; stripped."""
    from reasoning_gym.utils import extract_answer as rg_extract

    answer = rg_extract(response)
    return (answer if answer is not None else response).strip()


def _to_json(value: Any) -> Any:
    """A JSON-safe copy of a dataset entry (tuples and sets become lists)."""
    def default(o: Any) -> Any:
        if isinstance(o, (set, frozenset)):
            return sorted(o, key=repr)
        if isinstance(o, tuple):
            return list(o)
        return repr(o)

    return json.loads(json.dumps(value, default=default))


def reasoning_gym_records(
    task: str, n: int, seed: int = 0, split: str = "train", *,
    config: Mapping[str, Any] | None = None, answer_instruction: bool = True,
) -> list[dict[str, Any]]:
    """`n` dataset records of a reasoning-gym task, deterministic in (task, seed, split, config).

    Splits use different generator seeds (crc32 of "split:seed"), so train and validation
    items do not coincide. `config` holds task options (e.g. `{"max_terms": 3}`); it is
    stored in each record so that scoring uses the same dataset settings.
    """
    import reasoning_gym

    if task not in task_names():
        raise ValueError(f"reasoning_gym task {task!r} does not exist; choose one of "
                         f"{', '.join(task_names())}")
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one record")
    options = dict(config or {})
    ds_seed = zlib.crc32(f"{split}:{seed}".encode())
    ds = reasoning_gym.create_dataset(task, **{**options, "size": n, "seed": ds_seed})
    records = []
    for i in range(n):
        entry = _to_json(ds[i])
        rec = {
            "id": f"{task}/{split}/{seed}/{i}",
            "prompt": entry["question"] + (ANSWER_INSTRUCTION if answer_instruction else ""),
            "env": "reasoning_gym",
            "task": task,
            "entry": entry,
        }
        if options:
            rec["config"] = _to_json(options)
        records.append(rec)
    return records


def _field_error(fields: Mapping[str, Any]) -> str | None:
    task, entry = fields.get("task"), fields.get("entry")
    if not isinstance(task, str):
        return ("env field 'task' must be a reasoning-gym dataset name such as 'basic_arithmetic' "
                f"(got {task!r:.60})")
    if task not in task_names():
        return f"env field 'task'={task!r} is not a reasoning-gym dataset; see reasoning_gym.factory.DATASETS"
    if not isinstance(entry, dict) or "answer" not in entry or not isinstance(entry.get("metadata"), dict):
        return ("env field 'entry' must be the dataset item {\"question\", \"answer\", \"metadata\": {...}} "
                "as produced by reasoning_gym_records()")
    if not isinstance(fields.get("config", {}), dict):
        return "env field 'config' must be an object of dataset options (or absent)"
    return None


@register_env("reasoning_gym")
class ReasoningGymEnv:
    """Reward = the task's own `score_answer(extracted answer, entry)`."""

    name = "reasoning_gym"
    fields = {"task": FieldSpec((str,), "a reasoning-gym dataset name such as 'basic_arithmetic'"),
              "entry": FieldSpec((dict,), 'the dataset item {"question", "answer", "metadata": {...}}'),
              "config": FieldSpec((dict,), "an object of dataset options", required=False)}
    check_fields = staticmethod(_field_error)

    def __init__(self) -> None:
        import reasoning_gym  # noqa: F401  (seconds to import: pay it at construction, not per sample)

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        why = _field_error(fields)
        if why:
            return Score(0.0, {"score": 0.0}, why)
        if not isinstance(response, str):
            return Score(0.0, {"score": 0.0}, f"response must be a string, got {type(response).__name__}")
        task, entry = fields["task"], dict(fields["entry"])
        entry = _FROM_JSON.get(task, lambda e: e)(entry)
        score_answer = _scorer(task, json.dumps(fields.get("config") or {}, sort_keys=True))
        value = float(score_answer(extract_answer(response), entry))
        value = min(max(value, 0.0), 1.0)
        return Score(value, {"score": value})

