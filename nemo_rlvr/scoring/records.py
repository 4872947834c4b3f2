"""Verify records: JSONL lines in, `Sample`s to score, scored records out.

A record is `{"id", "env", "prompt", "response", ...env fields}` (DESIGN.md). The output
record is the input plus `reward`, `reward_components` and `error`. A line that is not a
usable record still gets an output line (reward 0, `error` says why), so the output
always lines up with the input (VERIFIER_CONTRACT.md). `nemo-rlvr verify`, the HTTP
server and the remote scorer all go through these functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nemo_rlvr.types import Sample, Score

RESERVED_KEYS = ("id", "env", "prompt", "response")
"""Record keys that are not env fields."""
OUTPUT_KEYS = ("reward", "reward_components", "error")
"""Keys the verifier writes; dropped from the env fields if an input already has them."""

RECORD_HINT = 'each record is a JSON object {"id", "env", "prompt", "response", ...env fields}'


class RecordError(ValueError):
    """A record that cannot be scored; the message names the field and the fix."""


def check_record(obj: Any) -> dict[str, Any]:
    """Return `obj` if it is a scorable record, else raise `RecordError` naming the field."""
    if not isinstance(obj, dict):
        raise RecordError(f"the record is a JSON {_json_type(obj)}, not an object; {RECORD_HINT}.")
    if "response" not in obj:
        raise RecordError(f"the record has no 'response' field (the model's answer text); {RECORD_HINT}.")
    if not isinstance(obj["response"], str):
        raise RecordError(f"'response' must be a string, got a JSON {_json_type(obj['response'])}.")
    if obj.get("env") is not None and not isinstance(obj["env"], str):
        raise RecordError(f"'env' must be an environment name (string), got a JSON {_json_type(obj['env'])}.")
    return obj


def parse_line(line: str) -> dict[str, Any]:
    """Parse one JSONL line into a record; raises `RecordError` (bad JSON, not a record)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"the line is not valid JSON ({e}); {RECORD_HINT}.") from None
    return check_record(obj)


def record_to_sample(record: Mapping[str, Any], default_env: str) -> Sample:
    """The `Sample` a verifier sees for a record: text = response, fields = the rest."""
    skip = (*RESERVED_KEYS, *OUTPUT_KEYS)
    return Sample(
        prompt_ids=[], response_ids=[], logprobs=[], text=record["response"], finish_reason="stop",
        group_id=0, env=record.get("env") or default_env,
        fields={k: v for k, v in record.items() if k not in skip},
        prompt_text=str(record.get("prompt") or ""),
    )


def scored_record(record: Mapping[str, Any], score: Score) -> dict[str, Any]:
    """The output record: input plus reward, reward_components and error."""
    return {**record, "reward": score.reward, "reward_components": dict(score.components),
            "error": score.error}


def failed_record(raw: str, error: str) -> dict[str, Any]:
    """Output for a line that is not a usable record: keeps what it can of the input."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        obj = None
    base: dict[str, Any] = dict(obj) if isinstance(obj, dict) else {"raw": raw}
    return {**base, "reward": 0.0, "reward_components": {}, "error": error}


def _json_type(v: Any) -> str:
    match v:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(v).__name__
